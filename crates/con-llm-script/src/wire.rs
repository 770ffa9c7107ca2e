//! Response bodies in each provider's wire format.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::step::{Reply, Stop};

/// Which provider's wire format a request used (decided by its path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    /// OpenAI Chat Completions (path ends in `/chat/completions`).
    OpenAi,
    /// Anthropic Messages (path ends in `/v1/messages` or `/messages`).
    Anthropic,
}

impl WireFormat {
    /// The format a request path speaks, if any.
    pub fn for_path(path: &str) -> Option<WireFormat> {
        if path.ends_with("/chat/completions") {
            Some(WireFormat::OpenAi)
        } else if path.ends_with("/messages") {
            Some(WireFormat::Anthropic)
        } else {
            None
        }
    }
}

/// A completion body for `reply`; `n` numbers the message and `next_id`
/// hands out tool-call numbers unique across the server.
pub(crate) fn reply_body(
    format: WireFormat,
    reply: &Reply,
    model: &str,
    n: u64,
    next_id: &mut impl FnMut() -> u64,
) -> Value {
    match format {
        WireFormat::OpenAi => openai_reply(reply, model, n, next_id),
        WireFormat::Anthropic => anthropic_reply(reply, model, n, next_id),
    }
}

fn openai_reply(reply: &Reply, model: &str, n: u64, next_id: &mut impl FnMut() -> u64) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": reply.text,
        "refusal": null,
    });
    if !reply.tool_calls.is_empty() {
        let calls: Vec<Value> = reply
            .tool_calls
            .iter()
            .map(|c| {
                let arguments = c
                    .raw_arguments
                    .clone()
                    .unwrap_or_else(|| c.arguments.to_string());
                json!({
                    "id": format!("call_{}", next_id()),
                    "type": "function",
                    "function": { "name": c.name, "arguments": arguments },
                })
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let finish_reason = match reply.effective_stop() {
        Stop::EndTurn => "stop",
        Stop::ToolUse => "tool_calls",
        Stop::MaxTokens => "length",
    };
    let u = reply.usage;
    json!({
        "id": format!("chatcmpl-script-{n}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens.saturating_add(u.output_tokens),
        },
        "system_fingerprint": null,
    })
}

fn anthropic_reply(reply: &Reply, model: &str, n: u64, next_id: &mut impl FnMut() -> u64) -> Value {
    let mut content = Vec::new();
    if let Some(text) = &reply.text {
        content.push(json!({ "type": "text", "text": text }));
    }
    for c in &reply.tool_calls {
        content.push(json!({
            "type": "tool_use",
            "id": format!("toolu_{}", next_id()),
            "name": c.name,
            "input": c.arguments,
        }));
    }
    let stop_reason = match reply.effective_stop() {
        Stop::EndTurn => "end_turn",
        Stop::ToolUse => "tool_use",
        Stop::MaxTokens => "max_tokens",
    };
    json!({
        "id": format!("msg_script_{n}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": reply.usage.input_tokens,
            "output_tokens": reply.usage.output_tokens,
        },
    })
}

/// The provider's usual error body for `status`.
pub(crate) fn error_body(format: WireFormat, status: u16, message: &str) -> Value {
    match format {
        WireFormat::OpenAi => {
            let kind = match status {
                429 => "rate_limit_exceeded",
                400..=499 => "invalid_request_error",
                _ => "server_error",
            };
            json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
        }
        WireFormat::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({ "type": "error", "error": { "type": kind, "message": message } })
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
