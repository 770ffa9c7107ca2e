//! The LLM gateway: agents ask the daemon to call their model.
//!
//! The daemon alone holds API keys (read from `/etc/con/env` at start, never
//! from its own environment), picks provider, model and key from config —
//! an agent cannot choose them — checks the agent's and its tier's daily
//! budget before every call, and records `llm.request` and `llm.response`
//! itself, so a compromised agent process can neither read a key nor make an
//! unrecorded call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use con_config::Tier;
use con_event::payloads::AgentCondition;
use con_event::payloads::{LlmRequest, LlmResponse};
use con_event::{BlobRef, NewEvent, SessionId};
use con_llm::{ChatRequest, Endpoint, LlmClient, LlmError, Price, Usage};
use con_projection::{FleetStatus, utc_day};
use con_protocol::{ErrorCode, LlmAnswer, LlmCall};

use crate::Shared;

/// A request body cut for the record: the frame and each message's bytes.
#[derive(Debug, PartialEq, Eq)]
struct RecordedBody {
    frame: Vec<u8>,
    messages_at: u64,
    messages: Vec<Vec<u8>>,
}

/// Cuts `canonical` (the compact JSON of `request`) into the frame and its
/// messages, so that [`LlmRequest::reassemble`] gives `canonical` back byte
/// for byte — which is checked here: if the cut does not reassemble
/// exactly, the whole body is recorded as the frame instead.
fn split_for_record(
    request: &ChatRequest,
    canonical: &[u8],
) -> Result<RecordedBody, serde_json::Error> {
    let whole = || RecordedBody {
        frame: canonical.to_vec(),
        messages_at: 0,
        messages: Vec::new(),
    };
    if request.messages.is_empty() {
        return Ok(whole());
    }
    let messages = request
        .messages
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    let array_len = messages.iter().map(|m| m.len() + 1).sum::<usize>() + 1;
    // The body with an empty conversation differs from `canonical` exactly
    // where the array starts; there the array's bytes are cut out.
    let empty = serde_json::to_vec(&ChatRequest {
        messages: Vec::new(),
        ..request.clone()
    })?;
    let at = empty
        .iter()
        .zip(canonical)
        .position(|(a, b)| a != b)
        .and_then(|p| p.checked_sub(1));
    let cut = at.and_then(|at| {
        let frame: Vec<u8> = [&canonical[..at], canonical.get(at + array_len..)?].concat();
        let parts: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        (LlmRequest::reassemble(&frame, at as u64, &parts).as_deref() == Some(canonical)).then_some(
            RecordedBody {
                frame,
                messages_at: at as u64,
                messages: messages.clone(),
            },
        )
    });
    Ok(cut.unwrap_or_else(whole))
}

/// Sessions' last recorded conversations, so that a request references the
/// previous request of its session for the messages it repeats. Losing an
/// entry (restart, eviction) costs bytes, never correctness: the next
/// request of that session records its whole conversation again.
#[derive(Default)]
pub(crate) struct Conversations(std::sync::Mutex<HashMap<SessionId, (u64, Vec<BlobRef>)>>);

/// Sessions remembered at most (one entry per running session is enough).
const CONVERSATIONS_CAPACITY: usize = 1024;

impl Conversations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, (u64, Vec<BlobRef>)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The earlier request `conversation` continues and how many of its
    /// messages it repeats first (`(None, 0)` if none).
    fn continuation(&self, session: SessionId, conversation: &[BlobRef]) -> (Option<u64>, usize) {
        match self.lock().get(&session) {
            Some((seq, earlier)) => {
                let repeated = earlier
                    .iter()
                    .zip(conversation)
                    .take_while(|(a, b)| a == b)
                    .count();
                if repeated == 0 {
                    (None, 0)
                } else {
                    (Some(*seq), repeated)
                }
            }
            None => (None, 0),
        }
    }

    /// `conversation` is durable in the request at `seq`.
    fn recorded(&self, session: SessionId, seq: u64, conversation: Vec<BlobRef>) {
        let mut map = self.lock();
        if map.len() >= CONVERSATIONS_CAPACITY
            && !map.contains_key(&session)
            && let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(session, (seq, conversation));
    }
}

/// How one agent's model calls are made.
#[derive(Clone, Debug)]
pub struct Route {
    /// Provider name as configured (`openrouter`, `anthropic`, …), for events.
    pub provider: String,
    /// Where and how to call (with the key, when one is configured).
    pub endpoint: Endpoint,
    /// The model's price, if listed in `[pricing]`.
    pub price: Option<Price>,
    /// The agent's own daily cap, in millionths of a USD.
    pub daily_budget_micro_usd: Option<u64>,
    /// Its tier (for the tier's shared cap).
    pub tier: Tier,
    /// Why calls cannot be made at all (e.g. the key is missing), if so.
    pub unusable: Option<String>,
}

/// Everything the gateway needs, built from config and the secrets file.
#[derive(Clone, Debug, Default)]
pub struct GatewayConfig {
    /// Per agent (agents without a model, such as exec runners, are absent).
    pub routes: BTreeMap<String, Route>,
    /// Daily caps shared by all agents of a tier, in millionths of a USD.
    pub tier_budgets_micro_usd: BTreeMap<Tier, u64>,
}

impl GatewayConfig {
    /// One line per agent whose model calls cannot be made at all, saying
    /// why (a missing key names its variable and the secrets file): what the
    /// daemon says when it starts and when it reloads.
    pub fn problems(&self) -> Vec<String> {
        self.routes
            .iter()
            .filter_map(|(agent, route)| {
                route
                    .unusable
                    .as_ref()
                    .map(|why| format!("agent {agent} cannot make model calls: {why}"))
            })
            .collect()
    }
}

/// Converts a USD amount from config to millionths (saturating).
pub fn micro_usd(usd: f64) -> u64 {
    let micro = (usd * 1_000_000.0).round();
    if micro <= 0.0 {
        0
    } else if micro >= u64::MAX as f64 {
        u64::MAX
    } else {
        micro as u64
    }
}

/// The gateway as the daemon runs it.
pub(crate) struct Gateway {
    /// Routes, keys and budgets as last loaded: a call takes the current
    /// one once and keeps it to the end, so a reload never changes a call
    /// half-way (see [`Gateway::replace`]).
    config: std::sync::RwLock<Arc<GatewayConfig>>,
    client: LlmClient,
    /// Worst-case cost of the calls in flight, per agent: counted against
    /// the budget until the call's real cost is recorded, so concurrent
    /// calls cannot all pass the check at once.
    reserved: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Each session's last recorded conversation.
    conversations: Conversations,
}

/// Releases a reservation when the call is over, however it ends.
struct Reservation<'a> {
    gateway: &'a Gateway,
    agent: String,
    amount: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut reserved) = self.gateway.reserved.lock()
            && let Some(r) = reserved.get_mut(&self.agent)
        {
            *r = r.saturating_sub(self.amount);
        }
    }
}

/// The most a call can cost: its input (estimated generously at one token
/// per 3 bytes of request) and a full `max_tokens` of output.
fn worst_case(route: &Route, request_bytes: usize) -> u64 {
    route
        .price
        .map(|p| {
            p.cost_micro_usd(&Usage {
                input_tokens: (request_bytes as u64).div_ceil(3),
                output_tokens: u64::from(route.endpoint.max_tokens),
            })
        })
        .unwrap_or(0)
}

/// A refused or failed call, as the client will see it.
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl Gateway {
    pub(crate) fn new(config: GatewayConfig) -> Result<Self, String> {
        let client = LlmClient::new().map_err(|e| format!("LLM client: {e}"))?;
        Ok(Self {
            config: std::sync::RwLock::new(Arc::new(config)),
            client,
            reserved: Default::default(),
            conversations: Conversations::default(),
        })
    }

    /// The routes, keys and budgets in force now.
    pub(crate) fn config(&self) -> Arc<GatewayConfig> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Serves `config` from the next call on (a reload). Calls in flight
    /// finish with the configuration they started with; reservations and
    /// recorded conversations carry over.
    pub(crate) fn replace(&self, config: GatewayConfig) {
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
    }

    /// Why `agent` can make no model call today (its or its tier's daily
    /// budget is spent), if so; `None` for an agent with no route.
    pub(crate) fn budget_spent(&self, fleet: &FleetStatus, agent: &str) -> Option<String> {
        let config = self.config();
        let route = config.routes.get(agent)?;
        Self::check_budget(&config, fleet, agent, route, &BTreeMap::new()).err()
    }

    /// Checks the budgets and, if the call may go ahead, reserves its
    /// worst-case cost until it is over.
    fn reserve<'a>(
        &'a self,
        config: &GatewayConfig,
        fleet: &FleetStatus,
        agent: &str,
        route: &Route,
        worst: u64,
    ) -> Result<Reservation<'a>, String> {
        let mut reserved = self
            .reserved
            .lock()
            .map_err(|_| "budget bookkeeping is unavailable".to_owned())?;
        Self::check_budget(config, fleet, agent, route, &reserved)?;
        *reserved.entry(agent.to_owned()).or_default() += worst;
        Ok(Reservation {
            gateway: self,
            agent: agent.to_owned(),
            amount: worst,
        })
    }

    /// Whether `agent` may spend more today (counting calls in flight); the
    /// reason when not.
    fn check_budget(
        config: &GatewayConfig,
        fleet: &FleetStatus,
        agent: &str,
        route: &Route,
        reserved: &BTreeMap<String, u64>,
    ) -> Result<(), String> {
        let today = utc_day(now_unix_nanos());
        let spent = |name: &str| {
            fleet
                .agents
                .get(name)
                .and_then(|a| a.spend_micro_usd_by_day.get(&today))
                .copied()
                .unwrap_or(0)
                .saturating_add(reserved.get(name).copied().unwrap_or(0))
        };
        if let Some(cap) = route.daily_budget_micro_usd {
            let used = spent(agent);
            if used >= cap {
                return Err(format!(
                    "agent {agent} has spent {} of its daily budget of {} (UTC day)",
                    usd(used),
                    usd(cap)
                ));
            }
        }
        if let Some(&cap) = config.tier_budgets_micro_usd.get(&route.tier) {
            let used: u64 = config
                .routes
                .iter()
                .filter(|(_, r)| r.tier == route.tier)
                .map(|(name, _)| spent(name))
                .fold(0, u64::saturating_add);
            if used >= cap {
                return Err(format!(
                    "the {} tier has spent {} of its daily budget of {} (UTC day)",
                    route.tier,
                    usd(used),
                    usd(cap)
                ));
            }
        }
        Ok(())
    }
}

fn usd(micro: u64) -> String {
    format!("${:.4}", micro as f64 / 1_000_000.0)
}

pub(crate) fn now_unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Serves one [`LlmCall`] from `agent`, whose ownership of the session the
/// caller has checked.
pub(crate) async fn call(
    shared: &Arc<Shared>,
    agent: &str,
    call: LlmCall,
) -> Result<LlmAnswer, Refusal> {
    let Some(gateway) = shared.gateway.as_ref() else {
        return Err(refusal(
            ErrorCode::Unavailable,
            "this daemon has no LLM gateway configured",
        ));
    };
    let config = gateway.config();
    let Some(route) = config.routes.get(agent) else {
        return Err(refusal(
            ErrorCode::Rejected,
            format!("agent {agent} has no model configured (its runner does not use the gateway)"),
        ));
    };
    if let Some(why) = &route.unusable {
        return Err(refusal(ErrorCode::Provider, why.clone()));
    }
    let mut request: ChatRequest = serde_json::from_slice(&call.request)
        .map_err(|e| refusal(ErrorCode::Rejected, format!("chat request: {e}")))?;
    // The output cap is the daemon's, not the agent's: it bounds the cost.
    request.max_tokens = Some(
        request
            .max_tokens
            .unwrap_or(route.endpoint.max_tokens)
            .min(route.endpoint.max_tokens),
    );
    // What is recorded is what is sent: the parsed request, re-encoded
    // (fields the schema does not know never reach the provider, so they
    // are not recorded as if they had).
    let canonical = serde_json::to_vec(&request)
        .map_err(|e| refusal(ErrorCode::Rejected, format!("chat request: {e}")))?;

    // Budget before the call: spend is folded from durable llm.response
    // events, so a call's cost counts before the next call is checked.
    let fleet = shared
        .fleet_status()
        .await
        .map_err(|e| refusal(ErrorCode::Unavailable, e))?;
    let condition = fleet
        .agents
        .get(agent)
        .map_or(AgentCondition::Active, |a| a.condition);
    if condition != AgentCondition::Active {
        return Err(refusal(
            ErrorCode::Forbidden,
            format!("agent {agent} is {condition:?}: no model calls"),
        ));
    }
    let worst = worst_case(route, canonical.len());
    let _reservation = gateway
        .reserve(&config, &fleet, agent, route, worst)
        .map_err(|why| refusal(ErrorCode::OverBudget, why))?;

    let model = route.endpoint.model.clone();
    let body = split_for_record(&request, &canonical)
        .map_err(|e| refusal(ErrorCode::Rejected, format!("chat request: {e}")))?;
    let conversation: Vec<BlobRef> = body.messages.iter().map(|m| BlobRef::of(m)).collect();
    let (continues, repeated) = gateway
        .conversations
        .continuation(call.session, &conversation);
    let mut recorded = NewEvent::system(LlmRequest {
        agent: agent.to_owned(),
        provider: route.provider.clone(),
        model: model.clone(),
        iteration: call.iteration,
        frame: BlobRef::of(&body.frame),
        messages_at: body.messages_at,
        continues,
        repeated: u32::try_from(repeated).unwrap_or(u32::MAX),
        messages: conversation[repeated..].to_vec(),
    });
    recorded.session = Some(call.session);
    recorded.task = call.task.clone();
    // Exactly the contents referenced: the frame and the new messages.
    let mut attachments = vec![body.frame];
    for m in body.messages.into_iter().skip(repeated) {
        if !attachments.contains(&m) {
            attachments.push(m);
        }
    }
    recorded.attachments = attachments;
    // The request is the agent's traffic: it counts against the agent's
    // quotas, and over them the call is not made.
    let payload_len = recorded.payload.encode().map_or(0, |p| p.len());
    let sizes: Vec<u64> = recorded
        .attachments
        .iter()
        .map(|a| a.len() as u64)
        .collect();
    crate::quota::admit_agent(shared, agent, payload_len, &sizes)
        .await
        .map_err(|(code, message)| refusal(code, message))?;
    // No audit, no action: the call is made only once its request is durable.
    let request_seq = shared
        .appender
        .submit(recorded)
        .wait_async()
        .await
        .map_err(|e| {
            refusal(
                ErrorCode::Unavailable,
                format!("recording llm.request: {e}"),
            )
        })?
        .seq;
    gateway
        .conversations
        .recorded(call.session, request_seq, conversation);

    // A call still in flight when the daemon has been stopping for half its
    // drain time is given up and recorded as interrupted, before the
    // connection is cut: never a request without a response.
    let started = std::time::Instant::now();
    let stopping = {
        let stopping = shared.stopping.clone();
        let grace = shared.config.drain_timeout / 2;
        async move {
            crate::until_stopping(stopping).await;
            tokio::time::sleep(grace).await;
        }
    };
    let outcome = tokio::select! {
        outcome = gateway.client.call(&route.endpoint, &request) => outcome,
        () = stopping => con_llm::CallOutcome {
            result: Err(LlmError::Interrupted(
                "the daemon stopped while the call was in flight".to_owned(),
            )),
            attempts: 1,
            status: None,
            latency: started.elapsed(),
        },
    };
    let (reply_bytes, error) = match &outcome.result {
        Ok(reply) => match serde_json::to_vec(reply) {
            Ok(bytes) => (Some(bytes), None),
            Err(e) => (None, Some(format!("encoding the reply: {e}"))),
        },
        Err(e) => (None, Some(e.to_string())),
    };
    let usage = outcome.result.as_ref().map(|r| r.usage).unwrap_or_default();
    let cost = match &outcome.result {
        // A request that timed out or lost its connection may still have
        // been processed and billed: it counts at its worst case, so
        // failing calls cannot spend past the budget unseen.
        Err(LlmError::Timeout { .. } | LlmError::Transport { .. } | LlmError::Interrupted(_)) => {
            worst
        }
        _ => route.price.map(|p| p.cost_micro_usd(&usage)).unwrap_or(0),
    };
    let mut recorded = NewEvent::system(LlmResponse {
        agent: agent.to_owned(),
        provider: route.provider.clone(),
        model,
        status: outcome.status,
        attempts: outcome.attempts,
        latency_ms: u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_micro_usd: cost,
        response: reply_bytes.as_deref().map(BlobRef::of),
        error: error.clone(),
    });
    recorded.session = Some(call.session);
    recorded.task = call.task;
    recorded.causation = Some(request_seq);
    recorded.attachments = reply_bytes.iter().cloned().collect();
    shared.quotas.charge_anyway(
        agent,
        crate::quota::event_bytes(
            recorded.payload.encode().map_or(0, |p| p.len()),
            &recorded
                .attachments
                .iter()
                .map(|a| a.len() as u64)
                .collect::<Vec<_>>(),
        ),
    );
    let response_seq = shared
        .appender
        .submit(recorded)
        .wait_async()
        .await
        .map_err(|e| {
            refusal(
                ErrorCode::Unavailable,
                format!("recording llm.response: {e}"),
            )
        })?
        .seq;
    match (reply_bytes, error) {
        (Some(reply), None) => Ok(LlmAnswer {
            request_seq,
            response_seq,
            reply,
        }),
        (_, e) => Err(refusal(
            ErrorCode::Provider,
            e.unwrap_or_else(|| "no reply".to_owned()),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use con_llm::{Message, ToolCallRequest, ToolOutcome};

    use super::*;

    fn conversation(turns: usize) -> ChatRequest {
        let mut messages = vec![Message::User {
            content: "check the disk, \"quoted\" and ünïcode".into(),
        }];
        for n in 0..turns {
            messages.push(Message::Assistant {
                content: None,
                tool_calls: vec![ToolCallRequest {
                    id: format!("call_{n}"),
                    name: "exec".into(),
                    arguments: serde_json::json!({"command": "df -h", "n": n, "x": 1.5}),
                }],
            });
            messages.push(Message::Tool {
                results: vec![ToolOutcome {
                    call_id: format!("call_{n}"),
                    content: "x".repeat(4096),
                    is_error: false,
                }],
            });
        }
        ChatRequest {
            system: "You are sysadmin. \"messages\":[] is not a key here.".into(),
            messages,
            tools: Vec::new(),
            max_tokens: Some(1024),
        }
    }

    fn reassembled(body: &RecordedBody) -> Vec<u8> {
        let parts: Vec<&[u8]> = body.messages.iter().map(Vec::as_slice).collect();
        LlmRequest::reassemble(&body.frame, body.messages_at, &parts).unwrap()
    }

    #[test]
    fn a_recorded_body_reassembles_to_the_bytes_sent() {
        for turns in [0, 1, 5] {
            let request = conversation(turns);
            let canonical = serde_json::to_vec(&request).unwrap();
            let body = split_for_record(&request, &canonical).unwrap();
            assert_eq!(reassembled(&body), canonical, "{turns} turns");
            assert_eq!(body.messages.len(), request.messages.len());
            if turns > 0 {
                assert!(
                    body.frame.len() < 200,
                    "the frame holds no conversation: {} bytes",
                    body.frame.len()
                );
            }
        }
    }

    /// What a session stores grows with its distinct messages, not with
    /// the number of requests times their length.
    #[test]
    fn a_long_session_stores_each_message_once() {
        let mut distinct = std::collections::HashMap::new();
        let mut sent = 0usize;
        for turns in 0..100 {
            let request = conversation(turns);
            let canonical = serde_json::to_vec(&request).unwrap();
            sent += canonical.len();
            let body = split_for_record(&request, &canonical).unwrap();
            for blob in std::iter::once(body.frame).chain(body.messages) {
                distinct.insert(con_event::Digest::of(&blob), blob.len());
            }
        }
        let stored: usize = distinct.values().sum();
        let messages: usize = serde_json::to_vec(&conversation(99).messages)
            .unwrap()
            .len();
        assert!(
            stored < 2 * messages,
            "stored {stored} bytes for {messages} bytes of distinct messages"
        );
        assert!(sent > 40 * stored, "sent {sent}, stored {stored}");
    }
}
