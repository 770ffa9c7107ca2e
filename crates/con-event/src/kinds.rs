//! The registry of event kinds: one [`KindSpec`] per payload type.

use serde::Serialize;

use crate::codec::{self, DecodeError, EncodeError};
use crate::payloads::{self, Kind};

/// syslog priority of a journal entry (`PRIORITY=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// 3: something failed.
    Err = 3,
    /// 4: a contract failed or an enforcement acted.
    Warning = 4,
    /// 5: significant normal event.
    Notice = 5,
    /// 6: routine event.
    Info = 6,
    /// 7: high-volume detail.
    Debug = 7,
}

impl Priority {
    /// The numeric syslog level.
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// Who may append an event kind. Part of every [`KindSpec`], so a new kind
/// cannot be added without deciding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// Only the daemon itself (its watcher, supervisor, gateway, mirror,
    /// checks and enforcement). Refused from every socket client, root and
    /// the trusted group included: these events are what the daemon saw or
    /// did, and a client's word for them would be a forgery.
    Daemon,
    /// An agent run, about itself, inside a session it opened. Refused from
    /// operators, who do not run sessions.
    AgentRun,
    /// An operator client (root or the trusted group) reporting what it did
    /// to the host, e.g. provisioning.
    Operator,
}

impl Authority {
    /// Canonical spelling (`daemon`, `agent_run`, `operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Daemon => "daemon",
            Authority::AgentRun => "agent_run",
            Authority::Operator => "operator",
        }
    }
}

/// Everything that defines one event kind. Adding a kind means adding one
/// payload struct with its `SPEC` and one line in the registry macro below.
#[derive(Debug, PartialEq, Eq)]
pub struct KindSpec {
    /// Stable numeric id. Never reused, never renumbered.
    pub id: u16,
    /// Dotted name (`inbox.arrived`).
    pub name: &'static str,
    /// Current payload version (older ones are upcast on read).
    pub version: u16,
    /// Who may append it.
    pub authority: Authority,
    /// journald `MESSAGE_ID`: 32 lowercase hex digits, fixed forever.
    pub message_id: &'static str,
    /// Default journald priority (a payload may raise it, e.g. a failed check).
    pub priority: Priority,
    /// Catalog `Subject:` line.
    pub subject: &'static str,
    /// Catalog body: what happened and what an operator should do.
    pub description: &'static str,
}

impl KindSpec {
    /// The `CON_EVENT=` value: the name with dots as underscores
    /// (`inbox_arrived`), so it is a plain token in journalctl matches.
    pub fn journal_name(&self) -> String {
        self.name.replace('.', "_")
    }
}

/// Looks a kind up by numeric id.
pub fn kind_by_id(id: u16) -> Option<&'static KindSpec> {
    KINDS.iter().copied().find(|k| k.id == id)
}

/// Looks a kind up by dotted (`tool.call`) or journal (`tool_call`) name.
pub fn kind_by_name(name: &str) -> Option<&'static KindSpec> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.name == name || k.journal_name() == name)
}

macro_rules! registry {
    ($($variant:ident),* $(,)?) => {
        /// A typed payload at its kind's current version.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Payload {
            $(
                #[doc = concat!("See [`payloads::", stringify!($variant), "`].")]
                $variant(payloads::$variant),
            )*
        }

        /// Every kind this build knows, in id order.
        pub static KINDS: &[&KindSpec] = &[$(&<payloads::$variant as Kind>::SPEC),*];

        impl Payload {
            /// The kind of this payload.
            pub fn spec(&self) -> &'static KindSpec {
                match self {
                    $(Payload::$variant(_) => &<payloads::$variant as Kind>::SPEC,)*
                }
            }

            /// The payload from its JSON view (the body at the kind's
            /// current version, as [`serde_json`] writes it).
            pub fn from_json(
                kind: &KindSpec,
                value: serde_json::Value,
            ) -> Result<Self, serde_json::Error> {
                $(
                    if kind.id == <payloads::$variant as Kind>::SPEC.id {
                        return serde_json::from_value(value).map(Payload::$variant);
                    }
                )*
                Err(serde::de::Error::custom(format!("unknown event kind {}", kind.name)))
            }

            /// bincode of the payload at the current version.
            pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
                match self {
                    $(Payload::$variant(p) => codec::encode(p),)*
                }
            }

            /// Decodes (and upcasts) a stored payload.
            pub fn decode(kind: u16, version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
                $(
                    if kind == <payloads::$variant as Kind>::SPEC.id {
                        return payloads::$variant::decode_version(version, bytes).map(Payload::$variant);
                    }
                )*
                Err(DecodeError::UnknownKind(kind))
            }

            /// Human one-line description (journald `MESSAGE`).
            pub fn message(&self) -> String {
                match self {
                    $(Payload::$variant(p) => p.message(),)*
                }
            }

            /// journald priority of this particular event.
            pub fn priority(&self) -> Priority {
                match self {
                    $(Payload::$variant(p) => p.priority(),)*
                }
            }

            /// Kind-specific journal fields (`CON_CONTRACT`, `CON_ACTION`, …).
            pub fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
                match self {
                    $(Payload::$variant(p) => p.journal_fields(out),)*
                }
            }

            /// Blobs the payload references.
            pub fn blob_refs(&self) -> Vec<crate::BlobRef> {
                match self {
                    $(Payload::$variant(p) => p.blob_refs(),)*
                }
            }

            /// The agent this event is about (which may differ from its actor:
            /// the daemon records arrivals in an agent's inbox).
            pub fn subject_agent(&self) -> Option<&str> {
                match self {
                    $(Payload::$variant(p) => p.subject_agent(),)*
                }
            }
        }

        $(
            impl From<payloads::$variant> for Payload {
                fn from(p: payloads::$variant) -> Self {
                    Payload::$variant(p)
                }
            }
        )*
    };
}

registry! {
    InboxArrived,
    TaskRouted,
    SessionStarted,
    SessionEnded,
    LlmRequest,
    LlmResponse,
    ToolCall,
    ToolResult,
    ContractResult,
    EnforcementAction,
    EnforcementDone,
    AgentState,
    JournalMirrorDegraded,
    JournalMirrorRecovered,
    ChainCheckpoint,
    RunStarted,
    RunExited,
    ProvisionApplied,
    ConfigReloaded,
    TaskFailed,
    LogDegraded,
    LogRecovered,
    ContractAdded,
}
