//! Fixtures shared by con's tests and benches.
//!
//! [`samples`] is the one set of event samples: one payload per kind at every
//! version it has had. The golden tests pin their encodings and JSON views;
//! the daemon's authority tests, the journal round trips and the benches
//! build their events from them, so a new kind is covered everywhere by
//! adding one sample here.
//!
//! [`TestUser`] and [`TestGroup`] are real Linux accounts made for one test
//! and removed after it; [`unique_name`] and [`unique_prefix`] name them
//! (and anything else a test creates on the host) so that no two tests
//! collide. [`Root`] and [`Daemon`] are a con host in a temp dir and the
//! real `con daemon` on it. [`Tmpfs`] is a small file system of a test's
//! own, to fill up. [`in_private_journald`] gives a benchmark a journald of
//! its own.
//!
//! A fixture that cannot be set up panics: the test fails there, loudly,
//! which is what a test wants.

#![allow(clippy::unwrap_used, clippy::expect_used)] // fails loudly on purpose (see above)

mod host;
mod journald;
mod processes;
mod tmpfs;
mod users;

pub use host::{Daemon, Root, all_events, client_event, workspace};
pub use journald::{PrivateJournald, RUNTIME_MAX_USE, in_private_journald};
pub use processes::{live_in_group, pgid_of};
pub use tmpfs::Tmpfs;
pub use users::{TestGroup, TestUser, remove_accounts, unique_name, unique_prefix};

use con_event::payloads::*;
use con_event::*;

/// Every content the samples reference, so that a client can attach exactly
/// what a sample payload references (the daemon refuses anything else).
const SAMPLE_CONTENTS: &[&str] = &[
    "Filesystem ...",
    "You are sysadmin.",
    "check the disk",
    "{\"command\":\"df -h\"}",
    "{\"content\":[]}",
    "{\"messages\":[]}",
    "{\"role\":\"assistant\",\"content\":\"ok\"}",
    "{\"role\":\"user\",\"content\":\"check the disk\"}",
    "{\"system\":\"You are sysadmin.\",\"messages\":,\"tools\":[]}",
    "+ user a-concierge",
    CONTRACT_SAMPLE,
];

/// The contract file the `contract.added` sample attaches.
const CONTRACT_SAMPLE: &str = "id: CON-SYS-009\ntype: detective\nchecks:\n  - name: up\n    command: {run: 'echo up', test: '[ \"$RESULT\" = up ]'}\n";

/// The contents `payload` references, for a payload built from the samples
/// (and from contents in [`SAMPLE_CONTENTS`] generally); a reference to
/// anything else is left out, so the daemon's refusal shows it.
pub fn attachments_for(payload: &Payload) -> Vec<Vec<u8>> {
    payload
        .blob_refs()
        .iter()
        .filter_map(|r| {
            SAMPLE_CONTENTS
                .iter()
                .find(|c| BlobRef::of(c.as_bytes()) == *r)
                .map(|c| c.as_bytes().to_vec())
        })
        .collect()
}

/// The sample of each kind at its current version, in registry order.
pub fn current_samples() -> Vec<Payload> {
    KINDS
        .iter()
        .filter_map(|spec| {
            samples()
                .into_iter()
                .find(|s| s.kind == spec.name && s.version == spec.version)
                .map(|s| s.payload)
        })
        .collect()
}

/// A blob reference to `s`'s bytes.
pub fn blob(s: &str) -> BlobRef {
    BlobRef::of(s.as_bytes())
}

/// One sample of a kind at one version.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Kind name.
    pub kind: &'static str,
    /// Version the payload bytes are encoded at.
    pub version: u16,
    /// The payload as stored at that version.
    pub bytes: Vec<u8>,
    /// The payload decoded (and upcast) at the kind's current version.
    pub payload: Payload,
}

/// Every kind at every version it has ever had: the golden samples whose
/// encodings are pinned in `crates/con-event/tests/golden/`.
///
/// # Panics
/// If a sample cannot be encoded (a bug in the schema).
#[allow(clippy::expect_used)] // test support: a broken sample must fail loudly
pub fn samples() -> Vec<Sample> {
    let current = |p: Payload| -> Sample {
        let spec = p.spec();
        Sample {
            kind: spec.name,
            version: spec.version,
            bytes: p.encode().expect("sample encodes"),
            payload: p,
        }
    };
    vec![
        current(
            InboxArrived {
                inbox: "concierge".into(),
                path: "/srv/con/agents/concierge/inbox/20261125-0001.task".into(),
                owner_uid: 1001,
                owner_gid: 1001,
                mode: 0o100644,
                nlink: 1,
                dev: 2049,
                inode: 131_073,
                ctime_unix_nanos: 1_795_000_000_000_000_000,
                symlink: false,
                trust: Trust::Unverified,
                trust_reason: "owner uid 1001 is not trusted".into(),
                content: blob("check the disk"),
            }
            .into(),
        ),
        current(
            TaskRouted {
                from: "outer".into(),
                to: "concierge".into(),
                path: "/srv/con/agents/concierge/inbox/20261125-0001.task".into(),
            }
            .into(),
        ),
        current(
            SessionStarted {
                agent: "sysadmin".into(),
                runner: "builtin".into(),
                provider: Some("openrouter".into()),
                model: Some("anthropic/claude-sonnet-4.6".into()),
                trust: Trust::Verified,
                prompt: blob("You are sysadmin."),
            }
            .into(),
        ),
        current(
            SessionEnded {
                agent: "sysadmin".into(),
                outcome: Outcome::KilledByEnforcement,
                iterations: 0,
                duration_ms: 61_000,
                response: None,
                detail: "killed by enforcement: kill_session (CON-SYS-004)".into(),
            }
            .into(),
        ),
        Sample {
            kind: "session.ended",
            version: 1,
            bytes: codec::encode(&SessionEndedV1 {
                agent: "sysadmin".into(),
                outcome: OutcomeV1::MaxIterations,
                iterations: 200,
                duration_ms: 61_000,
                response: None,
                detail: "iteration cap 200 reached".into(),
            })
            .expect("sample encodes"),
            payload: SessionEnded {
                agent: "sysadmin".into(),
                outcome: Outcome::MaxIterations,
                iterations: 200,
                duration_ms: 61_000,
                response: None,
                detail: "iteration cap 200 reached".into(),
            }
            .into(),
        },
        current(
            LlmRequest {
                agent: "sysadmin".into(),
                provider: "anthropic".into(),
                model: "claude-sonnet-4.6".into(),
                iteration: 3,
                frame: blob("{\"system\":\"You are sysadmin.\",\"messages\":,\"tools\":[]}"),
                messages_at: 41,
                continues: Some(5),
                repeated: 1,
                messages: vec![
                    blob("{\"role\":\"user\",\"content\":\"check the disk\"}"),
                    blob("{\"role\":\"assistant\",\"content\":\"ok\"}"),
                ],
            }
            .into(),
        ),
        Sample {
            kind: "llm.request",
            version: 1,
            bytes: codec::encode(&LlmRequestV1 {
                agent: "sysadmin".into(),
                provider: "anthropic".into(),
                model: "claude-sonnet-4.6".into(),
                iteration: 3,
                request: blob("{\"messages\":[]}"),
            })
            .expect("sample encodes"),
            payload: LlmRequest {
                agent: "sysadmin".into(),
                provider: "anthropic".into(),
                model: "claude-sonnet-4.6".into(),
                iteration: 3,
                frame: blob("{\"messages\":[]}"),
                messages_at: 0,
                continues: None,
                repeated: 0,
                messages: Vec::new(),
            }
            .into(),
        },
        current(
            LlmResponse {
                agent: "sysadmin".into(),
                provider: "anthropic".into(),
                model: "claude-sonnet-4.6".into(),
                status: Some(200),
                attempts: 2,
                latency_ms: 1234,
                input_tokens: 1500,
                output_tokens: 230,
                cost_micro_usd: 8_000,
                response: Some(blob("{\"content\":[]}")),
                error: None,
            }
            .into(),
        ),
        current(
            ToolCall {
                call_id: "call_1".into(),
                tool: "exec".into(),
                arguments: blob("{\"command\":\"df -h\"}"),
            }
            .into(),
        ),
        current(
            ToolResult {
                call_id: "call_1".into(),
                tool: "exec".into(),
                exit_code: Some(0),
                duration_ms: 12,
                output: blob("Filesystem ..."),
                truncated: false,
                error: None,
            }
            .into(),
        ),
        current(
            ContractResult {
                contract: "CON-SYS-001".into(),
                check: "disk_free".into(),
                scope_agent: None,
                status: CheckStatus::Fail,
                detail: "8% free < 15%".into(),
                duration_ms: 4,
            }
            .into(),
        ),
        current(
            EnforcementAction {
                contract: "CON-AGENT-001".into(),
                action: "quarantine".into(),
                target: Some("scout".into()),
                reason: "workspace mode 0777".into(),
            }
            .into(),
        ),
        current(
            EnforcementDone {
                contract: "CON-AGENT-001".into(),
                action: "quarantine".into(),
                target: Some("scout".into()),
                ok: true,
                detail: "agent quarantined".into(),
                agents: vec!["scout".into()],
                pids: vec![4242, 4243],
                paths: vec!["/srv/con/agents/scout/inbox".into()],
                acl_removed: vec![AclGrant {
                    path: "/srv/con/agents/scout/inbox".into(),
                    default: false,
                    entry: "user:a-concierge:rwx".into(),
                }],
            }
            .into(),
        ),
        Sample {
            kind: "enforcement.done",
            version: 1,
            bytes: codec::encode(&EnforcementDoneV1 {
                contract: "CON-AGENT-001".into(),
                action: "quarantine".into(),
                target: Some("scout".into()),
                ok: true,
                detail: "agent quarantined".into(),
            })
            .expect("sample encodes"),
            payload: EnforcementDone {
                contract: "CON-AGENT-001".into(),
                action: "quarantine".into(),
                target: Some("scout".into()),
                ok: true,
                detail: "agent quarantined".into(),
                agents: Vec::new(),
                pids: Vec::new(),
                paths: Vec::new(),
                acl_removed: Vec::new(),
            }
            .into(),
        },
        current(
            AgentState {
                agent: "scout".into(),
                condition: AgentCondition::Quarantined,
                reason: "CON-AGENT-001".into(),
            }
            .into(),
        ),
        Sample {
            kind: "agent.state",
            version: 1,
            bytes: codec::encode(&AgentStateV1 {
                agent: "scout".into(),
                halted: true,
            })
            .expect("sample encodes"),
            payload: AgentState {
                agent: "scout".into(),
                condition: AgentCondition::Halted,
                reason: String::new(),
            }
            .into(),
        },
        current(
            JournalMirrorDegraded {
                reason: "journald socket missing".into(),
                first_unmirrored_seq: 42,
            }
            .into(),
        ),
        current(JournalMirrorRecovered { dropped: 17 }.into()),
        current(
            RunStarted {
                agent: "sysadmin".into(),
                pid: 4242,
                trigger: "inbox".into(),
            }
            .into(),
        ),
        current(
            RunExited {
                agent: "sysadmin".into(),
                pid: 4242,
                exit_code: None,
                signal: Some(9),
                duration_ms: 1500,
            }
            .into(),
        ),
        current(
            ProvisionApplied {
                command: "bootstrap".into(),
                changes: 12,
                failed: vec!["sudoers a-sysadmin: visudo: syntax error".into()],
                disabled_agents: vec!["sysadmin".into()],
                steps: blob("+ user a-concierge"),
            }
            .into(),
        ),
        current(
            ConfigReloaded {
                trigger: "signal".into(),
                config_digest: Digest::of(b"[system]\nname = \"fleet\"\n"),
                agents_added: vec!["scout".into()],
                agents_removed: vec!["scribe".into()],
                agents_changed: vec!["sysadmin".into()],
                keys_changed: true,
                restart_needed: vec!["contracts.system".into()],
            }
            .into(),
        ),
        current(
            TaskFailed {
                agent: "scribe".into(),
                path: "/srv/con/agents/scribe/failed/20261125-0001.task".into(),
                reason: "3 sessions of it failed; the last: provider error 400".into(),
                attempts: 3,
            }
            .into(),
        ),
        current(
            ContractAdded {
                contract: "CON-SYS-009".into(),
                path: "/srv/con/contracts/CON-SYS-009.yaml".into(),
                author_uid: 1002,
                author_agent: Some("sysadmin".into()),
                content: blob(CONTRACT_SAMPLE),
                replaced: None,
            }
            .into(),
        ),
        current(
            ChainCheckpoint {
                through_seq: 1000,
                head: Digest::of(b"head"),
            }
            .into(),
        ),
        current(
            LogDegraded {
                path: "/var/lib/con/events".into(),
                since_unix_nanos: 1_795_000_000_000_000_000,
                reason: "no space left on device (0.4 MiB free)".into(),
                free_bytes: 419_430,
            }
            .into(),
        ),
        current(
            LogRecovered {
                path: "/var/lib/con/events".into(),
                since_unix_nanos: 1_795_000_000_000_000_000,
                duration_ms: 12_500,
                refused: 3,
                reopened: true,
                free_bytes: 52_428_800,
            }
            .into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_content_can_be_attached() {
        for sample in samples() {
            assert_eq!(
                attachments_for(&sample.payload).len(),
                sample.payload.blob_refs().len(),
                "{} v{}: add its contents to SAMPLE_CONTENTS",
                sample.kind,
                sample.version
            );
        }
    }
}
