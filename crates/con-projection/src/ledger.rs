//! `Ledger`: one row per finished session (what `con ledger` and the daily
//! ledger files show). Rows carry who, what model, which task, how it
//! ended, how long it took and what it cost; never what was said.

use std::collections::BTreeMap;

use con_event::payloads::{Outcome, Trust};
use con_event::{Event, Payload, SessionId};
use serde::{Deserialize, Serialize};

use crate::Projection;

/// One finished session: the unit of work the ledger accounts for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// Seq of its `session.ended`.
    pub seq: u64,
    /// When it ended, nanoseconds since the Unix epoch (the record's time).
    pub ended_unix_nanos: i64,
    /// The agent.
    pub agent: String,
    /// The session.
    pub session: SessionId,
    /// The task it worked on, if any.
    pub task: Option<String>,
    /// The model: as the session declared it, else the last one the gateway
    /// answered with; `None` for a session without either (set aside, exec
    /// runner).
    pub model: Option<String>,
    /// Trust of the task.
    pub trust: Trust,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall-clock duration as the run recorded it.
    pub duration_ms: u64,
    /// Sum of the recorded cost of its model calls, millionths of a USD.
    pub cost_micro_usd: u64,
    /// Model calls answered (or failed) in it.
    pub model_calls: u32,
}

/// A session started and not yet ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    /// The agent.
    pub agent: String,
    /// Task from the `session.started` envelope.
    pub task: Option<String>,
    /// Model the session declared.
    pub model: Option<String>,
    /// Last model the gateway answered with.
    pub answered_model: Option<String>,
    /// Trust of the task.
    pub trust: Trust,
    /// Cost so far.
    pub cost_micro_usd: u64,
    /// Model calls so far.
    pub model_calls: u32,
}

/// Finished sessions in the order they ended, folded from `session.started`,
/// `llm.response` and `session.ended`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Sessions still running (or whose run died without ending them).
    pub open: BTreeMap<SessionId, OpenSession>,
    /// Finished sessions, by seq of their end.
    pub rows: Vec<LedgerRow>,
    /// Seq of the last event applied.
    pub through_seq: u64,
}

impl Ledger {
    /// Rows that ended at or after `since` (nanoseconds since the epoch),
    /// of `agent` if given, in the order they ended.
    pub fn select<'a>(
        &'a self,
        since: Option<i64>,
        agent: Option<&'a str>,
    ) -> impl Iterator<Item = &'a LedgerRow> + 'a {
        // Rows are in seq order, and the writer stamps times in seq order
        // only as far as the clock goes forward: filter, do not bisect.
        self.rows.iter().filter(move |r| {
            since.is_none_or(|s| r.ended_unix_nanos >= s) && agent.is_none_or(|a| r.agent == a)
        })
    }

    /// Rows that ended on UTC day `day` (see [`crate::utc_day`]).
    pub fn day(&self, day: i64) -> impl Iterator<Item = &LedgerRow> {
        self.rows
            .iter()
            .filter(move |r| crate::utc_day(r.ended_unix_nanos) == day)
    }
}

impl Projection for Ledger {
    const NAME: &'static str = "ledger";
    const VERSION: u32 = 1;

    fn apply(&mut self, event: &Event) {
        self.through_seq = event.seq();
        let Some(session) = event.envelope.session else {
            return;
        };
        match &event.payload {
            Payload::SessionStarted(p) => {
                self.open.insert(
                    session,
                    OpenSession {
                        agent: p.agent.clone(),
                        task: event.envelope.task.clone(),
                        model: p.model.clone(),
                        answered_model: None,
                        trust: p.trust,
                        cost_micro_usd: 0,
                        model_calls: 0,
                    },
                );
            }
            Payload::LlmResponse(p) => {
                if let Some(open) = self.open.get_mut(&session) {
                    // Provider-reported usage must not wrap the sum.
                    open.cost_micro_usd = open.cost_micro_usd.saturating_add(p.cost_micro_usd);
                    open.model_calls = open.model_calls.saturating_add(1);
                    open.answered_model = Some(p.model.clone());
                }
            }
            Payload::SessionEnded(p) => {
                // An end without a recorded start (the daemon refuses those)
                // has nothing to account for.
                let Some(open) = self.open.remove(&session) else {
                    return;
                };
                self.rows.push(LedgerRow {
                    seq: event.seq(),
                    ended_unix_nanos: event.envelope.ts_unix_nanos,
                    agent: open.agent,
                    session,
                    task: open.task.or_else(|| event.envelope.task.clone()),
                    model: open.model.or(open.answered_model),
                    trust: open.trust,
                    outcome: p.outcome,
                    duration_ms: p.duration_ms,
                    cost_micro_usd: open.cost_micro_usd,
                    model_calls: open.model_calls,
                });
            }
            _ => {}
        }
    }
}

/// `YYYY-MM-DD` of UTC day `day` (days since the Unix epoch): the name of
/// that day's ledger file.
pub fn utc_date(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 UTC time with milliseconds (`2025-01-31T08:00:00.123Z`).
pub fn rfc3339_utc(unix_nanos: i64) -> String {
    let day = crate::utc_day(unix_nanos);
    let in_day = unix_nanos - day * 86_400 * 1_000_000_000;
    let ms = in_day / 1_000_000;
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    format!("{}T{h:02}:{min:02}:{s:02}.{ms:03}Z", utc_date(day))
}

/// The proleptic Gregorian date of a day count (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // d is in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(19_723), "2024-01-01");
        assert_eq!(utc_date(19_782), "2024-02-29");
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_utc(1_706_745_600_123_000_000 + 3_723_000_000_000),
            "2024-02-01T01:02:03.123Z"
        );
        assert_eq!(rfc3339_utc(-1_000_000), "1969-12-31T23:59:59.999Z");
    }
}
