//! The status view: what `Request::Status` answers, typed and versioned so
//! that `con status --json`, dashboards and contracts read fields instead of
//! parsing prose. Documented in `docs/status-json.md`.

use con_event::payloads::{AgentCondition, CheckStatus, Outcome};
use con_event::{Digest, SessionId};
use serde::{Deserialize, Serialize};

/// Layout version of [`StatusView`]. Bumped whenever a field is added,
/// removed or changes meaning; readers check it before anything else.
pub const STATUS_VIEW_VERSION: u16 = 6;

/// Current state of the conspiracy as the daemon sees it, for one caller.
/// Operators see everything; an agent that sees the fleet (an officer, or
/// an operator where the config says so) sees every agent's row, the outer
/// inbox and the failing checks; any other agent only who it is and its
/// own row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// [`STATUS_VIEW_VERSION`] of the daemon that answered.
    pub view_version: u16,
    /// Who asked, as the kernel identified them.
    pub caller: Caller,
    /// The event log's position (operators only).
    pub log: Option<LogPosition>,
    /// Whether the event log records now (every caller: while it does
    /// not, nothing anyone asks of the daemon can be recorded). Since
    /// view 4.
    pub recording: RecordingView,
    /// journald mirror health (operators only).
    pub journal_mirror: Option<MirrorView>,
    /// Tasks waiting in the outer inbox (operators and fleet viewers).
    pub outer_inbox_depth: Option<u64>,
    /// Every configured agent in name order, then any agent that has events
    /// but is no longer configured (`configured: false`). An agent caller
    /// that does not see the fleet gets only its own row.
    pub agents: Vec<AgentView>,
    /// Last result of every contract check recorded so far, by contract and
    /// check (operators). A fleet viewer gets the failing ones (`fail`,
    /// `error`, `timeout`), without
    /// their `detail` (a check's output may quote what it read); any other
    /// agent none.
    pub checks: Vec<CheckView>,
    /// Alerts raised by failing checks that have not held since, by
    /// contract and check (operators only; empty for agents). Since view 2.
    pub alerts: Vec<AlertView>,
    /// What is wrong now, for this caller: agents that cannot make model
    /// calls (and why), sessions that ended early, failing checks, tasks
    /// set aside that are still in `failed/`, inboxes nothing takes tasks
    /// from (since view 6). Operators see all, with
    /// details; a fleet viewer all, with details only of its own; any other
    /// agent its own. Since view 4.
    pub problems: Vec<ProblemView>,
}

/// What kind of problem a [`ProblemView`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The agent can make no model call at all (a missing key, a bad
    /// endpoint): the message names the variable and the file it goes in.
    NoModelCalls,
    /// The agent's or its tier's daily budget is spent: no model call until
    /// the next UTC day or a reload raises it.
    BudgetSpent,
    /// The agent's last session ended without an answer or before the
    /// model finished (any outcome but `ok`; a task set aside is a
    /// `task_failed`).
    SessionEndedEarly,
    /// A contract check's last result is `fail`, `error` or `timeout`.
    CheckFailing,
    /// A task set aside unanswered (`task.failed`) that is still in the
    /// agent's `failed/`: it stops being one when an operator removes it
    /// or moves it back into an inbox.
    TaskFailed,
    /// Tasks have waited in an active agent's inbox for at least `[inbox]
    /// stalled_after` while no run of it is going: nothing is taking them
    /// (a failed path unit, runs that do not start). Since view 6.
    TasksStalled,
}

impl ProblemKind {
    /// Canonical spelling, the same as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::NoModelCalls => "no_model_calls",
            ProblemKind::BudgetSpent => "budget_spent",
            ProblemKind::SessionEndedEarly => "session_ended_early",
            ProblemKind::CheckFailing => "check_failing",
            ProblemKind::TaskFailed => "task_failed",
            ProblemKind::TasksStalled => "tasks_stalled",
        }
    }
}

/// One problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemView {
    /// What kind.
    pub kind: ProblemKind,
    /// The agent it is about (a system-wide check: none).
    pub agent: Option<String>,
    /// What is wrong, in one line, from the configuration and the log's
    /// facts (never an agent's or a check's output).
    pub message: String,
    /// The recorded reason as it was written (a session's end detail, a
    /// failed task's reason, a check's output); empty where the caller may
    /// not read it.
    pub detail: String,
    /// The event that shows it, if one does.
    pub seq: Option<u64>,
    /// The task concerned, if any.
    pub task: Option<String>,
    /// The session concerned, if any (hex in JSON).
    pub session: Option<SessionId>,
}

/// The caller's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerRole {
    /// Root or a member of the trusted group.
    Operator,
    /// An agent user.
    Agent,
}

/// Who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// Operator or agent.
    pub role: CallerRole,
    /// Peer uid from `SO_PEERCRED`.
    pub uid: u32,
    /// Agent name, for agents.
    pub agent: Option<String>,
    /// Whether this view covers the whole fleet: operators, and agents the
    /// config lets see it (officers; operators where `[fleet_view]` says so).
    pub sees_fleet: bool,
}

/// Where the log stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    /// Random id of the log (the journal's `CON_LOG_ID`).
    pub log_id: String,
    /// Durable head seq.
    pub head_seq: u64,
    /// Chain hash at the head (hex in JSON).
    pub head_hash: Digest,
}

/// Whether the event log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Appends are recorded.
    Recording,
    /// Appends are refused (the log's file system is full, or a write
    /// failed); the daemon retries by itself and records again when it can.
    NotRecording,
    /// The log's writer failed for good: only a restart of the daemon
    /// records again.
    Failed,
}

/// The event log's recording state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingView {
    /// Recording, not recording, or failed.
    pub state: RecordingState,
    /// When not recording: since when, nanoseconds since the Unix epoch.
    pub since_unix_nanos: Option<i64>,
    /// When not recording or failed: why, as appends are refused.
    pub reason: Option<String>,
}

/// Whether journald receives every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorState {
    /// Every event so far reached journald (or is queued for it).
    Healthy,
    /// Entries are being lost; see the other fields.
    Degraded,
}

/// journald mirror health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorView {
    /// Healthy or degraded.
    pub state: MirrorState,
    /// When degraded: first seq that may be missing from the journal.
    pub first_unmirrored_seq: Option<u64>,
    /// When degraded: why.
    pub reason: Option<String>,
    /// Entries lost in the current incident.
    pub dropped: u64,
}

/// One agent's row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// Agent name.
    pub name: String,
    /// Whether the running config names it.
    pub configured: bool,
    /// Administrative condition.
    pub condition: AgentCondition,
    /// Tasks recorded in its inbox and not yet routed out.
    pub inbox_depth: u64,
    /// Sessions started and not yet ended.
    pub running_sessions: u32,
    /// Sessions ever started.
    pub sessions_total: u64,
    /// Outcome of its last ended session.
    pub last_outcome: Option<Outcome>,
    /// Spend on the current UTC day, millionths of a US dollar.
    pub spent_today_micro_usd: u64,
    /// Seq of the last event about it (0: none yet).
    pub last_seq: u64,
}

/// Last result of one contract check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    /// Contract id.
    pub contract: String,
    /// Check name.
    pub check: String,
    /// Status of the last evaluation.
    pub status: CheckStatus,
    /// Agent it was scoped to.
    pub scope_agent: Option<String>,
    /// Output or reason, as recorded.
    pub detail: String,
    /// Seq of that `contract.result`.
    pub seq: u64,
}

/// An alert a failing check raised (`on_fail: {action: alert}`), shown
/// until the check passes again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertView {
    /// Contract id.
    pub contract: String,
    /// Check name.
    pub check: String,
    /// Agent the contract is scoped to.
    pub scope_agent: Option<String>,
    /// The alert's message.
    pub message: String,
    /// Seq of the first `enforcement.action` of this alert.
    pub since_seq: u64,
    /// Seq of the latest.
    pub seq: u64,
}
