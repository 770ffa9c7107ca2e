//! What `FleetStatus` folds each kind of event into.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use con_event::payloads::*;
use con_event::*;
use con_projection::{FleetStatus, Projection};

const DAY: i64 = 86_400 * 1_000_000_000;

fn fold(events: Vec<(i64, Option<u8>, Payload)>) -> FleetStatus {
    let mut state = FleetStatus::default();
    for (i, (ts, session, payload)) in events.into_iter().enumerate() {
        let spec = payload.spec();
        let event = Event {
            envelope: Envelope {
                seq: i as u64 + 1,
                id: EventId::default(),
                ts_unix_nanos: ts,
                actor: Actor::system(),
                session: session.map(|s| SessionId([s; 16])),
                task: None,
                causation: None,
                kind: spec.id,
                kind_version: spec.version,
                payload: payload.encode().unwrap(),
                prev_hash: Digest::default(),
            },
            payload,
            hash: Digest::default(),
        };
        state.apply(&event);
    }
    state
}

fn arrived(inbox: &str) -> Payload {
    InboxArrived {
        inbox: inbox.into(),
        path: format!("/srv/con/agents/{inbox}/inbox/t.task"),
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
        content: BlobRef::of(b"x"),
    }
    .into()
}

fn routed(from: &str, to: &str) -> Payload {
    TaskRouted {
        from: from.into(),
        to: to.into(),
        path: "/p".into(),
    }
    .into()
}

fn cost(agent: &str, micro_usd: u64) -> Payload {
    LlmResponse {
        agent: agent.into(),
        provider: "openrouter".into(),
        model: "m".into(),
        status: Some(200),
        attempts: 1,
        latency_ms: 1,
        input_tokens: 1,
        output_tokens: 1,
        cost_micro_usd: micro_usd,
        response: None,
        error: None,
    }
    .into()
}

#[test]
fn inbox_depth_counts_tasks_not_responses() {
    let s = fold(vec![
        (0, None, arrived("sysadmin")),
        (0, None, arrived("sysadmin")),
        (0, None, routed("sysadmin", TaskRouted::OUTBOX)),
        (0, None, routed("sysadmin", "processed")),
        (0, None, routed("outer", "concierge")),
    ]);
    assert_eq!(s.agents["sysadmin"].inbox_depth, 1);
    assert_eq!(s.agents["outer"].inbox_depth, 0, "never below zero");
    assert_eq!(s.through_seq, 5);
}

#[test]
fn sessions_open_and_close_with_their_outcome() {
    let started = |a: &str| -> Payload {
        SessionStarted {
            agent: a.into(),
            runner: "builtin".into(),
            provider: None,
            model: None,
            trust: Trust::Verified,
            prompt: BlobRef::of(b"p"),
        }
        .into()
    };
    let ended = |a: &str, outcome| -> Payload {
        SessionEnded {
            agent: a.into(),
            outcome,
            iterations: 1,
            duration_ms: 1,
            response: None,
            detail: String::new(),
        }
        .into()
    };
    let s = fold(vec![
        (0, Some(1), started("sysadmin")),
        (0, Some(2), started("sysadmin")),
        (0, Some(1), ended("sysadmin", Outcome::Timeout)),
    ]);
    let a = &s.agents["sysadmin"];
    assert_eq!(a.running_sessions, 1);
    assert_eq!(a.sessions_total, 2);
    assert_eq!(a.last_outcome, Some(Outcome::Timeout));
}

#[test]
fn spend_is_per_agent_per_utc_day_and_saturates() {
    let s = fold(vec![
        (DAY * 3 + 5, None, cost("scout", 700)),
        (DAY * 3 + 10, None, cost("scout", 300)),
        (DAY * 4, None, cost("scout", 1)),
        (DAY * 4, None, cost("sysadmin", u64::MAX)),
        (DAY * 4, None, cost("sysadmin", 10)),
    ]);
    let scout = &s.agents["scout"].spend_micro_usd_by_day;
    assert_eq!(scout[&3], 1000);
    assert_eq!(scout[&4], 1);
    assert_eq!(s.agents["sysadmin"].spend_micro_usd_by_day[&4], u64::MAX);
}

#[test]
fn last_contract_result_and_agent_condition_win() {
    let check = |status| -> Payload {
        ContractResult {
            contract: "CON-SYS-001".into(),
            check: "disk".into(),
            scope_agent: None,
            status,
            detail: String::new(),
            duration_ms: 1,
        }
        .into()
    };
    let condition = |c| -> Payload {
        AgentState {
            agent: "scout".into(),
            condition: c,
            reason: String::new(),
        }
        .into()
    };
    let s = fold(vec![
        (0, None, check(CheckStatus::Fail)),
        (0, None, condition(AgentCondition::Quarantined)),
        (0, None, check(CheckStatus::Pass)),
    ]);
    assert_eq!(s.checks["CON-SYS-001/disk"].status, CheckStatus::Pass);
    assert_eq!(s.checks["CON-SYS-001/disk"].seq, 3);
    assert_eq!(s.agents["scout"].condition, AgentCondition::Quarantined);
}

/// Like [`fold`], each event with the seq of its cause.
fn fold_caused(events: Vec<(Option<u64>, Payload)>) -> FleetStatus {
    let mut state = FleetStatus::default();
    for (i, (causation, payload)) in events.into_iter().enumerate() {
        let spec = payload.spec();
        state.apply(&Event {
            envelope: Envelope {
                seq: i as u64 + 1,
                id: EventId::default(),
                ts_unix_nanos: 0,
                actor: Actor::system(),
                session: None,
                task: None,
                causation,
                kind: spec.id,
                kind_version: spec.version,
                payload: payload.encode().unwrap(),
                prev_hash: Digest::default(),
            },
            payload,
            hash: Digest::default(),
        });
    }
    state
}

fn done(action: &str, target: &str, agents: &[&str], removed: &[&str]) -> Payload {
    EnforcementDone {
        contract: "operator".into(),
        action: action.into(),
        target: Some(target.into()),
        ok: true,
        detail: String::new(),
        agents: agents.iter().map(|a| (*a).to_owned()).collect(),
        pids: vec![1],
        paths: Vec::new(),
        acl_removed: removed
            .iter()
            .map(|e| AclGrant {
                path: "/srv/con/agents/scout/inbox".into(),
                default: false,
                entry: (*e).to_owned(),
            })
            .collect(),
    }
    .into()
}

#[test]
fn an_alert_lasts_until_its_check_passes() {
    let result = |status| -> Payload {
        ContractResult {
            contract: "C".into(),
            check: "disk".into(),
            scope_agent: None,
            status,
            detail: "8%".into(),
            duration_ms: 1,
        }
        .into()
    };
    let alert = || -> Payload {
        EnforcementAction {
            contract: "C".into(),
            action: "alert".into(),
            target: None,
            reason: "low disk".into(),
        }
        .into()
    };
    let s = fold_caused(vec![
        (None, result(CheckStatus::Fail)),
        (Some(1), alert()),
        (None, result(CheckStatus::Fail)),
        (Some(3), alert()),
    ]);
    let a = &s.alerts["C/disk"];
    assert_eq!((a.since_seq, a.seq, a.message.as_str()), (2, 4, "low disk"));
    let s = fold_caused(vec![
        (None, result(CheckStatus::Fail)),
        (Some(1), alert()),
        (None, result(CheckStatus::Skipped)),
    ]);
    assert!(s.alerts.contains_key("C/disk"), "skipped is not holding");
    let s = fold_caused(vec![
        (None, result(CheckStatus::Fail)),
        (Some(1), alert()),
        (None, result(CheckStatus::Pass)),
    ]);
    assert!(s.alerts.is_empty());
}

#[test]
fn a_quarantine_keeps_what_it_removed_until_resumed_and_a_kill_ends_sessions() {
    let started: Payload = SessionStarted {
        agent: "scout".into(),
        runner: "builtin".into(),
        provider: None,
        model: None,
        trust: Trust::Verified,
        prompt: BlobRef::of(b"p"),
    }
    .into();
    let s = fold_caused(vec![
        (None, started.clone()),
        (
            None,
            done("quarantine", "scout", &["scout"], &["user:a-x:rwx"]),
        ),
        // A second quarantine removes nothing more and forgets nothing.
        (None, done("quarantine", "scout", &[], &[])),
    ]);
    let scout = &s.agents["scout"];
    assert_eq!(scout.running_sessions, 0, "every process was killed");
    assert_eq!(scout.acl_removed.len(), 1);
    assert_eq!(scout.acl_removed[0].entry, "user:a-x:rwx");
    let s = fold_caused(vec![
        (
            None,
            done("quarantine", "scout", &["scout"], &["user:a-x:rwx"]),
        ),
        (None, done("resume", "scout", &["scout"], &[])),
        (None, started.clone()),
        (None, done("kill_session", "scout", &[], &[])),
    ]);
    assert!(s.agents["scout"].acl_removed.is_empty());
    assert_eq!(s.agents["scout"].running_sessions, 0);
}

fn task_failed(agent: &str, path: &str) -> Payload {
    TaskFailed {
        agent: agent.into(),
        path: path.into(),
        reason: "2 sessions of it failed".into(),
        attempts: 2,
    }
    .into()
}

#[test]
fn a_failed_task_is_kept_and_marked_escalated_by_the_action_it_caused() {
    let escalate = || -> Payload {
        EnforcementAction {
            contract: "task.failed".into(),
            action: "escalate".into(),
            target: Some("ops".into()),
            reason: "set aside".into(),
        }
        .into()
    };
    let s = fold_caused(vec![
        (None, task_failed("scribe", "/f/a.task")),
        (None, task_failed("scribe", "/f/b.task")),
        (Some(1), escalate()),
        // Another action naming the same cause does not move the mark.
        (Some(1), escalate()),
    ]);
    assert_eq!(s.failed_tasks.len(), 2);
    assert_eq!(s.failed_tasks[&1].escalated, Some(3));
    assert_eq!(s.failed_tasks[&1].path, "/f/a.task");
    assert_eq!(s.failed_tasks[&1].attempts, 2);
    assert_eq!(s.failed_tasks[&2].escalated, None);
    assert_eq!(s.agents["scribe"].last_seq, 2);
}

#[test]
fn failed_tasks_kept_are_bounded_to_the_newest() {
    let n = con_projection::MAX_FAILED_TASKS + 10;
    let s = fold_caused(
        (0..n)
            .map(|i| (None, task_failed("scribe", &format!("/f/{i}.task"))))
            .collect(),
    );
    assert_eq!(s.failed_tasks.len(), con_projection::MAX_FAILED_TASKS);
    assert_eq!(*s.failed_tasks.keys().next().unwrap(), 11);
}

#[test]
fn the_last_session_end_keeps_its_reason() {
    let ended = |outcome, detail: &str| -> Payload {
        SessionEnded {
            agent: "scribe".into(),
            outcome,
            iterations: 1,
            duration_ms: 5,
            response: None,
            detail: detail.into(),
        }
        .into()
    };
    let s = fold(vec![
        (0, Some(1), ended(Outcome::Ok, "")),
        (0, Some(2), ended(Outcome::ProviderError, "HTTP 400")),
    ]);
    let end = s.agents["scribe"].last_end.clone().unwrap();
    assert_eq!(end.outcome, Outcome::ProviderError);
    assert_eq!(end.detail, "HTTP 400");
    assert_eq!(end.session, Some(SessionId([2; 16])));
    assert_eq!(end.seq, 2);
}
