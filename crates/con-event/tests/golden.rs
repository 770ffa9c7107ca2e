//! Golden bytes: every kind at every version it has ever had, encoded as it
//! is stored, committed under `tests/golden/`. A failure here means a stored
//! format changed — which would make existing logs unreadable.
//!
//! Regenerate (only when adding a kind or version): `CON_BLESS=1 cargo test -p con-event --test golden`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::path::PathBuf;

use con_event::payloads::*;
use con_event::*;

fn blob(s: &str) -> BlobRef {
    BlobRef::of(s.as_bytes())
}

/// (kind name, version, payload bytes, payload decoded at the current version)
fn samples() -> Vec<(&'static str, u16, Vec<u8>, Payload)> {
    let current = |p: Payload| -> (&'static str, u16, Vec<u8>, Payload) {
        let spec = p.spec();
        (spec.name, spec.version, p.encode().unwrap(), p)
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
                outcome: Outcome::MaxIterations,
                iterations: 200,
                duration_ms: 61_000,
                response: None,
                detail: "iteration cap 200 reached".into(),
            }
            .into(),
        ),
        current(
            LlmRequest {
                agent: "sysadmin".into(),
                provider: "anthropic".into(),
                model: "claude-sonnet-4.6".into(),
                iteration: 3,
                request: blob("{\"messages\":[]}"),
            }
            .into(),
        ),
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
            }
            .into(),
        ),
        current(
            AgentState {
                agent: "scout".into(),
                condition: AgentCondition::Quarantined,
                reason: "CON-AGENT-001".into(),
            }
            .into(),
        ),
        (
            "agent.state",
            1,
            codec::encode(&AgentStateV1 {
                agent: "scout".into(),
                halted: true,
            })
            .unwrap(),
            AgentState {
                agent: "scout".into(),
                condition: AgentCondition::Halted,
                reason: String::new(),
            }
            .into(),
        ),
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
                steps: BlobRef::of(b"+ user a-concierge"),
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
    ]
}

fn envelope(kind: u16, version: u16, payload: Vec<u8>) -> Envelope {
    Envelope {
        seq: 7,
        id: EventId([0x11; 16]),
        ts_unix_nanos: 1_795_000_000_123_456_789,
        actor: Actor {
            uid: 1001,
            agent: Some("concierge".into()),
        },
        session: Some(SessionId([0x22; 16])),
        task: Some("20261125-0001".into()),
        causation: Some(6),
        kind,
        kind_version: version,
        payload,
        prev_hash: Digest::of(b"previous"),
    }
}

fn golden_path(name: &str, version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.v{version}.hex"))
}

#[test]
fn every_kind_and_version_decodes_from_golden_bytes() {
    let bless = std::env::var_os("CON_BLESS").is_some();
    let samples = samples();
    for spec in KINDS {
        for version in 1..=spec.version {
            assert!(
                samples.iter().any(|s| s.0 == spec.name && s.1 == version),
                "no golden sample for {} v{version}: add one to samples()",
                spec.name
            );
        }
    }
    for (name, version, payload_bytes, expected) in samples {
        let spec = kind_by_name(name).unwrap();
        let env = envelope(spec.id, version, payload_bytes);
        let record = env.encode_record().unwrap();
        let stored = encode_stored(&record, &chain_hash(&env.prev_hash, &record));
        let path = golden_path(name, version);
        if bless {
            std::fs::write(&path, hex::encode(&stored) + "\n").unwrap();
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless with CON_BLESS=1)", path.display()));
        let golden = hex::decode(golden.trim()).unwrap();
        assert_eq!(
            hex::encode(&stored),
            hex::encode(&golden),
            "{name} v{version}: encoding changed; stored logs would no longer match"
        );
        let event = Event::from_stored(&golden).unwrap();
        assert_eq!(event.envelope, env, "{name} v{version}: envelope");
        assert_eq!(event.payload, expected, "{name} v{version}: payload");
        assert_eq!(event.hash, chain_hash(&env.prev_hash, &record));
    }
}

#[test]
fn registry_ids_names_and_message_ids_are_unique_and_well_formed() {
    let mut ids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    let mut msg_ids = std::collections::HashSet::new();
    for spec in KINDS {
        assert!(ids.insert(spec.id), "duplicate id {}", spec.id);
        assert!(names.insert(spec.name), "duplicate name {}", spec.name);
        assert!(msg_ids.insert(spec.message_id), "duplicate MESSAGE_ID");
        assert_eq!(spec.message_id.len(), 32, "{}", spec.name);
        assert!(
            spec.message_id
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert!(spec.version >= 1);
        assert_eq!(kind_by_id(spec.id), Some(*spec));
        assert_eq!(kind_by_name(&spec.journal_name()), Some(*spec));
    }
    // Ids are dense from 1 and in registry order, so a reordering of the
    // registry macro (which would not change ids) is still caught by review.
    let listed: Vec<u16> = KINDS.iter().map(|k| k.id).collect();
    let expected: Vec<u16> = (1..=KINDS.len() as u16).collect();
    assert_eq!(listed, expected);
}

#[test]
fn unknown_kind_version_and_format_are_errors_not_panics() {
    let env = envelope(999, 1, vec![]);
    let record = env.encode_record().unwrap();
    let stored = encode_stored(&record, &Digest::default());
    assert_eq!(
        Event::from_stored(&stored).unwrap_err(),
        DecodeError::UnknownKind(999)
    );
    let env = envelope(12, 9, vec![]);
    let stored = encode_stored(&env.encode_record().unwrap(), &Digest::default());
    assert!(matches!(
        Event::from_stored(&stored).unwrap_err(),
        DecodeError::UnknownVersion {
            kind: "agent.state",
            version: 9
        }
    ));
    let mut record = envelope(15, 1, vec![]).encode_record().unwrap();
    record[0] = 2;
    assert_eq!(
        Event::from_stored(&encode_stored(&record, &Digest::default())).unwrap_err(),
        DecodeError::UnknownFormat(2)
    );
}

#[test]
fn trailing_payload_bytes_are_rejected() {
    let mut payload = Payload::from(JournalMirrorRecovered { dropped: 1 })
        .encode()
        .unwrap();
    payload.push(0);
    let env = envelope(14, 1, payload);
    let stored = encode_stored(&env.encode_record().unwrap(), &Digest::default());
    assert!(matches!(
        Event::from_stored(&stored),
        Err(DecodeError::Malformed { .. })
    ));
}

/// bincode stores an enum variant as its index: inserting or reordering a
/// variant would silently re-label every stored value. Pin every variant of
/// every stored enum.
#[test]
fn stored_enum_variant_indexes_never_change() {
    fn index<T: serde::Serialize>(v: &T) -> u32 {
        let bytes = codec::encode(v).unwrap();
        u32::from_le_bytes(bytes[..4].try_into().unwrap())
    }
    let trust = [Trust::Verified, Trust::Unverified];
    let outcome = [
        Outcome::Ok,
        Outcome::MaxIterations,
        Outcome::Timeout,
        Outcome::Budget,
        Outcome::ProviderError,
        Outcome::RunnerError,
        Outcome::Killed,
    ];
    let check = [
        CheckStatus::Pass,
        CheckStatus::Fail,
        CheckStatus::Skipped,
        CheckStatus::Error,
        CheckStatus::Timeout,
    ];
    let condition = [
        AgentCondition::Active,
        AgentCondition::Halted,
        AgentCondition::Quarantined,
        AgentCondition::Decommissioned,
    ];
    assert_eq!(trust.iter().map(index).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        outcome.iter().map(index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6]
    );
    assert_eq!(check.iter().map(index).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(
        condition.iter().map(index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

#[test]
fn an_oversized_record_is_refused_at_encode_time() {
    let env = envelope(9, 1, vec![0u8; MAX_RECORD_BYTES as usize + 1]);
    assert_eq!(
        env.encode_record(),
        Err(EncodeError::TooLarge {
            limit: MAX_RECORD_BYTES
        })
    );
}
