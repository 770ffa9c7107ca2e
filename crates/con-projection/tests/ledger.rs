//! What `Ledger` folds: one row per ended session, its model calls' cost
//! summed, nothing of what was said.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use con_event::payloads::*;
use con_event::*;
use con_projection::{Ledger, Projection};

const DAY: i64 = 86_400 * 1_000_000_000;

fn event(seq: u64, ts: i64, session: u8, task: Option<&str>, payload: Payload) -> Event {
    let spec = payload.spec();
    Event {
        envelope: Envelope {
            seq,
            id: EventId::default(),
            ts_unix_nanos: ts,
            actor: Actor::system(),
            session: Some(SessionId([session; 16])),
            task: task.map(str::to_owned),
            causation: None,
            kind: spec.id,
            kind_version: spec.version,
            payload: payload.encode().unwrap(),
            prev_hash: Digest::default(),
        },
        payload,
        hash: Digest::default(),
    }
}

fn started(agent: &str, model: Option<&str>, trust: Trust) -> Payload {
    SessionStarted {
        agent: agent.into(),
        runner: "builtin".into(),
        provider: None,
        model: model.map(str::to_owned),
        trust,
        prompt: BlobRef::of(b"secret prompt"),
    }
    .into()
}

fn response(agent: &str, model: &str, micro_usd: u64) -> Payload {
    LlmResponse {
        agent: agent.into(),
        provider: "openrouter".into(),
        model: model.into(),
        status: Some(200),
        attempts: 1,
        latency_ms: 1,
        input_tokens: 1,
        output_tokens: 1,
        cost_micro_usd: micro_usd,
        response: Some(BlobRef::of(b"secret answer")),
        error: None,
    }
    .into()
}

fn ended(agent: &str, outcome: Outcome, duration_ms: u64) -> Payload {
    SessionEnded {
        agent: agent.into(),
        outcome,
        iterations: 2,
        duration_ms,
        response: Some(BlobRef::of(b"secret answer")),
        detail: String::new(),
    }
    .into()
}

fn sample() -> Vec<Event> {
    vec![
        event(
            1,
            DAY,
            1,
            Some("t-1"),
            started("concierge", None, Trust::Verified),
        ),
        event(
            2,
            DAY + 1,
            2,
            Some("t-2"),
            started("scribe", Some("cheap"), Trust::Unverified),
        ),
        event(
            3,
            DAY + 2,
            1,
            Some("t-1"),
            response("concierge", "big", 700),
        ),
        event(
            4,
            DAY + 3,
            1,
            Some("t-1"),
            response("concierge", "big", u64::MAX),
        ),
        event(5, DAY + 4, 2, Some("t-2"), response("scribe", "cheap", 5)),
        event(
            6,
            DAY * 2,
            1,
            Some("t-1"),
            ended("concierge", Outcome::Ok, 1500),
        ),
        // An end without a start: nothing to account for.
        event(7, DAY * 2, 9, None, ended("ghost", Outcome::Ok, 1)),
    ]
}

#[test]
fn one_row_per_ended_session_with_its_calls_summed() {
    let mut ledger = Ledger::default();
    for e in &sample() {
        ledger.apply(e);
    }
    assert_eq!(ledger.through_seq, 7);
    assert_eq!(ledger.rows.len(), 1);
    let row = &ledger.rows[0];
    assert_eq!(row.seq, 6);
    assert_eq!(row.ended_unix_nanos, DAY * 2);
    assert_eq!(row.agent, "concierge");
    assert_eq!(row.session, SessionId([1; 16]));
    assert_eq!(row.task.as_deref(), Some("t-1"));
    assert_eq!(row.model.as_deref(), Some("big"), "the model that answered");
    assert_eq!(row.trust, Trust::Verified);
    assert_eq!(row.outcome, Outcome::Ok);
    assert_eq!(row.duration_ms, 1500);
    assert_eq!(row.cost_micro_usd, u64::MAX, "saturates");
    assert_eq!(row.model_calls, 2);
    // The scribe's session is still open.
    assert_eq!(ledger.open.len(), 1);
    assert_eq!(ledger.open[&SessionId([2; 16])].cost_micro_usd, 5);

    assert_eq!(ledger.select(None, Some("scribe")).count(), 0);
    assert_eq!(ledger.select(Some(DAY * 2 + 1), None).count(), 0);
    assert_eq!(ledger.select(Some(DAY * 2), Some("concierge")).count(), 1);
    assert_eq!(ledger.day(2).count(), 1);
    assert_eq!(ledger.day(1).count(), 0);
}

#[test]
fn resuming_from_any_point_equals_folding_from_the_start() {
    let events = sample();
    let mut whole = Ledger::default();
    for e in &events {
        whole.apply(e);
    }
    for cut in 0..events.len() {
        let mut first = Ledger::default();
        for e in &events[..cut] {
            first.apply(e);
        }
        // What a checkpoint stores and gives back.
        let bytes = con_event::codec::encode_with_limit(&first, 1 << 20).unwrap();
        let mut resumed: Ledger =
            con_event::codec::decode_with_limit("ledger", &bytes, 1 << 20).unwrap();
        for e in &events[cut..] {
            resumed.apply(e);
        }
        assert_eq!(resumed, whole, "cut at {cut}");
    }
}

#[test]
fn a_row_carries_no_content() {
    let mut ledger = Ledger::default();
    for e in &sample() {
        ledger.apply(e);
    }
    let text = format!("{ledger:?}");
    assert!(!text.contains("secret"), "{text}");
    let encoded = con_event::codec::encode_with_limit(&ledger, 1 << 20).unwrap();
    assert!(!encoded.windows(6).any(|w| w == b"secret"));
}
