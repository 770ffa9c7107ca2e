//! The ledger view: what `Request::Ledger` answers and the daily ledger
//! files hold, one entry per finished session. Accounting only: no prompt,
//! tool output or answer, and nothing that leads to one.

use con_event::SessionId;
use con_event::payloads::{Outcome, Trust};
use serde::{Deserialize, Serialize};

/// Which ledger entries a [`crate::Request::Ledger`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerQuery {
    /// Only sessions that ended at or after this time (nanoseconds since
    /// the Unix epoch).
    pub since_unix_nanos: Option<i64>,
    /// Only this agent's sessions.
    pub agent: Option<String>,
}

/// One finished session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When it ended, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The same time, nanoseconds since the Unix epoch.
    pub ended_unix_nanos: i64,
    /// The agent.
    pub agent: String,
    /// The model (`None`: no model was declared or called).
    pub model: Option<String>,
    /// The task it worked on (its file name), if any.
    pub task: Option<String>,
    /// Trust of the task.
    pub trust: Trust,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall-clock duration.
    pub duration_ms: u64,
    /// Cost of its model calls, millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// Model calls made in it.
    pub model_calls: u32,
    /// The session (hex in JSON).
    pub session: SessionId,
    /// Seq of its `session.ended`.
    pub seq: u64,
}

/// The header line of a ledger TSV file: the columns of
/// [`LedgerEntry::tsv_line`], named as the JSON fields are.
pub const LEDGER_TSV_HEADER: &str = "time\tagent\tmodel\ttask\ttrust\toutcome\tduration_ms\tcost_micro_usd\tmodel_calls\tsession\tseq";

impl LedgerEntry {
    /// The entry as one TSV line (no newline). A missing value is `-`; text
    /// goes through `escape_control`, so a task name an agent chose can
    /// neither add a column nor a line.
    pub fn tsv_line(&self) -> String {
        let text = |s: Option<&str>| match s {
            Some(s) => con_event::escape_control(s).into_owned(),
            None => "-".to_owned(),
        };
        [
            self.time.clone(),
            text(Some(&self.agent)),
            text(self.model.as_deref()),
            text(self.task.as_deref()),
            self.trust.as_str().to_owned(),
            self.outcome.as_str().to_owned(),
            self.duration_ms.to_string(),
            self.cost_micro_usd.to_string(),
            self.model_calls.to_string(),
            self.session.to_hex(),
            self.seq.to_string(),
        ]
        .join("\t")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tsv_line_has_one_column_per_header_field_whatever_the_task_name() {
        let entry = LedgerEntry {
            time: "2025-01-01T00:00:00.000Z".into(),
            ended_unix_nanos: 0,
            agent: "concierge".into(),
            model: None,
            task: Some("a\tb\nc.task".into()),
            trust: Trust::Verified,
            outcome: Outcome::Ok,
            duration_ms: 5,
            cost_micro_usd: 7,
            model_calls: 1,
            session: SessionId([1; 16]),
            seq: 9,
        };
        let line = entry.tsv_line();
        assert!(!line.contains('\n'));
        assert_eq!(
            line.split('\t').count(),
            LEDGER_TSV_HEADER.split('\t').count()
        );
        assert!(line.contains("\t-\ta\\tb\\nc.task\tverified\tok\t5\t7\t1\t"));
    }
}
