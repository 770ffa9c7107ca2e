//! The decision after a check ran (pure): which outcome an exit means,
//! whether a result starts, continues or ends a failure, and what a failing
//! check asks for. The same fold serves the daemon (seeded from the log) and
//! `con contracts list` (reading the log), so both tell the same story.

use std::collections::BTreeMap;

use con_event::payloads::CheckStatus;
use serde::{Deserialize, Serialize};

use crate::model::{Action, Check, OnFail};

/// The outcome of a finished probe: `timed_out` wins (the group was killed,
/// whatever its exit code); exit 0 passes, exit 1 fails, and any other
/// exit (a shell syntax error, a missing command, a signal) means the
/// check could not be evaluated.
pub fn outcome_of_exit(exit_code: i32, timed_out: bool) -> CheckStatus {
    match (timed_out, exit_code) {
        (true, _) => CheckStatus::Timeout,
        (false, 0) => CheckStatus::Pass,
        (false, 1) => CheckStatus::Fail,
        (false, _) => CheckStatus::Error,
    }
}

/// Whether a status counts as the check not holding.
pub fn is_failure(status: CheckStatus) -> bool {
    matches!(
        status,
        CheckStatus::Fail | CheckStatus::Error | CheckStatus::Timeout
    )
}

/// How one result changes a check's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Failing now, and it was not (or had no result yet).
    StartedFailing,
    /// Failing, as it already was.
    StillFailing,
    /// Holding again after failing.
    Resolved,
    /// Holding, as it was (or its first result).
    StillPassing,
    /// Skipped: the state stays as it was.
    Unchanged,
}

/// What the daemon is to do about one result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The check's `on_fail` action, on every failing result: the actions
    /// are meant to be idempotent (halting halted agents does nothing) and
    /// a check that keeps failing keeps needing them (a new over-long
    /// session).
    pub action: Option<Action>,
    /// The agent to tell, only when the check starts failing: once per
    /// incident, not once per evaluation.
    pub escalate: Option<String>,
}

/// The decision for `check` after `transition`.
pub fn decide(check: &Check, transition: Transition) -> Decision {
    decide_on_fail(check.on_fail.as_ref(), transition)
}

/// The decision for a check whose `on_fail` is `on_fail` after
/// `transition`: what [`decide`] says of a contract file's check, and what
/// the daemon's built-in checks (which have no file) are decided by.
pub fn decide_on_fail(on_fail: Option<&OnFail>, transition: Transition) -> Decision {
    let failing = matches!(
        transition,
        Transition::StartedFailing | Transition::StillFailing
    );
    Decision {
        action: on_fail.filter(|_| failing).map(|o| o.action),
        escalate: on_fail
            .filter(|_| transition == Transition::StartedFailing)
            .and_then(|o| o.escalate.clone()),
    }
}

/// Which check a result is about: contract id, check name, scope agent.
pub type CheckKey = (String, String, Option<String>);

/// One check's state, as its results tell it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    /// The last result's status (skipped included).
    pub last: CheckStatus,
    /// The last result's seq.
    pub last_seq: u64,
    /// The last result's time (Unix nanoseconds).
    pub last_time: i64,
    /// The last result's output or reason.
    pub last_detail: String,
    /// When the current failure began (seq, Unix nanoseconds), if failing.
    pub failing_since: Option<(u64, i64)>,
}

/// Every check's state: a fold over `contract.result` events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStates {
    /// State per check.
    pub checks: BTreeMap<CheckKey, CheckState>,
}

impl CheckStates {
    /// Folds in one result; returns the transition it makes.
    pub fn observe(
        &mut self,
        key: CheckKey,
        status: CheckStatus,
        seq: u64,
        time: i64,
        detail: &str,
    ) -> Transition {
        let previous = self.checks.get(&key);
        let was_failing = previous.is_some_and(|s| s.failing_since.is_some());
        let transition = match (status, is_failure(status), was_failing) {
            (CheckStatus::Skipped, _, _) => Transition::Unchanged,
            (_, true, false) => Transition::StartedFailing,
            (_, true, true) => Transition::StillFailing,
            (_, false, true) => Transition::Resolved,
            (_, false, false) => Transition::StillPassing,
        };
        let failing_since = match transition {
            Transition::StartedFailing => Some((seq, time)),
            Transition::StillFailing | Transition::Unchanged => {
                previous.and_then(|s| s.failing_since)
            }
            Transition::Resolved | Transition::StillPassing => None,
        };
        self.checks.insert(
            key,
            CheckState {
                last: status,
                last_seq: seq,
                last_time: time,
                last_detail: detail.to_owned(),
                failing_since,
            },
        );
        transition
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{OnFail, Probe};

    fn check(on_fail: Option<OnFail>) -> Check {
        Check {
            name: "c".into(),
            probe: Probe::Script { path: "x".into() },
            timeout: Duration::from_secs(1),
            on_fail,
        }
    }

    #[test]
    fn exits_map_to_outcomes_without_conflating_them() {
        assert_eq!(outcome_of_exit(0, false), CheckStatus::Pass);
        assert_eq!(outcome_of_exit(1, false), CheckStatus::Fail);
        assert_eq!(outcome_of_exit(2, false), CheckStatus::Error);
        assert_eq!(outcome_of_exit(127, false), CheckStatus::Error);
        assert_eq!(outcome_of_exit(137, true), CheckStatus::Timeout);
        assert_eq!(outcome_of_exit(0, true), CheckStatus::Timeout);
        assert!(!is_failure(CheckStatus::Skipped));
        assert!(is_failure(CheckStatus::Error));
    }

    #[test]
    fn escalation_happens_once_per_incident() {
        let key = || ("C".to_owned(), "c".to_owned(), None);
        let mut s = CheckStates::default();
        let seq = [
            (CheckStatus::Pass, Transition::StillPassing),
            (CheckStatus::Fail, Transition::StartedFailing),
            (CheckStatus::Timeout, Transition::StillFailing),
            (CheckStatus::Skipped, Transition::Unchanged),
            (CheckStatus::Error, Transition::StillFailing),
            (CheckStatus::Pass, Transition::Resolved),
            (CheckStatus::Skipped, Transition::Unchanged),
            (CheckStatus::Fail, Transition::StartedFailing),
        ];
        let c = check(Some(OnFail {
            action: Action::HaltAgents,
            escalate: Some("sysadmin".into()),
            message: None,
        }));
        let mut escalations = 0;
        for (i, (status, want)) in seq.into_iter().enumerate() {
            let n = i as u64 + 1;
            let t = s.observe(key(), status, n, n as i64 * 10, "d");
            assert_eq!(t, want, "result {n}");
            let d = decide(&c, t);
            assert_eq!(d.action.is_some(), is_failure(status), "result {n}");
            escalations += usize::from(d.escalate.is_some());
        }
        assert_eq!(escalations, 2);
        // The failure that began at seq 8 is the one in progress.
        assert_eq!(s.checks[&key()].failing_since, Some((8, 80)));
    }

    #[test]
    fn skipped_keeps_a_failure_open_and_a_first_failure_starts_one() {
        let mut s = CheckStates::default();
        let key = ("C".to_owned(), "c".to_owned(), Some("scribe".to_owned()));
        assert_eq!(
            s.observe(key.clone(), CheckStatus::Error, 4, 40, "x"),
            Transition::StartedFailing
        );
        s.observe(key.clone(), CheckStatus::Skipped, 5, 50, "gone");
        let st = &s.checks[&key];
        assert_eq!(st.failing_since, Some((4, 40)));
        assert_eq!((st.last, st.last_seq), (CheckStatus::Skipped, 5));
        // No on_fail: nothing to do, failing or not.
        let d = decide(&check(None), Transition::StartedFailing);
        assert_eq!(
            d,
            Decision {
                action: None,
                escalate: None
            }
        );
    }
}
