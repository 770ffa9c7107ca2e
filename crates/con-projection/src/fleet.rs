//! `FleetStatus`: what `con status` shows.

use std::collections::BTreeMap;

use con_event::payloads::{AgentCondition, CheckStatus, Outcome};
use con_event::{Event, Payload};
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
}

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

/// Agents, inboxes, sessions, contracts and spend, folded from the log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// Per agent (and `outer` for the outer inbox), by name.
    pub agents: BTreeMap<String, AgentStatus>,
    /// Last result per `contract/check`.
    pub checks: BTreeMap<String, CheckState>,
    /// Seq of the last event applied.
    pub through_seq: u64,
}

impl FleetStatus {
    fn agent(&mut self, name: &str, seq: u64) -> &mut AgentStatus {
        let a = self.agents.entry(name.to_owned()).or_default();
        a.last_seq = seq;
        a
    }
}

impl Projection for FleetStatus {
    const NAME: &'static str = "fleet-status";
    // 3: checks carry their contract and check names.
    const VERSION: u32 = 3;

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
            }
            Payload::SessionEnded(p) => {
                let a = self.agent(&p.agent, seq);
                a.running_sessions = a.running_sessions.saturating_sub(1);
                a.last_outcome = Some(p.outcome);
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
                self.checks.insert(
                    format!("{}/{}", p.contract, p.check),
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
            Payload::LlmRequest(_)
            | Payload::ToolCall(_)
            | Payload::ToolResult(_)
            | Payload::EnforcementAction(_)
            | Payload::EnforcementDone(_)
            | Payload::JournalMirrorDegraded(_)
            | Payload::JournalMirrorRecovered(_)
            | Payload::ChainCheckpoint(_)
            | Payload::RunStarted(_)
            | Payload::RunExited(_)
            | Payload::ProvisionApplied(_)
            | Payload::ConfigReloaded(_) => {}
        }
    }
}
