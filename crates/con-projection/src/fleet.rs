//! `FleetStatus`: what `con status` shows.

use std::collections::BTreeMap;

use con_event::payloads::{AclGrant, AgentCondition, CheckStatus, EnforcementDone, Outcome};
use con_event::{Event, Payload, SessionId};
use serde::{Deserialize, Serialize};

use crate::Projection;

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// The UTC day (days since the Unix epoch) a timestamp falls on: the key of
/// [`AgentStatus::spend_micro_usd_by_day`].
pub fn utc_day(unix_nanos: i64) -> i64 {
    unix_nanos.div_euclid(NANOS_PER_DAY)
}

/// Current state of one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Administrative condition (durable halts and quarantines).
    pub condition: AgentCondition,
    /// Tasks that arrived in its inbox and were not yet routed out.
    pub inbox_depth: u64,
    /// Sessions started and not yet ended.
    pub running_sessions: u32,
    /// Sessions ever started.
    pub sessions_total: u64,
    /// Outcome of the last ended session.
    pub last_outcome: Option<Outcome>,
    /// Spend in millionths of a USD per UTC day (days since the Unix epoch).
    pub spend_micro_usd_by_day: BTreeMap<i64, u64>,
    /// Seq of the last event about this agent.
    pub last_seq: u64,
    /// ACL entries its quarantine removed and a resume puts back.
    pub acl_removed: Vec<AclGrant>,
    /// How its last session ended, with the reason.
    pub last_end: Option<SessionEnd>,
    /// Its sessions started and not yet ended, oldest first: those a kill
    /// ends (the daemon records their `session.ended`, which their runs,
    /// killed, cannot).
    pub running: Vec<RunningSession>,
}

/// A session started and not yet ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningSession {
    /// The session.
    pub session: SessionId,
    /// Its task, if any.
    pub task: Option<String>,
    /// When its `session.started` was recorded (Unix nanoseconds).
    pub started_unix_nanos: i64,
}

/// How a session ended, as its `session.ended` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    /// The session.
    pub session: Option<SessionId>,
    /// The task it worked on.
    pub task: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, for anything but `ok`.
    pub detail: String,
    /// Seq of the `session.ended`.
    pub seq: u64,
}

/// A task a run set aside unanswered (`task.failed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTask {
    /// The agent whose inbox held it.
    pub agent: String,
    /// The task id.
    pub task: Option<String>,
    /// The session that set it aside.
    pub session: Option<SessionId>,
    /// Where it was put (in the agent's `failed/`).
    pub path: String,
    /// Why.
    pub reason: String,
    /// Sessions of it that had failed before.
    pub attempts: u32,
    /// Seq of the `enforcement.action` that escalated it (caused by the
    /// `task.failed`), once one did.
    pub escalated: Option<u64>,
}

/// Failed tasks the fleet status keeps, newest by seq: the view is cloned
/// on every read, so a flood of failures must not grow it without bound.
pub const MAX_FAILED_TASKS: usize = 256;

impl Default for AgentStatus {
    fn default() -> Self {
        Self {
            condition: AgentCondition::Active,
            inbox_depth: 0,
            running_sessions: 0,
            sessions_total: 0,
            last_outcome: None,
            spend_micro_usd_by_day: BTreeMap::new(),
            last_seq: 0,
            acl_removed: Vec::new(),
            last_end: None,
            running: Vec::new(),
        }
    }
}

/// Last result of one contract check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckState {
    /// Contract id.
    pub contract: String,
    /// Check name within the contract.
    pub check: String,
    /// Status of the last evaluation.
    pub status: CheckStatus,
    /// Agent it was scoped to.
    pub scope_agent: Option<String>,
    /// Output or reason.
    pub detail: String,
    /// Seq of that `contract.result`.
    pub seq: u64,
}

/// An alert a failing check raised, until the check holds again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Contract id.
    pub contract: String,
    /// Check name within the contract.
    pub check: String,
    /// Agent the contract is scoped to.
    pub scope_agent: Option<String>,
    /// What the alert says (the check's `on_fail.message`, or its output).
    pub message: String,
    /// Seq of the first `enforcement.action` of this alert.
    pub since_seq: u64,
    /// Seq of the latest.
    pub seq: u64,
}

/// Agents, inboxes, sessions, contracts and spend, folded from the log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// Per agent (and `outer` for the outer inbox), by name.
    pub agents: BTreeMap<String, AgentStatus>,
    /// Last result per `contract/check`.
    pub checks: BTreeMap<String, CheckState>,
    /// Alerts raised per `contract/check` whose check has not held since.
    pub alerts: BTreeMap<String, Alert>,
    /// Tasks set aside unanswered, by the seq of their `task.failed` (at
    /// most [`MAX_FAILED_TASKS`], the newest).
    pub failed_tasks: BTreeMap<u64, FailedTask>,
    /// Seq of the last event applied.
    pub through_seq: u64,
}

impl FleetStatus {
    fn agent(&mut self, name: &str, seq: u64) -> &mut AgentStatus {
        let a = self.agents.entry(name.to_owned()).or_default();
        a.last_seq = seq;
        a
    }

    /// After a kill (alone, or of a halt or quarantine) that succeeded, no
    /// process of those agents' users is left, so none of their sessions
    /// runs, and none could record its end.
    fn sessions_killed(&mut self, p: &EnforcementDone, seq: u64) {
        let kills = matches!(
            p.action.as_str(),
            "kill_session" | "halt" | "quarantine" | "halt_agents" | "halt_workers"
        );
        if !p.ok || !kills {
            return;
        }
        let target = p.target.iter().filter(|_| p.action == "kill_session");
        for name in p.agents.iter().chain(target) {
            let a = self.agent(name, seq);
            a.running_sessions = 0;
            a.running.clear();
        }
    }

    /// What a quarantine removed from the ACLs, until a resume restores it.
    fn acl_changed(&mut self, p: &EnforcementDone, seq: u64) {
        match (p.action.as_str(), &p.target) {
            ("quarantine", Some(target)) => {
                // Added to, never replaced: a second quarantine of a
                // quarantined agent removes nothing more, and what the
                // first removed must still come back.
                let removed = p.acl_removed.clone();
                self.agent(target, seq).acl_removed.extend(removed);
            }
            ("resume", Some(target)) if p.ok => self.agent(target, seq).acl_removed.clear(),
            _ => {}
        }
    }
}

impl Projection for FleetStatus {
    const NAME: &'static str = "fleet-status";
    // 3: checks carry their contract and check names.
    // 4: alerts, and the ACL entries a quarantine removed.
    // 5: how each agent's last session ended, and failed tasks.
    // 6: each agent's open sessions.
    const VERSION: u32 = 6;

    fn apply(&mut self, event: &Event) {
        let seq = event.seq();
        self.through_seq = seq;
        match &event.payload {
            Payload::InboxArrived(p) => self.agent(&p.inbox, seq).inbox_depth += 1,
            Payload::TaskRouted(p) => {
                let a = self.agent(&p.from, seq);
                if p.leaves_inbox() {
                    a.inbox_depth = a.inbox_depth.saturating_sub(1);
                }
            }
            Payload::SessionStarted(p) => {
                let a = self.agent(&p.agent, seq);
                a.running_sessions += 1;
                a.sessions_total += 1;
                if let Some(session) = event.envelope.session {
                    a.running.push(RunningSession {
                        session,
                        task: event.envelope.task.clone(),
                        started_unix_nanos: event.envelope.ts_unix_nanos,
                    });
                }
            }
            Payload::SessionEnded(p) => {
                let a = self.agent(&p.agent, seq);
                a.running_sessions = a.running_sessions.saturating_sub(1);
                a.last_outcome = Some(p.outcome);
                a.last_end = Some(SessionEnd {
                    session: event.envelope.session,
                    task: event.envelope.task.clone(),
                    outcome: p.outcome,
                    detail: p.detail.clone(),
                    seq,
                });
                if let Some(session) = event.envelope.session {
                    a.running.retain(|o| o.session != session);
                }
            }
            Payload::TaskFailed(p) => {
                self.agent(&p.agent, seq);
                self.failed_tasks.insert(
                    seq,
                    FailedTask {
                        agent: p.agent.clone(),
                        task: event.envelope.task.clone(),
                        session: event.envelope.session,
                        path: p.path.clone(),
                        reason: p.reason.clone(),
                        attempts: p.attempts,
                        escalated: None,
                    },
                );
                while self.failed_tasks.len() > MAX_FAILED_TASKS {
                    self.failed_tasks.pop_first();
                }
            }
            Payload::LlmResponse(p) => {
                let day = utc_day(event.envelope.ts_unix_nanos);
                let spent = self
                    .agent(&p.agent, seq)
                    .spend_micro_usd_by_day
                    .entry(day)
                    .or_default();
                // Provider-reported usage must not wrap a budget counter.
                *spent = spent.saturating_add(p.cost_micro_usd);
            }
            Payload::ContractResult(p) => {
                let key = format!("{}/{}", p.contract, p.check);
                if p.status == CheckStatus::Pass {
                    self.alerts.remove(&key);
                }
                self.checks.insert(
                    key,
                    CheckState {
                        contract: p.contract.clone(),
                        check: p.check.clone(),
                        status: p.status,
                        scope_agent: p.scope_agent.clone(),
                        detail: p.detail.clone(),
                        seq,
                    },
                );
            }
            Payload::AgentState(p) => self.agent(&p.agent, seq).condition = p.condition,
            Payload::EnforcementAction(p) if p.action == "alert" => {
                // The result that raised it is its cause; an alert without
                // one (never written by con) has no check to attach to.
                let Some(cause) = event.envelope.causation else {
                    return;
                };
                let Some((key, check)) = self.checks.iter().find(|(_, c)| c.seq == cause) else {
                    return;
                };
                let since_seq = self.alerts.get(key).map_or(seq, |a| a.since_seq);
                let alert = Alert {
                    contract: check.contract.clone(),
                    check: check.check.clone(),
                    scope_agent: check.scope_agent.clone(),
                    message: p.reason.clone(),
                    since_seq,
                    seq,
                };
                self.alerts.insert(key.clone(), alert);
            }
            Payload::EnforcementAction(_) => {
                // An escalation of a failed task names it as its cause.
                if let Some(failed) = event
                    .envelope
                    .causation
                    .and_then(|c| self.failed_tasks.get_mut(&c))
                {
                    failed.escalated.get_or_insert(seq);
                }
            }
            Payload::EnforcementDone(p) => {
                self.sessions_killed(p, seq);
                self.acl_changed(p, seq);
            }
            Payload::LlmRequest(_)
            | Payload::ToolCall(_)
            | Payload::ToolResult(_)
            | Payload::JournalMirrorDegraded(_)
            | Payload::JournalMirrorRecovered(_)
            | Payload::ChainCheckpoint(_)
            | Payload::RunStarted(_)
            | Payload::RunExited(_)
            | Payload::ProvisionApplied(_)
            | Payload::ConfigReloaded(_)
            | Payload::LogDegraded(_)
            | Payload::LogRecovered(_)
            | Payload::ContractAdded(_) => {}
        }
    }
}
