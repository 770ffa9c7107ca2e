//! An agent's sessions, summarised.

use std::collections::BTreeMap;

use con_event::payloads::Outcome;
use con_event::{Event, Payload, SessionId};

/// One session in a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub session: SessionId,
    /// The agent.
    pub agent: String,
    /// Its task.
    pub task: Option<String>,
    /// Seq of `session.started`.
    pub start_seq: u64,
    /// When it started (ns since the epoch).
    pub started_at: i64,
    /// How long it ran, if it ended (from the records' times).
    pub duration_nanos: Option<i64>,
    /// How it ended, if it did.
    pub outcome: Option<Outcome>,
    /// Model calls.
    pub model_calls: u32,
    /// Cost of those calls, micro-USD.
    pub cost_micro_usd: u64,
}

/// The sessions started in `events` whose start lies in `[since, until)`
/// (ns since the epoch; `None`: unbounded), oldest first, each summarised
/// from the events of it that `events` holds. If `agent` is given, only
/// that agent's.
pub fn sessions(
    events: &[Event],
    agent: Option<&str>,
    since: Option<i64>,
    until: Option<i64>,
) -> Vec<SessionSummary> {
    let mut by_session: BTreeMap<SessionId, SessionSummary> = BTreeMap::new();
    for e in events {
        let Some(id) = e.envelope.session else {
            continue;
        };
        match &e.payload {
            Payload::SessionStarted(p) => {
                if agent.is_some_and(|a| a != p.agent) {
                    continue;
                }
                let at = e.envelope.ts_unix_nanos;
                if since.is_some_and(|s| at < s) || until.is_some_and(|u| at >= u) {
                    continue;
                }
                by_session.insert(
                    id,
                    SessionSummary {
                        session: id,
                        agent: p.agent.clone(),
                        task: e.envelope.task.clone(),
                        start_seq: e.seq(),
                        started_at: at,
                        duration_nanos: None,
                        outcome: None,
                        model_calls: 0,
                        cost_micro_usd: 0,
                    },
                );
            }
            Payload::LlmResponse(r) => {
                if let Some(s) = by_session.get_mut(&id) {
                    s.model_calls += 1;
                    s.cost_micro_usd += r.cost_micro_usd;
                }
            }
            Payload::SessionEnded(p) => {
                if let Some(s) = by_session.get_mut(&id) {
                    s.outcome = Some(p.outcome);
                    s.duration_nanos = Some(e.envelope.ts_unix_nanos - s.started_at);
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<SessionSummary> = by_session.into_values().collect();
    out.sort_by_key(|s| s.start_seq);
    out
}
