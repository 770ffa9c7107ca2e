//! One session's timeline.

use std::collections::BTreeMap;

use con_event::payloads::{CheckStatus, Outcome, Trust};
use con_event::{BlobRef, Event, Payload, SessionId};

use crate::{Content, Contents};

/// A session, reconstructed from its events.
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// The session.
    pub session: SessionId,
    /// The agent that ran it.
    pub agent: String,
    /// The task it worked on.
    pub task: Option<String>,
    /// Seq of `session.started` (of the first event, if there is none).
    pub start_seq: u64,
    /// When it started (writer's clock, ns since the epoch): entries'
    /// offsets are relative to this.
    pub started_at: i64,
    /// When it ended, if `session.ended` was recorded.
    pub ended_at: Option<i64>,
    /// How it ended, if it did.
    pub outcome: Option<Outcome>,
    /// Model calls answered or failed (`llm.response` events).
    pub model_calls: u32,
    /// Input tokens over all calls.
    pub input_tokens: u64,
    /// Output tokens over all calls.
    pub output_tokens: u64,
    /// Cost over all calls, in millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// What happened, in log order.
    pub entries: Vec<Entry>,
}

/// One step of a timeline: one recorded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The event's seq.
    pub seq: u64,
    /// Nanoseconds since the session started (negative for the arrival).
    pub offset_nanos: i64,
    /// What the event says.
    pub step: Step,
}

/// A tool call the model asked for in a reply.
#[derive(Clone, Debug, PartialEq)]
pub struct AskedTool {
    /// The provider's call id (what the `tool.call` that ran it names).
    pub id: Option<String>,
    /// Tool name.
    pub name: String,
    /// Arguments, as compact JSON.
    pub arguments: String,
}

/// What one event contributes to a timeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The task arrived in the agent's inbox (`inbox.arrived`).
    Arrived {
        /// Inbox owner.
        inbox: String,
        /// Path of the task file.
        path: String,
        /// Owner uid from `lstat`.
        owner_uid: u32,
        /// Kernel-decided trust.
        trust: Trust,
        /// Why that trust.
        trust_reason: String,
        /// The task's content.
        content: Content,
    },
    /// `session.started`.
    Started {
        /// Runner.
        runner: String,
        /// Provider, if any.
        provider: Option<String>,
        /// Model, if known.
        model: Option<String>,
        /// Trust the session gave its task.
        trust: Trust,
        /// The assembled system prompt.
        prompt: Content,
    },
    /// `llm.request`.
    Request {
        /// Provider.
        provider: String,
        /// Model.
        model: String,
        /// Tool-loop iteration.
        iteration: u32,
        /// Messages in the whole conversation sent, if the earlier
        /// requests it continues are in the session.
        messages: Option<usize>,
        /// The messages new in this request (JSON as sent).
        new_messages: Vec<Content>,
    },
    /// `llm.response`.
    Response {
        /// Model.
        model: String,
        /// HTTP status, if any.
        status: Option<u16>,
        /// Attempts.
        attempts: u32,
        /// Latency.
        latency_ms: u64,
        /// Input tokens.
        input_tokens: u64,
        /// Output tokens.
        output_tokens: u64,
        /// Cost, micro-USD.
        cost_micro_usd: u64,
        /// The model's text, if the reply had any.
        text: Option<String>,
        /// Tool calls the model asked for.
        tool_calls: Vec<AskedTool>,
        /// The call's error, if it failed.
        error: Option<String>,
        /// The recorded reply body, if any.
        reply: Option<Content>,
    },
    /// `tool.call`.
    ToolCall {
        /// Provider's call id.
        call_id: String,
        /// Tool.
        tool: String,
        /// Arguments (JSON as the model sent them).
        arguments: Content,
    },
    /// `tool.result`.
    ToolResult {
        /// Provider's call id.
        call_id: String,
        /// Tool.
        tool: String,
        /// Exit code, for `exec`.
        exit_code: Option<i32>,
        /// Duration.
        duration_ms: u64,
        /// Output as returned to the model.
        output: Content,
        /// Whether the tool capped the output.
        truncated: bool,
        /// Tool error, if any.
        error: Option<String>,
    },
    /// `task.routed`.
    Routed {
        /// From.
        from: String,
        /// To.
        to: String,
        /// Destination path.
        path: String,
    },
    /// `session.ended`.
    Ended {
        /// Outcome.
        outcome: Outcome,
        /// Iterations used.
        iterations: u32,
        /// Wall-clock duration the run measured.
        duration_ms: u64,
        /// Final response, if any.
        response: Option<Content>,
        /// Detail for non-ok outcomes.
        detail: String,
    },
    /// `contract.result` about the agent while the session ran.
    Contract {
        /// Contract id.
        contract: String,
        /// Check name.
        check: String,
        /// Status.
        status: CheckStatus,
        /// Detail.
        detail: String,
    },
    /// `enforcement.action` about the agent while the session ran.
    Enforcement {
        /// Contract.
        contract: String,
        /// Action.
        action: String,
        /// Why.
        reason: String,
    },
    /// `enforcement.done` about the agent while the session ran.
    EnforcementDone {
        /// Contract.
        contract: String,
        /// Action.
        action: String,
        /// Whether it worked.
        ok: bool,
        /// Detail.
        detail: String,
    },
}

/// Why a timeline could not be built.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// No event of the session among those given.
    #[error("no events of session {0}")]
    NoSession(SessionId),
}

/// The events that make up `session`'s timeline, in seq order: the
/// session's own events, the latest arrival of its task in its agent's
/// inbox before it started, and the `contract.result` and `enforcement.*`
/// events about the agent from its start to its end (to the last event
/// given, if it has not ended). `events` may hold more than these (an
/// agent's whole record, say); it must hold at least them.
pub fn select(session: SessionId, events: &[Event]) -> Result<Vec<&Event>, ReplayError> {
    let own: Vec<&Event> = events
        .iter()
        .filter(|e| e.envelope.session == Some(session))
        .collect();
    let Some(first) = own.first() else {
        return Err(ReplayError::NoSession(session));
    };
    let started = own.iter().find_map(|e| match &e.payload {
        Payload::SessionStarted(p) => Some((e.seq(), p.agent.clone())),
        _ => None,
    });
    let (start_seq, agent) = match started {
        Some(s) => s,
        None => (
            first.seq(),
            first
                .payload
                .subject_agent()
                .or(first.envelope.actor.agent.as_deref())
                .unwrap_or_default()
                .to_owned(),
        ),
    };
    let end_seq = own
        .iter()
        .find(|e| matches!(e.payload, Payload::SessionEnded(_)))
        .map(|e| e.seq());
    let task = own.iter().find_map(|e| e.envelope.task.clone());
    let arrival = events
        .iter()
        .filter(|e| {
            e.seq() < start_seq
                && matches!(&e.payload, Payload::InboxArrived(a) if a.inbox == agent)
                && task.is_some()
                && e.envelope.task == task
        })
        .max_by_key(|e| e.seq());
    let about_agent = events.iter().filter(|e| {
        e.envelope.session != Some(session)
            && e.seq() > start_seq
            && end_seq.is_none_or(|end| e.seq() < end)
            && matches!(
                e.payload,
                Payload::ContractResult(_)
                    | Payload::EnforcementAction(_)
                    | Payload::EnforcementDone(_)
            )
            && e.payload.subject_agent() == Some(agent.as_str())
    });
    let mut out: Vec<&Event> = arrival.into_iter().chain(own).chain(about_agent).collect();
    out.sort_by_key(|e| e.seq());
    out.dedup_by_key(|e| e.seq());
    Ok(out)
}

/// `session`'s timeline from `events` (see [`select`]) and the contents
/// the caller could fetch.
pub fn timeline(
    session: SessionId,
    events: &[Event],
    contents: &Contents,
) -> Result<Timeline, ReplayError> {
    let selected = select(session, events)?;
    let start = selected
        .iter()
        .find(|e| {
            e.envelope.session == Some(session) && matches!(e.payload, Payload::SessionStarted(_))
        })
        .or_else(|| {
            selected
                .iter()
                .find(|e| e.envelope.session == Some(session))
        })
        .ok_or(ReplayError::NoSession(session))?;
    let agent = match &start.payload {
        Payload::SessionStarted(p) => p.agent.clone(),
        other => other
            .subject_agent()
            .or(start.envelope.actor.agent.as_deref())
            .unwrap_or_default()
            .to_owned(),
    };
    let mut t = Timeline {
        session,
        agent,
        task: start.envelope.task.clone(),
        start_seq: start.seq(),
        started_at: start.envelope.ts_unix_nanos,
        ended_at: None,
        outcome: None,
        model_calls: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_micro_usd: 0,
        entries: Vec::with_capacity(selected.len()),
    };
    // Each request's whole conversation, so that a later request that
    // continues it can be resolved.
    let mut conversations: BTreeMap<u64, Vec<BlobRef>> = BTreeMap::new();
    for event in selected {
        let step = match &event.payload {
            Payload::InboxArrived(a) => Step::Arrived {
                inbox: a.inbox.clone(),
                path: a.path.clone(),
                owner_uid: a.owner_uid,
                trust: a.trust,
                trust_reason: a.trust_reason.clone(),
                content: Content::of(a.content, contents),
            },
            Payload::SessionStarted(p) => Step::Started {
                runner: p.runner.clone(),
                provider: p.provider.clone(),
                model: p.model.clone(),
                trust: p.trust,
                prompt: Content::of(p.prompt, contents),
            },
            Payload::LlmRequest(r) => {
                let conversation = r.conversation(|seq| conversations.get(&seq).cloned());
                let messages = conversation.as_ref().map(Vec::len);
                if let Some(c) = conversation {
                    conversations.insert(event.seq(), c);
                }
                Step::Request {
                    provider: r.provider.clone(),
                    model: r.model.clone(),
                    iteration: r.iteration,
                    messages,
                    new_messages: r
                        .messages
                        .iter()
                        .map(|m| Content::of(*m, contents))
                        .collect(),
                }
            }
            Payload::LlmResponse(r) => {
                t.model_calls += 1;
                t.input_tokens += r.input_tokens;
                t.output_tokens += r.output_tokens;
                t.cost_micro_usd += r.cost_micro_usd;
                let reply = r.response.map(|b| Content::of(b, contents));
                let (text, tool_calls) = reply
                    .as_ref()
                    .and_then(|c| c.bytes.as_deref())
                    .map(parse_reply)
                    .unwrap_or_default();
                Step::Response {
                    model: r.model.clone(),
                    status: r.status,
                    attempts: r.attempts,
                    latency_ms: r.latency_ms,
                    input_tokens: r.input_tokens,
                    output_tokens: r.output_tokens,
                    cost_micro_usd: r.cost_micro_usd,
                    text,
                    tool_calls,
                    error: r.error.clone(),
                    reply,
                }
            }
            Payload::ToolCall(c) => Step::ToolCall {
                call_id: c.call_id.clone(),
                tool: c.tool.clone(),
                arguments: Content::of(c.arguments, contents),
            },
            Payload::ToolResult(r) => Step::ToolResult {
                call_id: r.call_id.clone(),
                tool: r.tool.clone(),
                exit_code: r.exit_code,
                duration_ms: r.duration_ms,
                output: Content::of(r.output, contents),
                truncated: r.truncated,
                error: r.error.clone(),
            },
            Payload::TaskRouted(r) => Step::Routed {
                from: r.from.clone(),
                to: r.to.clone(),
                path: r.path.clone(),
            },
            Payload::SessionEnded(e) => {
                t.ended_at = Some(event.envelope.ts_unix_nanos);
                t.outcome = Some(e.outcome);
                Step::Ended {
                    outcome: e.outcome,
                    iterations: e.iterations,
                    duration_ms: e.duration_ms,
                    response: e.response.map(|b| Content::of(b, contents)),
                    detail: e.detail.clone(),
                }
            }
            Payload::ContractResult(c) => Step::Contract {
                contract: c.contract.clone(),
                check: c.check.clone(),
                status: c.status,
                detail: c.detail.clone(),
            },
            Payload::EnforcementAction(a) => Step::Enforcement {
                contract: a.contract.clone(),
                action: a.action.clone(),
                reason: a.reason.clone(),
            },
            Payload::EnforcementDone(d) => Step::EnforcementDone {
                contract: d.contract.clone(),
                action: d.action.clone(),
                ok: d.ok,
                detail: d.detail.clone(),
            },
            // Nothing else belongs to a session; a kind that one day does
            // is skipped here rather than misread.
            _ => continue,
        };
        t.entries.push(Entry {
            seq: event.seq(),
            offset_nanos: event.envelope.ts_unix_nanos - t.started_at,
            step,
        });
    }
    Ok(t)
}

/// The text and tool calls of a recorded reply (the provider-neutral
/// `ChatReply` JSON the gateway records), read loosely: a reply that does
/// not parse shows as neither, and its content stays in the entry.
fn parse_reply(bytes: &[u8]) -> (Option<String>, Vec<AskedTool>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return (None, Vec::new());
    };
    let text = value
        .get("content")
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    let calls = value
        .get("tool_calls")
        .and_then(|c| c.as_array())
        .map(|calls| {
            calls
                .iter()
                .map(|c| AskedTool {
                    id: c.get("id").and_then(|i| i.as_str()).map(str::to_owned),
                    name: c
                        .get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("?")
                        .to_owned(),
                    arguments: c
                        .get("arguments")
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    (text, calls)
}
