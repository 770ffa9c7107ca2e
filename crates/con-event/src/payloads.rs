//! One struct per (kind, current version), plus the frozen older versions
//! that are still decoded and upcast.
//!
//! Rules that keep stored bytes readable forever: never reorder, remove or
//! insert fields or enum variants in a struct that has been released; change
//! a payload by adding a new version (and an upcast from the old one).

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::codec::{self, DecodeError};
use crate::ids::{BlobRef, Digest};
use crate::kinds::{Authority, KindSpec, Priority};

/// Behaviour shared by every payload type.
pub trait Kind: Serialize + DeserializeOwned + Sized {
    /// The kind's registry entry.
    const SPEC: KindSpec;

    /// Decodes `bytes` written at `version`, upcasting older versions.
    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        if version == Self::SPEC.version {
            codec::decode(Self::SPEC.name, bytes)
        } else {
            Err(DecodeError::UnknownVersion {
                kind: Self::SPEC.name,
                version,
            })
        }
    }

    /// journald `MESSAGE`.
    fn message(&self) -> String;

    /// journald `PRIORITY` for this event.
    fn priority(&self) -> Priority {
        Self::SPEC.priority
    }

    /// Extra journal fields beyond the envelope's.
    fn journal_fields(&self, _out: &mut Vec<(&'static str, String)>) {}

    /// Agent the event is about, when not (only) its actor.
    fn subject_agent(&self) -> Option<&str> {
        None
    }

    /// Blobs the payload references (their contents travel as attachments).
    fn blob_refs(&self) -> Vec<BlobRef> {
        Vec::new()
    }
}

/// Provenance of a task as decided by the kernel (`lstat` owner and links), never by its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Owned by root or a member of group `trusted`; regular file, one link.
    Verified,
    /// Anything else.
    Unverified,
}

impl Trust {
    /// Canonical spelling, the same as in the JSON view and journal fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Verified => "verified",
            Trust::Unverified => "unverified",
        }
    }
}

/// `inbox.arrived`: a `.task` file appeared in an inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxArrived {
    /// Inbox owner: an agent name, or `outer` for the outer inbox.
    pub inbox: String,
    /// Absolute path of the task file when it arrived.
    pub path: String,
    /// Owner uid from `lstat`.
    pub owner_uid: u32,
    /// Owner gid from `lstat`.
    pub owner_gid: u32,
    /// Mode bits from `lstat`.
    pub mode: u32,
    /// Hard link count from `lstat`.
    pub nlink: u64,
    /// Device and inode from `lstat`: with the path and `ctime_unix_nanos`,
    /// they identify one arrival, so a restart does not record it twice.
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
    /// Status change time from `lstat`, nanoseconds since the Unix epoch.
    pub ctime_unix_nanos: i64,
    /// Whether the directory entry was a symlink.
    pub symlink: bool,
    /// Kernel-decided provenance.
    pub trust: Trust,
    /// Why that trust (e.g. "owner uid 0", "2 hard links").
    pub trust_reason: String,
    /// The content, stored as a blob (its digest is the file's SHA-256).
    pub content: BlobRef,
}

impl Kind for InboxArrived {
    const SPEC: KindSpec = KindSpec {
        id: 1,
        name: "inbox.arrived",
        version: 1,
        authority: Authority::Daemon,
        message_id: "ec6897a08a18430ca4aacfb45a32f0cb",
        priority: Priority::Notice,
        subject: "Task arrived in inbox @CON_INBOX@",
        description: "A .task file appeared in an inbox. Its owner, trust (decided from lstat, never from content), size, SHA-256 and content were recorded in the con event log, so the task can be examined even after the file is gone. Unverified tasks are framed as untrusted data for the agent.",
    };
    fn message(&self) -> String {
        format!(
            "task {} arrived in inbox {} ({}, uid {}, {} bytes)",
            self.path,
            self.inbox,
            self.trust.as_str(),
            self.owner_uid,
            self.content.len
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_INBOX", self.inbox.clone()));
        out.push(("CON_PATH", self.path.clone()));
        out.push(("CON_TRUST", self.trust.as_str().into()));
        out.push(("CON_OWNER_UID", self.owner_uid.to_string()));
        out.push(("CON_SHA256", self.content.digest.to_hex()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.inbox)
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        vec![self.content]
    }
}

/// `task.routed`: a task (or its response) was moved on.
///
/// A task leaves `from`'s inbox unless `to` is [`TaskRouted::OUTBOX`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRouted {
    /// Where it came from (an agent name, or `outer`).
    pub from: String,
    /// Where it went: an agent name (moved into that agent's inbox),
    /// `processed` (done), `failed` (set aside unrun), or `outbox` (the
    /// response was written; the task itself has not left the inbox yet).
    pub to: String,
    /// Destination path.
    pub path: String,
}

impl TaskRouted {
    /// `to` value for a response written to the outbox.
    pub const OUTBOX: &'static str = "outbox";
    /// `to` value for an answered task moved to the agent's `processed/`.
    pub const PROCESSED: &'static str = "processed";
    /// `to` value for a task set aside unrun in the agent's `failed/`.
    pub const FAILED: &'static str = "failed";

    /// Whether the task left `from`'s inbox.
    pub fn leaves_inbox(&self) -> bool {
        self.to != Self::OUTBOX
    }
}

impl Kind for TaskRouted {
    const SPEC: KindSpec = KindSpec {
        id: 2,
        name: "task.routed",
        version: 1,
        authority: Authority::AgentRun,
        message_id: "e9ef4deb8e554c02a48813de7632d38b",
        priority: Priority::Info,
        subject: "Task routed from @CON_FROM@ to @CON_TO@",
        description: "A task file (or the response to it) was moved: from the outer inbox to the concierge, to processed/ after a run, or a response to the outbox.",
    };
    fn message(&self) -> String {
        format!(
            "task routed from {} to {} ({})",
            self.from, self.to, self.path
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_FROM", self.from.clone()));
        out.push(("CON_TO", self.to.clone()));
        out.push(("CON_PATH", self.path.clone()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.from)
    }
}

/// `session.started`: an agent run began working on one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStarted {
    /// The agent.
    pub agent: String,
    /// Runner (`builtin`, `claude`, `exec:…`).
    pub runner: String,
    /// Provider, for the built-in runner.
    pub provider: Option<String>,
    /// Model, where known.
    pub model: Option<String>,
    /// Trust of the task being worked on.
    pub trust: Trust,
    /// The assembled system prompt (AGENTS.md + skills + framing).
    pub prompt: BlobRef,
}

impl Kind for SessionStarted {
    const SPEC: KindSpec = KindSpec {
        id: 3,
        name: "session.started",
        version: 1,
        authority: Authority::AgentRun,
        message_id: "26f1dd5d8a7f4d0c80c62ed1fd1a34ed",
        priority: Priority::Notice,
        subject: "Agent @CON_AGENT@ started session @CON_SESSION@",
        description: "An agent run picked a task from its inbox and began a session. The assembled prompt is stored as a blob; `con replay @CON_SESSION@` shows the whole session.",
    };
    fn message(&self) -> String {
        format!(
            "agent {} started a session ({}, {} task, model {})",
            self.agent,
            self.runner,
            self.trust.as_str(),
            self.model.as_deref().unwrap_or("-")
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_RUNNER", self.runner.clone()));
        if let Some(m) = &self.model {
            out.push(("CON_MODEL", m.clone()));
        }
        out.push(("CON_TRUST", self.trust.as_str().into()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        vec![self.prompt]
    }
}

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The model produced a final answer.
    Ok,
    /// The tool-iteration cap was reached.
    MaxIterations,
    /// The session wall clock ran out.
    Timeout,
    /// The daily budget was exhausted before a model call.
    Budget,
    /// The provider failed after retries.
    ProviderError,
    /// The runner itself failed (exec runner exit, IO error…).
    RunnerError,
    /// The run was told to stop (SIGTERM, SIGINT or SIGHUP: a daemon
    /// shutting down, `systemctl stop`) and recorded its own end.
    Killed,
    /// The task could not be run at all (unreadable, too large, or its
    /// response could not be written) and was moved to `failed/` before any
    /// model call.
    SetAside,
    /// Enforcement (`kill_session`, or a halt or quarantine) killed every
    /// process of the agent's user while the session ran. The run cannot
    /// say so itself: the daemon, which killed it, records this end, caused
    /// by the `enforcement.action` (new in `session.ended` version 2).
    KilledByEnforcement,
    /// The run ended without recording an end (the daemon was killed under
    /// it, the OOM killer took it…); recorded by the daemon once no process
    /// of the agent was left (new in `session.ended` version 2).
    Abandoned,
}

/// `Outcome` as `session.ended` version 1 stored it (without
/// [`Outcome::KilledByEnforcement`]); frozen, upcast one to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeV1 {
    /// [`Outcome::Ok`].
    Ok,
    /// [`Outcome::MaxIterations`].
    MaxIterations,
    /// [`Outcome::Timeout`].
    Timeout,
    /// [`Outcome::Budget`].
    Budget,
    /// [`Outcome::ProviderError`].
    ProviderError,
    /// [`Outcome::RunnerError`].
    RunnerError,
    /// [`Outcome::Killed`].
    Killed,
    /// [`Outcome::SetAside`].
    SetAside,
}

impl From<OutcomeV1> for Outcome {
    fn from(v1: OutcomeV1) -> Self {
        match v1 {
            OutcomeV1::Ok => Outcome::Ok,
            OutcomeV1::MaxIterations => Outcome::MaxIterations,
            OutcomeV1::Timeout => Outcome::Timeout,
            OutcomeV1::Budget => Outcome::Budget,
            OutcomeV1::ProviderError => Outcome::ProviderError,
            OutcomeV1::RunnerError => Outcome::RunnerError,
            OutcomeV1::Killed => Outcome::Killed,
            OutcomeV1::SetAside => Outcome::SetAside,
        }
    }
}

impl Outcome {
    /// Canonical spelling, the same as in the JSON view and journal fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::MaxIterations => "max_iterations",
            Outcome::Timeout => "timeout",
            Outcome::Budget => "budget",
            Outcome::ProviderError => "provider_error",
            Outcome::RunnerError => "runner_error",
            Outcome::Killed => "killed",
            Outcome::SetAside => "set_aside",
            Outcome::Abandoned => "abandoned",
            Outcome::KilledByEnforcement => "killed_by_enforcement",
        }
    }
}

/// Characters of a detail a one-line message carries at most.
const MESSAGE_DETAIL_CHARS: usize = 300;

/// `s` cut to `max` characters, with `…` when cut.
fn cap_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// `session.ended` version 2 (current): recorded by the run when its
/// session ends, or by the daemon when enforcement killed it
/// ([`Outcome::KilledByEnforcement`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    /// The agent.
    pub agent: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Tool-loop iterations used.
    pub iterations: u32,
    /// Wall-clock duration.
    pub duration_ms: u64,
    /// Final response, if one was produced.
    pub response: Option<BlobRef>,
    /// Detail for non-ok outcomes.
    pub detail: String,
}

/// `session.ended` version 1: the same fields, its outcome without
/// [`Outcome::KilledByEnforcement`]. Kept so records of this version keep
/// decoding; upcast to [`SessionEnded`] on read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEndedV1 {
    /// The agent.
    pub agent: String,
    /// How it ended.
    pub outcome: OutcomeV1,
    /// Tool-loop iterations used.
    pub iterations: u32,
    /// Wall-clock duration.
    pub duration_ms: u64,
    /// Final response, if one was produced.
    pub response: Option<BlobRef>,
    /// Detail for non-ok outcomes.
    pub detail: String,
}

impl From<SessionEndedV1> for SessionEnded {
    fn from(v1: SessionEndedV1) -> Self {
        SessionEnded {
            agent: v1.agent,
            outcome: v1.outcome.into(),
            iterations: v1.iterations,
            duration_ms: v1.duration_ms,
            response: v1.response,
            detail: v1.detail,
        }
    }
}

impl Kind for SessionEnded {
    const SPEC: KindSpec = KindSpec {
        id: 4,
        name: "session.ended",
        version: 2,
        authority: Authority::AgentRun,
        message_id: "3c872adf44a7491fab9264eeabbcdbd3",
        priority: Priority::Notice,
        subject: "Agent @CON_AGENT@ ended session @CON_SESSION@: @CON_OUTCOME@",
        description: "An agent session ended. CON_OUTCOME is ok, max_iterations, timeout, budget, provider_error, runner_error, killed (the run was told to stop), set_aside, killed_by_enforcement (recorded by the daemon, whose enforcement killed the run; caused by the enforcement.action) or abandoned (recorded by the daemon: the run ended without recording an end and no process of the agent is left).",
    };
    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        match version {
            1 => codec::decode::<SessionEndedV1>("session.ended v1", bytes).map(Into::into),
            2 => codec::decode("session.ended", bytes),
            _ => Err(DecodeError::UnknownVersion {
                kind: Self::SPEC.name,
                version,
            }),
        }
    }
    fn message(&self) -> String {
        let mut m = format!(
            "agent {} ended its session: {} after {} iterations, {} ms",
            self.agent,
            self.outcome.as_str(),
            self.iterations,
            self.duration_ms
        );
        // Why it ended early belongs on the line (`con logs`, the journal's
        // MESSAGE); the whole detail stays in the payload.
        if !self.detail.is_empty() {
            m.push_str(": ");
            m.push_str(&cap_chars(&self.detail, MESSAGE_DETAIL_CHARS));
        }
        m
    }
    fn priority(&self) -> Priority {
        match self.outcome {
            Outcome::Ok => Priority::Notice,
            _ => Priority::Warning,
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_OUTCOME", self.outcome.as_str().into()));
        out.push(("CON_DURATION_MS", self.duration_ms.to_string()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        self.response.into_iter().collect()
    }
}

/// `llm.request` version 2 (current): the gateway sent a request to a model
/// provider.
///
/// The request body is recorded so that each conversation message is stored
/// once: a session of n tool-loop iterations sends n requests that each
/// repeat the conversation so far, and recording every body whole would
/// grow the log with n². The body as sent is, byte for byte,
/// [`LlmRequest::reassemble`] of the frame and the messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// Agent on whose behalf the gateway called (the actor is the gateway).
    pub agent: String,
    /// Provider name.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Tool-loop iteration (1-based).
    pub iteration: u32,
    /// The request body as sent (minus credentials) with the bytes of its
    /// messages array cut out at `messages_at`; the whole body when
    /// `messages` is empty.
    pub frame: BlobRef,
    /// Byte offset in the frame where the messages array goes.
    pub messages_at: u64,
    /// Seq of the earlier `llm.request` of the same session whose
    /// conversation this one repeats first, if any: each request then
    /// references only what is new, and a session's record grows linearly.
    pub continues: Option<u64>,
    /// How many messages of that earlier conversation come first here.
    pub repeated: u32,
    /// The messages after those, oldest first, as the JSON bytes they had in
    /// the body.
    pub messages: Vec<BlobRef>,
}

impl LlmRequest {
    /// The whole conversation of this request, oldest first: the first
    /// `repeated` messages of the request at `continues` (looked up with
    /// `earlier`, which gives an earlier request's whole conversation),
    /// then `messages`. `None` if the earlier request is unknown or shorter.
    pub fn conversation(
        &self,
        earlier: impl FnOnce(u64) -> Option<Vec<BlobRef>>,
    ) -> Option<Vec<BlobRef>> {
        let mut all = match self.continues {
            None if self.repeated == 0 => Vec::new(),
            None => return None,
            Some(seq) => {
                let mut before = earlier(seq)?;
                before.truncate(usize::try_from(self.repeated).ok()?);
                if before.len() != self.repeated as usize {
                    return None;
                }
                before
            }
        };
        all.extend_from_slice(&self.messages);
        Some(all)
    }

    /// The request body as sent: `frame[..messages_at] ‖ [m1,m2,…] ‖
    /// frame[messages_at..]`, or the frame itself when there are no
    /// messages. `None` if `messages_at` is past the frame's end.
    pub fn reassemble(frame: &[u8], messages_at: u64, messages: &[&[u8]]) -> Option<Vec<u8>> {
        if messages.is_empty() {
            return Some(frame.to_vec());
        }
        let at = usize::try_from(messages_at)
            .ok()
            .filter(|at| *at <= frame.len())?;
        let body: usize = messages.iter().map(|m| m.len() + 1).sum();
        let mut out = Vec::with_capacity(frame.len() + body + 1);
        out.extend_from_slice(&frame[..at]);
        out.push(b'[');
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(m);
        }
        out.push(b']');
        out.extend_from_slice(&frame[at..]);
        Some(out)
    }
}

/// `llm.request` version 1: the whole request body as one blob. Kept so
/// records of this version keep decoding; upcast to a version-2 request with
/// that body as its frame and no separate messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmRequestV1 {
    /// Agent on whose behalf the gateway called.
    pub agent: String,
    /// Provider name.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Tool-loop iteration (1-based).
    pub iteration: u32,
    /// The request body as sent (minus credentials).
    pub request: BlobRef,
}

impl From<LlmRequestV1> for LlmRequest {
    fn from(v1: LlmRequestV1) -> Self {
        LlmRequest {
            agent: v1.agent,
            provider: v1.provider,
            model: v1.model,
            iteration: v1.iteration,
            frame: v1.request,
            messages_at: 0,
            continues: None,
            repeated: 0,
            messages: Vec::new(),
        }
    }
}

impl Kind for LlmRequest {
    const SPEC: KindSpec = KindSpec {
        id: 5,
        name: "llm.request",
        version: 2,
        authority: Authority::Daemon,
        message_id: "de72435a1f2340d59de95c969567c744",
        priority: Priority::Info,
        subject: "Model request to @CON_MODEL@",
        description: "The daemon sent a model request on behalf of an agent session. The request body (without credentials) is stored as blobs: a frame and each conversation message once; a request references the earlier request of its session (CON_CONTINUES) for the messages it repeats. `con replay` reassembles the exact body.",
    };
    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        match version {
            1 => codec::decode::<LlmRequestV1>("llm.request v1", bytes).map(Into::into),
            2 => codec::decode("llm.request", bytes),
            _ => Err(DecodeError::UnknownVersion {
                kind: Self::SPEC.name,
                version,
            }),
        }
    }
    fn message(&self) -> String {
        format!(
            "model request #{} to {}/{} ({} messages, {} new)",
            self.iteration,
            self.provider,
            self.model,
            self.repeated as usize + self.messages.len(),
            self.messages.len()
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_PROVIDER", self.provider.clone()));
        out.push(("CON_MODEL", self.model.clone()));
        if let Some(seq) = self.continues {
            out.push(("CON_CONTINUES", seq.to_string()));
        }
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        let mut refs = vec![self.frame];
        for m in &self.messages {
            if !refs.contains(m) {
                refs.push(*m);
            }
        }
        refs
    }
}

/// `llm.response`: a provider answered (or failed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// Agent on whose behalf the gateway called; charged for the cost.
    pub agent: String,
    /// Provider name.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// HTTP status, if a response was received.
    pub status: Option<u16>,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    /// Time from first send to final answer.
    pub latency_ms: u64,
    /// Input tokens reported by the provider.
    pub input_tokens: u64,
    /// Output tokens reported by the provider.
    pub output_tokens: u64,
    /// Cost in millionths of a US dollar, from the configured price table.
    pub cost_micro_usd: u64,
    /// Response body, if any.
    pub response: Option<BlobRef>,
    /// Error, if the call failed.
    pub error: Option<String>,
}

impl Kind for LlmResponse {
    const SPEC: KindSpec = KindSpec {
        id: 6,
        name: "llm.response",
        version: 1,
        authority: Authority::Daemon,
        message_id: "a27be821b2b946f6be710987ac2aabfd",
        priority: Priority::Info,
        subject: "Model response from @CON_MODEL@",
        description: "A model provider answered a request (or failed after retries). Token usage and cost are recorded for budget enforcement.",
    };
    fn message(&self) -> String {
        match &self.error {
            None => format!(
                "model response from {}/{}: {} in / {} out tokens, {} ms",
                self.provider, self.model, self.input_tokens, self.output_tokens, self.latency_ms
            ),
            Some(e) => format!(
                "model call to {}/{} failed after {} attempts: {}",
                self.provider, self.model, self.attempts, e
            ),
        }
    }
    fn priority(&self) -> Priority {
        if self.error.is_some() {
            Priority::Err
        } else {
            Priority::Info
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_PROVIDER", self.provider.clone()));
        out.push(("CON_MODEL", self.model.clone()));
        out.push(("CON_INPUT_TOKENS", self.input_tokens.to_string()));
        out.push(("CON_OUTPUT_TOKENS", self.output_tokens.to_string()));
        out.push(("CON_COST_MICRO_USD", self.cost_micro_usd.to_string()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        self.response.into_iter().collect()
    }
}

/// `tool.call`: the model asked for a tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider's call id (pairs the result).
    pub call_id: String,
    /// Tool name (`exec`, `read_file`, …).
    pub tool: String,
    /// JSON arguments as the model sent them.
    pub arguments: BlobRef,
}

impl Kind for ToolCall {
    const SPEC: KindSpec = KindSpec {
        id: 7,
        name: "tool.call",
        version: 1,
        authority: Authority::AgentRun,
        message_id: "011493a580324908a21b031f3d85e6cf",
        priority: Priority::Info,
        subject: "Tool call @CON_TOOL@",
        description: "An agent's model requested a tool call. The arguments are stored as a blob.",
    };
    fn message(&self) -> String {
        format!("tool call {} ({})", self.tool, self.call_id)
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_TOOL", self.tool.clone()));
        out.push(("CON_CALL_ID", self.call_id.clone()));
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        vec![self.arguments]
    }
}

/// `tool.result`: a tool finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// Pairs the call.
    pub call_id: String,
    /// Tool name.
    pub tool: String,
    /// Exit code for `exec`.
    pub exit_code: Option<i32>,
    /// Duration.
    pub duration_ms: u64,
    /// Output as returned to the model.
    pub output: BlobRef,
    /// Whether the output was capped.
    pub truncated: bool,
    /// Tool error (permission denied, timeout…), returned to the model.
    pub error: Option<String>,
}

impl Kind for ToolResult {
    const SPEC: KindSpec = KindSpec {
        id: 8,
        name: "tool.result",
        version: 1,
        authority: Authority::AgentRun,
        message_id: "3853c6a376174a858ad79d36d3f4715e",
        priority: Priority::Info,
        subject: "Tool result @CON_TOOL@",
        description: "A tool call finished. Output (as returned to the model) is stored as a blob; CON_EXIT_CODE is set for exec.",
    };
    fn message(&self) -> String {
        match (&self.error, self.exit_code) {
            (Some(e), _) => format!("tool {} failed: {}", self.tool, e),
            (None, Some(code)) => format!(
                "tool {} exited {} in {} ms ({} bytes)",
                self.tool, code, self.duration_ms, self.output.len
            ),
            (None, None) => format!(
                "tool {} done in {} ms ({} bytes)",
                self.tool, self.duration_ms, self.output.len
            ),
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_TOOL", self.tool.clone()));
        out.push(("CON_CALL_ID", self.call_id.clone()));
        if let Some(code) = self.exit_code {
            out.push(("CON_EXIT_CODE", code.to_string()));
        }
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        vec![self.output]
    }
}

/// Result of one contract check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// The check held.
    Pass,
    /// The check did not hold.
    Fail,
    /// Not evaluated (not applicable, or its scope agent is gone). Not a failure.
    Skipped,
    /// The check could not be evaluated (bad script, spawn error).
    Error,
    /// The check ran past its timeout and its process group was killed.
    Timeout,
}

impl CheckStatus {
    /// Canonical spelling, the same as in the JSON view and journal fields.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "fail",
            CheckStatus::Skipped => "skipped",
            CheckStatus::Error => "error",
            CheckStatus::Timeout => "timeout",
        }
    }
}

/// `contract.result`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractResult {
    /// Contract id (`CON-SYS-001`).
    pub contract: String,
    /// Check name within the contract.
    pub check: String,
    /// Agent the contract is scoped to, if any.
    pub scope_agent: Option<String>,
    /// Outcome.
    pub status: CheckStatus,
    /// Output or reason.
    pub detail: String,
    /// Duration.
    pub duration_ms: u64,
}

impl Kind for ContractResult {
    const SPEC: KindSpec = KindSpec {
        id: 9,
        name: "contract.result",
        version: 1,
        authority: Authority::Daemon,
        message_id: "8dd54b7e302142f791bf7edffa61e1a8",
        priority: Priority::Info,
        subject: "Contract @CON_CONTRACT@: @CON_STATUS@",
        description: "A contract check was evaluated by the healthcheck. CON_STATUS is pass, fail, skipped (not a failure), error or timeout.",
    };
    fn message(&self) -> String {
        format!(
            "contract {} check {}: {}{}",
            self.contract,
            self.check,
            self.status.as_str(),
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.detail)
            }
        )
    }
    fn priority(&self) -> Priority {
        match self.status {
            CheckStatus::Pass | CheckStatus::Skipped => Priority::Info,
            CheckStatus::Fail | CheckStatus::Error | CheckStatus::Timeout => Priority::Warning,
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_CONTRACT", self.contract.clone()));
        out.push(("CON_CHECK", self.check.clone()));
        out.push(("CON_STATUS", self.status.as_str().into()));
    }
    fn subject_agent(&self) -> Option<&str> {
        self.scope_agent.as_deref()
    }
}

/// `enforcement.action`: recorded before an enforcement acts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementAction {
    /// Contract that triggered it.
    pub contract: String,
    /// `alert`, `kill_session`, `quarantine`, `halt_agents`, `halt_workers`,
    /// `escalate`; the daemon's log limits: `refuse_append` (an agent over
    /// a quota), `refuse_agent_appends` (the log at its agents' ceiling).
    pub action: String,
    /// Target agent, if the action has one.
    pub target: Option<String>,
    /// Why.
    pub reason: String,
}

impl Kind for EnforcementAction {
    const SPEC: KindSpec = KindSpec {
        id: 10,
        name: "enforcement.action",
        version: 1,
        authority: Authority::Daemon,
        message_id: "fd1868d7d8504244b66c18558f1a59a0",
        priority: Priority::Warning,
        subject: "Enforcement @CON_ACTION@ by @CON_CONTRACT@",
        description: "A failed contract triggered an enforcement action. This entry is written before the action is carried out; an enforcement.done entry follows with the result. The daemon's own limits on the event log record a refusal this way and nothing follows it: CON-LOG-004 (the log reached log_max_mb minus its reserve: agents' appends are refused) and CON-LOG-005 (an agent went over an append quota: its event was refused, nothing stored).",
    };
    fn message(&self) -> String {
        format!(
            "enforcement {} on {} by contract {}: {}",
            self.action,
            self.target.as_deref().unwrap_or("system"),
            self.contract,
            self.reason
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_CONTRACT", self.contract.clone()));
        out.push(("CON_ACTION", self.action.clone()));
        if let Some(t) = &self.target {
            out.push(("CON_TARGET", t.clone()));
        }
    }
    fn subject_agent(&self) -> Option<&str> {
        self.target.as_deref()
    }
}

/// `enforcement.done` version 2 (current): recorded after an enforcement
/// acted, with what it actually did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementDone {
    /// Contract that triggered it (`operator` for an operator's order).
    pub contract: String,
    /// The action.
    pub action: String,
    /// Target agent, if any.
    pub target: Option<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Detail or error.
    pub detail: String,
    /// Agents whose condition it changed (halted, quarantined, resumed).
    pub agents: Vec<String>,
    /// Processes it killed.
    pub pids: Vec<u32>,
    /// Files and directories it wrote or changed (an escalation task, an
    /// inbox whose ACL it changed).
    pub paths: Vec<String>,
    /// ACL entries it removed: exactly what a resume puts back.
    pub acl_removed: Vec<AclGrant>,
}

/// One ACL entry of one path, as enforcement removed or restored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclGrant {
    /// The file or directory.
    pub path: String,
    /// Whether the entry is in the default ACL (else the access ACL).
    pub default: bool,
    /// The entry as `setfacl -m` takes it: `user:a-concierge:rwx`.
    pub entry: String,
}

/// `enforcement.done` version 1: whether it succeeded and a detail only.
/// Kept so records of this version keep decoding; upcast to
/// [`EnforcementDone`] with nothing listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementDoneV1 {
    /// Contract that triggered it.
    pub contract: String,
    /// The action.
    pub action: String,
    /// Target agent, if any.
    pub target: Option<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Detail or error.
    pub detail: String,
}

impl From<EnforcementDoneV1> for EnforcementDone {
    fn from(v1: EnforcementDoneV1) -> Self {
        EnforcementDone {
            contract: v1.contract,
            action: v1.action,
            target: v1.target,
            ok: v1.ok,
            detail: v1.detail,
            agents: Vec::new(),
            pids: Vec::new(),
            paths: Vec::new(),
            acl_removed: Vec::new(),
        }
    }
}

impl Kind for EnforcementDone {
    const SPEC: KindSpec = KindSpec {
        id: 11,
        name: "enforcement.done",
        version: 2,
        authority: Authority::Daemon,
        message_id: "eb4aca849ecd493da5b9c93b64f77149",
        priority: Priority::Notice,
        subject: "Enforcement @CON_ACTION@ finished",
        description: "An enforcement action finished: the agents whose condition it changed, the processes it killed, the paths it wrote or changed and the ACL entries it removed (which a resume restores). If it failed, the target may still be running: check `con status`.",
    };
    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        match version {
            1 => codec::decode::<EnforcementDoneV1>("enforcement.done v1", bytes).map(Into::into),
            2 => codec::decode("enforcement.done", bytes),
            _ => Err(DecodeError::UnknownVersion {
                kind: Self::SPEC.name,
                version,
            }),
        }
    }
    fn message(&self) -> String {
        format!(
            "enforcement {} on {} {}: {}",
            self.action,
            self.target.as_deref().unwrap_or("system"),
            if self.ok { "done" } else { "FAILED" },
            self.detail
        )
    }
    fn priority(&self) -> Priority {
        match (self.ok, self.action.as_str()) {
            (false, _) => Priority::Err,
            // An alert is the sysadmin's to read: it stands out in the
            // journal like the failure it reports.
            (true, "alert") => Priority::Warning,
            (true, _) => Priority::Notice,
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_CONTRACT", self.contract.clone()));
        out.push(("CON_ACTION", self.action.clone()));
        if let Some(t) = &self.target {
            out.push(("CON_TARGET", t.clone()));
        }
    }
    fn subject_agent(&self) -> Option<&str> {
        self.target.as_deref()
    }
}

/// Administrative condition of an agent (durable; survives restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentCondition {
    /// May be started.
    Active,
    /// Stopped until `con agent resume`.
    Halted,
    /// Isolated until `con agent resume`.
    Quarantined,
    /// Removed from the conspiracy.
    Decommissioned,
}

impl AgentCondition {
    /// Canonical spelling, the same as in the JSON view and journal fields.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentCondition::Active => "active",
            AgentCondition::Halted => "halted",
            AgentCondition::Quarantined => "quarantined",
            AgentCondition::Decommissioned => "decommissioned",
        }
    }
}

/// `agent.state` version 2 (current).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent.
    pub agent: String,
    /// New condition.
    pub condition: AgentCondition,
    /// Why (operator command, contract id…).
    pub reason: String,
}

/// `agent.state` version 1: only a halted flag, no reason. Kept so records
/// of this version keep decoding; upcast to [`AgentState`] on read. It is
/// also the exemplar of the upcast path that every later kind change follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStateV1 {
    /// The agent.
    pub agent: String,
    /// Whether it was halted.
    pub halted: bool,
}

impl From<AgentStateV1> for AgentState {
    fn from(v1: AgentStateV1) -> Self {
        AgentState {
            agent: v1.agent,
            condition: if v1.halted {
                AgentCondition::Halted
            } else {
                AgentCondition::Active
            },
            reason: String::new(),
        }
    }
}

impl Kind for AgentState {
    const SPEC: KindSpec = KindSpec {
        id: 12,
        name: "agent.state",
        version: 2,
        authority: Authority::Daemon,
        message_id: "d507bd7c1c0e444186a05386a3d890f7",
        priority: Priority::Notice,
        subject: "Agent @CON_AGENT_SUBJECT@ is now @CON_CONDITION@",
        description: "The administrative condition of an agent changed (active, halted, quarantined, decommissioned). Halts and quarantines are durable: the agent is not started again until `con agent resume`.",
    };
    fn decode_version(version: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        match version {
            1 => codec::decode::<AgentStateV1>("agent.state v1", bytes).map(Into::into),
            2 => codec::decode("agent.state", bytes),
            _ => Err(DecodeError::UnknownVersion {
                kind: Self::SPEC.name,
                version,
            }),
        }
    }
    fn message(&self) -> String {
        let mut m = format!("agent {} is now {}", self.agent, self.condition.as_str());
        if !self.reason.is_empty() {
            m.push_str(": ");
            m.push_str(&self.reason);
        }
        m
    }
    fn priority(&self) -> Priority {
        match self.condition {
            AgentCondition::Active => Priority::Notice,
            _ => Priority::Warning,
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_AGENT_SUBJECT", self.agent.clone()));
        out.push(("CON_CONDITION", self.condition.as_str().into()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
}

/// `journal.mirror_degraded`: journald entries are being lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalMirrorDegraded {
    /// What went wrong (socket missing, send error, queue full).
    pub reason: String,
    /// First seq that may be missing from the journal.
    pub first_unmirrored_seq: u64,
}

impl Kind for JournalMirrorDegraded {
    const SPEC: KindSpec = KindSpec {
        id: 13,
        name: "journal.mirror_degraded",
        version: 1,
        authority: Authority::Daemon,
        message_id: "91f79451c2a6443f8226af3156e396db",
        priority: Priority::Err,
        subject: "con journal mirror degraded",
        description: "The journald mirror of the con event log stopped keeping up (journald missing, refusing, or stuck). Appends to the event log are unaffected; journal entries from CON_FIRST_UNMIRRORED_SEQ on may be missing until a journal.mirror_recovered entry. The event log remains the record of truth: use `con logs` or `con replay`.",
    };
    fn message(&self) -> String {
        format!(
            "journal mirror degraded from seq {}: {}",
            self.first_unmirrored_seq, self.reason
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push((
            "CON_FIRST_UNMIRRORED_SEQ",
            self.first_unmirrored_seq.to_string(),
        ));
    }
}

/// `journal.mirror_recovered`: journald accepts entries again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalMirrorRecovered {
    /// Events that were not mirrored while degraded.
    pub dropped: u64,
}

impl Kind for JournalMirrorRecovered {
    const SPEC: KindSpec = KindSpec {
        id: 14,
        name: "journal.mirror_recovered",
        version: 1,
        authority: Authority::Daemon,
        message_id: "d31a76f6a77b4c5b9e0c5cc77e50fabd",
        priority: Priority::Notice,
        subject: "con journal mirror recovered",
        description: "journald accepts con entries again after a degradation. CON_DROPPED events were not mirrored meanwhile; they are in the event log.",
    };
    fn message(&self) -> String {
        format!(
            "journal mirror recovered; {} events were not mirrored",
            self.dropped
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_DROPPED", self.dropped.to_string()));
    }
}

/// `chain.checkpoint`: the chain head at some seq, for external anchoring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCheckpoint {
    /// Last seq covered.
    pub through_seq: u64,
    /// Chain hash of that seq.
    pub head: Digest,
}

impl Kind for ChainCheckpoint {
    const SPEC: KindSpec = KindSpec {
        id: 15,
        name: "chain.checkpoint",
        version: 1,
        authority: Authority::Daemon,
        message_id: "304c9d7530144b1b995794138b6e19e2",
        priority: Priority::Notice,
        subject: "con event log checkpoint at seq @CON_THROUGH_SEQ@",
        description: "The hash of the con event log chain at a given seq. Copied to the journal (and any central journal server) so that a later rewrite of the log, even one that recomputes every hash, is detectable by comparing against this entry.",
    };
    fn message(&self) -> String {
        format!(
            "event log checkpoint: seq {} hash {}",
            self.through_seq, self.head
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_THROUGH_SEQ", self.through_seq.to_string()));
        out.push(("CON_HEAD", self.head.to_hex()));
    }
}

/// `run.started`: the supervisor started an agent run (`con run <agent>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The agent.
    pub agent: String,
    /// Process id of the run.
    pub pid: u32,
    /// What triggered it: `inbox`, `cron` or `continuous`.
    pub trigger: String,
}

impl Kind for RunStarted {
    const SPEC: KindSpec = KindSpec {
        id: 16,
        name: "run.started",
        version: 1,
        authority: Authority::Daemon,
        message_id: "b1563e67e5a147869c599761976f7731",
        priority: Priority::Info,
        subject: "Run of agent @CON_AGENT@ started",
        description: "The supervisor started `con run` for an agent, as the agent's own Linux user with a scrubbed environment.",
    };
    fn message(&self) -> String {
        format!(
            "started a run of agent {} (pid {}, {})",
            self.agent, self.pid, self.trigger
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_PID", self.pid.to_string()));
        out.push(("CON_TRIGGER", self.trigger.clone()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
}

/// `run.exited`: an agent run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunExited {
    /// The agent.
    pub agent: String,
    /// Process id of the run.
    pub pid: u32,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Signal, if it was killed.
    pub signal: Option<i32>,
    /// Wall-clock duration.
    pub duration_ms: u64,
}

impl Kind for RunExited {
    const SPEC: KindSpec = KindSpec {
        id: 17,
        name: "run.exited",
        version: 1,
        authority: Authority::Daemon,
        message_id: "f267023740924ab883b4a77ce622aa52",
        priority: Priority::Info,
        subject: "Run of agent @CON_AGENT@ exited",
        description: "An agent run ended. CON_EXIT_CODE or CON_SIGNAL says how; a failing run is retried with back-off while its inbox holds tasks.",
    };
    fn message(&self) -> String {
        let how = match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exited {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended".to_owned(),
        };
        format!(
            "run of agent {} (pid {}) {how} after {} ms",
            self.agent, self.pid, self.duration_ms
        )
    }
    fn priority(&self) -> Priority {
        if self.exit_code == Some(0) {
            Priority::Info
        } else {
            Priority::Warning
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_PID", self.pid.to_string()));
        if let Some(code) = self.exit_code {
            out.push(("CON_EXIT_CODE", code.to_string()));
        }
        if let Some(sig) = self.signal {
            out.push(("CON_SIGNAL", sig.to_string()));
        }
        out.push(("CON_DURATION_MS", self.duration_ms.to_string()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
}

/// `provision.applied`: `con bootstrap` (or commission/decommission)
/// changed the host. Recorded after applying when the daemon is up, so the
/// log says who changed accounts, permissions and units, and what failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionApplied {
    /// The command (`bootstrap`, `commission <name>`, `decommission <name>`).
    pub command: String,
    /// Steps applied successfully.
    pub changes: u32,
    /// Steps that failed, one line each.
    pub failed: Vec<String>,
    /// Agents left disabled because a security-relevant step failed.
    pub disabled_agents: Vec<String>,
    /// The applied step lines (`+ user a-x`, `~ mode …`) as a blob.
    pub steps: BlobRef,
}

impl Kind for ProvisionApplied {
    const SPEC: KindSpec = KindSpec {
        id: 18,
        name: "provision.applied",
        version: 1,
        authority: Authority::Operator,
        message_id: "fd833c239fb14a358ae3fc18dfb2d4e7",
        priority: Priority::Notice,
        subject: "con provisioning changed the host",
        description: "con bootstrap, commission or decommission applied changes to users, directories, ACLs, sudoers, units or egress rules. Failed steps are listed; an agent whose security-relevant step failed is left disabled (fail closed).",
    };
    fn message(&self) -> String {
        if self.failed.is_empty() {
            format!("{}: {} changes applied", self.command, self.changes)
        } else {
            format!(
                "{}: {} changes applied, {} failed (disabled: {})",
                self.command,
                self.changes,
                self.failed.len(),
                if self.disabled_agents.is_empty() {
                    "none".to_owned()
                } else {
                    self.disabled_agents.join(", ")
                }
            )
        }
    }
    fn priority(&self) -> Priority {
        if self.failed.is_empty() {
            Priority::Notice
        } else {
            Priority::Err
        }
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_CHANGES", self.changes.to_string()));
        out.push(("CON_FAILED", self.failed.len().to_string()));
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        vec![self.steps]
    }
}

/// `config.reloaded`: the daemon re-read `con.toml` and the secrets file
/// while running and now serves what they say. Recorded before the new
/// configuration is used; a refused file (invalid, or a secrets file others
/// can read) changes nothing and is not recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReloaded {
    /// What asked for it: `signal` (SIGHUP, `systemctl reload`) or `file`
    /// (the config or secrets file changed).
    pub trigger: String,
    /// SHA-256 of `con.toml` as read for this reload.
    pub config_digest: Digest,
    /// Agents configured now and not before.
    pub agents_added: Vec<String>,
    /// Agents configured before and not now.
    pub agents_removed: Vec<String>,
    /// Agents configured before and now whose settings changed.
    pub agents_changed: Vec<String>,
    /// Whether the secrets file's entries changed (never their values).
    pub keys_changed: bool,
    /// Settings that differ in the file but take effect only when the
    /// daemon restarts (`[system] name`, `[contracts.system]` limits, …).
    pub restart_needed: Vec<String>,
}

impl Kind for ConfigReloaded {
    const SPEC: KindSpec = KindSpec {
        id: 19,
        name: "config.reloaded",
        version: 1,
        authority: Authority::Daemon,
        message_id: "d3820f02f22242bab248ad6059a6bc33",
        priority: Priority::Notice,
        subject: "con daemon reloaded its configuration",
        description: "The daemon re-read con.toml and the secrets file (on SIGHUP, systemctl reload, or because a file changed) and now serves what they say: the agent set that identity and supervision use, their inboxes, model routes, keys, budgets and schedules. The payload names the agents added, removed and changed, and the SHA-256 of the file read; key values are never recorded. Settings listed in restart_needed wait for the next restart. A file that does not validate is refused with one line on the daemon's stderr and the running configuration stays.",
    };
    fn message(&self) -> String {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        let mut message = format!(
            "reloaded the configuration ({}; added: {}; removed: {}; changed: {}{})",
            self.trigger,
            list(&self.agents_added),
            list(&self.agents_removed),
            list(&self.agents_changed),
            if self.keys_changed {
                "; keys changed"
            } else {
                ""
            }
        );
        if !self.restart_needed.is_empty() {
            message.push_str(&format!(
                "; waiting for a restart: {}",
                self.restart_needed.join(", ")
            ));
        }
        message
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_TRIGGER", self.trigger.clone()));
        out.push(("CON_CONFIG_SHA256", self.config_digest.to_hex()));
    }
}

/// `task.failed`: a run set a task aside in its agent's `failed/` without
/// answering it (it could not be read, was too large or sparse, was not a
/// regular file, its response could not be written, or its last
/// `[inbox] max_attempts` sessions all failed). Recorded by the run in the
/// set-aside session, after the task's `task.routed` to `failed`; the
/// envelope carries that session and the task id. The daemon tells the
/// agent holding the sysadmin role once per failed task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// The agent whose inbox held it.
    pub agent: String,
    /// Where the task is now (in the agent's `failed/`).
    pub path: String,
    /// Why it was set aside.
    pub reason: String,
    /// Sessions of it that had failed before (0 when it was set aside
    /// before any was run).
    pub attempts: u32,
}

impl Kind for TaskFailed {
    const SPEC: KindSpec = KindSpec {
        id: 20,
        name: "task.failed",
        version: 1,
        authority: Authority::AgentRun,
        message_id: "c8d9b5ae3cff476f84ff0297ab048372",
        priority: Priority::Warning,
        subject: "Task of agent @CON_AGENT@ set aside as failed",
        description: "An agent run set a task aside in the agent's failed/ directory without answering it: it could not be read, was too large or sparse, was not a regular file, its response could not be written, or its last [inbox] max_attempts sessions all failed (CON_ATTEMPTS). The sender got a response saying why; the agent holding the sysadmin role gets one escalation task per failed task. The task stays in failed/ until an operator removes it or moves it back into an inbox; until then `con status` lists it as a problem.",
    };
    fn message(&self) -> String {
        format!(
            "task {} of agent {} set aside after {} failed session(s): {}",
            self.path, self.agent, self.attempts, self.reason
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_PATH", self.path.clone()));
        out.push(("CON_ATTEMPTS", self.attempts.to_string()));
    }
    fn subject_agent(&self) -> Option<&str> {
        Some(&self.agent)
    }
}

/// `log.degraded`: the event log could not record for a while (its disk
/// was full, or a write failed). Recorded by the daemon once the log
/// records again, just before `log.recovered`: while it could not record,
/// nothing could be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDegraded {
    /// The log's database directory.
    pub path: String,
    /// When the log stopped recording, nanoseconds since the Unix epoch.
    pub since_unix_nanos: i64,
    /// Why, as appenders were told (`no space left on device (0.4 MiB
    /// free)`, or the write error).
    pub reason: String,
    /// Free bytes on the log's file system when it stopped recording.
    pub free_bytes: u64,
}

impl Kind for LogDegraded {
    const SPEC: KindSpec = KindSpec {
        id: 21,
        name: "log.degraded",
        version: 1,
        authority: Authority::Daemon,
        message_id: "95603b40f5b045e7b68d5458ea98228c",
        priority: Priority::Err,
        subject: "con event log could not record",
        description: "The con event log could not record from CON_SINCE_UNIX_NANOS on: its file system was (nearly) full, or a write failed. Meanwhile every append was refused with the reason given here, nothing was acknowledged that is not in the log, the daemon started no agent run and refused to open sessions, and it retried by itself. This entry is written once the log records again, followed by log.recovered. Free space on the log's file system (con keeps [contracts.system] log_min_free_mb free) or fix the failing disk.",
    };
    fn message(&self) -> String {
        format!(
            "the event log at {} stopped recording: {}",
            self.path, self.reason
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_SINCE_UNIX_NANOS", self.since_unix_nanos.to_string()));
        out.push(("CON_FREE_BYTES", self.free_bytes.to_string()));
    }
}

/// `log.recovered`: the event log records again, without a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecovered {
    /// The log's database directory.
    pub path: String,
    /// When the log had stopped recording (the `log.degraded` before it).
    pub since_unix_nanos: i64,
    /// How long it could not record, in milliseconds.
    pub duration_ms: u64,
    /// Appends refused meanwhile.
    pub refused: u64,
    /// Whether the database had to be closed and opened again (a write
    /// had failed), rather than refusing before the disk was full.
    pub reopened: bool,
    /// Free bytes on the log's file system now.
    pub free_bytes: u64,
}

impl Kind for LogRecovered {
    const SPEC: KindSpec = KindSpec {
        id: 22,
        name: "log.recovered",
        version: 1,
        authority: Authority::Daemon,
        message_id: "5ef15fa405a84c0ab0d817d3d2dc302c",
        priority: Priority::Notice,
        subject: "con event log records again",
        description: "The con event log records again after the log.degraded before it. CON_REFUSED appends were refused meanwhile (their senders were told; none of them is in the log). CON_REOPENED says whether the daemon had to reopen the database because a write had failed. Agent runs start again and waiting tasks are answered.",
    };
    fn message(&self) -> String {
        format!(
            "the event log at {} records again after {:.1} s; {} append(s) were refused meanwhile{}",
            self.path,
            self.duration_ms as f64 / 1000.0,
            self.refused,
            if self.reopened {
                "; the database was reopened"
            } else {
                ""
            }
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_SINCE_UNIX_NANOS", self.since_unix_nanos.to_string()));
        out.push(("CON_REFUSED", self.refused.to_string()));
        out.push(("CON_REOPENED", self.reopened.to_string()));
        out.push(("CON_FREE_BYTES", self.free_bytes.to_string()));
    }
}

/// `contract.added`: the daemon stored a contract file someone handed it
/// (`con contracts add`), after parsing it with the same parser that
/// evaluates it. The file is root's (0644) in the contracts directory; its
/// checks run as `author_uid`, never as root unless root added it. The
/// daemon reads these events at start to know whose each stored content
/// is, so that survives restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractAdded {
    /// The contract's `id`.
    pub contract: String,
    /// Where it was stored (`<contracts dir>/<id>.yaml`).
    pub path: String,
    /// Who added it: its checks run as this uid.
    pub author_uid: u32,
    /// The author's agent name, when an agent added it.
    pub author_agent: Option<String>,
    /// The file as stored.
    pub content: BlobRef,
    /// The content it replaced, if the file existed.
    pub replaced: Option<BlobRef>,
}

impl Kind for ContractAdded {
    const SPEC: KindSpec = KindSpec {
        id: 23,
        name: "contract.added",
        version: 1,
        authority: Authority::Daemon,
        message_id: "108cac1d08a44ae6994a8da7d4a07c09",
        priority: Priority::Notice,
        subject: "Contract @CON_CONTRACT@ added by uid @CON_AUTHOR_UID@",
        description: "A contract file was added through the daemon (`con contracts add`): parsed first, then stored root-owned and read-only in the contracts directory. Its checks run as the author's uid (CON_AUTHOR_UID), never with more rights than the author has; the content is attached. Review it with `con logs --kind contract.added` and `con contracts list`.",
    };
    fn message(&self) -> String {
        format!(
            "contract {} {} by uid {}{} at {}",
            self.contract,
            if self.replaced.is_some() {
                "replaced"
            } else {
                "added"
            },
            self.author_uid,
            self.author_agent
                .as_deref()
                .map(|a| format!(" (agent {a})"))
                .unwrap_or_default(),
            self.path
        )
    }
    fn journal_fields(&self, out: &mut Vec<(&'static str, String)>) {
        out.push(("CON_CONTRACT", self.contract.clone()));
        out.push(("CON_AUTHOR_UID", self.author_uid.to_string()));
    }
    fn subject_agent(&self) -> Option<&str> {
        self.author_agent.as_deref()
    }
    fn blob_refs(&self) -> Vec<BlobRef> {
        std::iter::once(self.content).chain(self.replaced).collect()
    }
}
