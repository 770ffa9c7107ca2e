//! Projections: resuming from checkpoints equals rebuilding from scratch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use con_event::payloads::*;
use con_event::*;
use con_projection::{FleetStatus, Projection};
use con_store::*;
use proptest::prelude::*;

const AGENTS: [&str; 3] = ["concierge", "sysadmin", "scout"];

fn arb_event() -> impl Strategy<Value = NewEvent> {
    let agent = proptest::sample::select(AGENTS.to_vec());
    let session = (0u8..4).prop_map(|s| SessionId([s; 16]));
    prop_oneof![
        agent.clone().prop_map(|a| NewEvent::system(InboxArrived {
            inbox: a.into(),
            path: "/x.task".into(),
            owner_uid: 0,
            owner_gid: 0,
            mode: 0o100600,
            nlink: 1,
            dev: 0,
            inode: 0,
            ctime_unix_nanos: 0,
            symlink: false,
            trust: Trust::Verified,
            trust_reason: "owner uid 0".into(),
            content: BlobRef::of(b"t"),
        })),
        (
            agent.clone(),
            proptest::sample::select(vec!["processed", "outbox", "sysadmin"])
        )
            .prop_map(|(a, to)| NewEvent::system(TaskRouted {
                from: a.into(),
                to: to.into(),
                path: "/y".into(),
            })),
        (agent.clone(), session.clone()).prop_map(|(a, s)| NewEvent {
            session: Some(s),
            ..NewEvent::system(SessionStarted {
                agent: a.into(),
                runner: "builtin".into(),
                provider: None,
                model: None,
                trust: Trust::Verified,
                prompt: BlobRef::of(b"p"),
            })
        }),
        (agent.clone(), session.clone(), 0usize..3).prop_map(|(a, s, o)| NewEvent {
            session: Some(s),
            ..NewEvent::system(SessionEnded {
                agent: a.into(),
                outcome: [Outcome::Ok, Outcome::Timeout, Outcome::Budget][o],
                iterations: 1,
                duration_ms: 5,
                response: None,
                detail: String::new(),
            })
        }),
        (agent.clone(), session, 0u64..5000).prop_map(|(a, s, cost)| NewEvent {
            session: Some(s),
            ..NewEvent::system(LlmResponse {
                agent: a.into(),
                provider: "openrouter".into(),
                model: "m".into(),
                status: Some(200),
                attempts: 1,
                latency_ms: 1,
                input_tokens: 10,
                output_tokens: 10,
                cost_micro_usd: cost,
                response: None,
                error: None,
            })
        }),
        (agent.clone(), 0usize..3).prop_map(|(a, c)| NewEvent::system(AgentState {
            agent: a.into(),
            condition: [
                AgentCondition::Active,
                AgentCondition::Halted,
                AgentCondition::Quarantined
            ][c],
            reason: "test".into(),
        })),
        (0usize..2, 0usize..3).prop_map(|(c, s)| NewEvent::system(ContractResult {
            contract: format!("CON-SYS-00{c}"),
            check: "c".into(),
            scope_agent: None,
            status: [CheckStatus::Pass, CheckStatus::Fail, CheckStatus::Skipped][s],
            detail: String::new(),
            duration_ms: 1,
        })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Events are appended in chunks; after each chunk the projection is read
    /// incrementally (from the stored checkpoint). At the end it must equal a
    /// rebuild from seq 1, and a fresh fold of the events in memory.
    #[test]
    fn incremental_projection_equals_rebuild(
        chunks in proptest::collection::vec(proptest::collection::vec(arb_event(), 0..25), 1..8)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("log")).unwrap();
        let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
        let app = writer.appender();
        let mut incremental = FleetStatus::default();
        for chunk in chunks {
            for e in chunk {
                app.append(e).unwrap();
            }
            incremental = store.project::<FleetStatus>().unwrap();
        }
        writer.shutdown().unwrap();
        let rebuilt = store.rebuild::<FleetStatus>().unwrap();
        prop_assert_eq!(&incremental, &rebuilt);
        let mut in_memory = FleetStatus::default();
        for e in store.events_from(1) {
            in_memory.apply(&e.unwrap());
        }
        prop_assert_eq!(&in_memory, &rebuilt);
        prop_assert_eq!(rebuilt.through_seq, store.head().seq);
    }
}

fn halt(app: &Appender, agent: &str) {
    app.append(NewEvent::system(AgentState {
        agent: agent.into(),
        condition: AgentCondition::Halted,
        reason: String::new(),
    }))
    .unwrap();
}

/// A log restored from an older backup and then grown again must not be
/// folded on top of a checkpoint taken from the log it replaced.
#[test]
fn a_checkpoint_from_a_replaced_log_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let store = Store::open(&path).unwrap();
        let writer =
            GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
        for _ in 0..5 {
            halt(&writer.appender(), "scout");
        }
        writer.shutdown().unwrap();
        let state = store.project::<FleetStatus>().unwrap();
        assert_eq!(state.agents["scout"].condition, AgentCondition::Halted);
        assert_eq!(state.through_seq, 5);
        // Roll back to seq 2, as restoring an older copy would.
        for seq in 3u64..=5 {
            store.raw_log().remove(seq.to_be_bytes()).unwrap();
        }
        store.flush().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.project::<FleetStatus>().unwrap().through_seq, 2);
    // The log grows past the old checkpoint's seq with different events.
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    for _ in 0..4 {
        halt(&writer.appender(), "other");
    }
    writer.shutdown().unwrap();
    let incremental = store.project::<FleetStatus>().unwrap();
    let rebuilt = store.rebuild::<FleetStatus>().unwrap();
    assert_eq!(incremental, rebuilt);
    assert_eq!(rebuilt.through_seq, 6);
    assert_eq!(rebuilt.agents["scout"].last_seq, 2);
    assert_eq!(rebuilt.agents["other"].last_seq, 6);
}
