//! The Anthropic Messages wire format: pure translation, no IO.
//!
//! Requests: `system` is top level; `max_tokens` is always sent; every
//! message is a list of content blocks. An assistant turn is its `text`
//! followed by its `tool_use` blocks with the ids and inputs the model
//! produced (the API rejects a history that differs); tool results are a
//! `user` message of `tool_result` blocks. The API requires user and
//! assistant turns to alternate, so consecutive turns of one role are merged,
//! with `tool_result` blocks first in a merged user turn (also required).
//! Empty text blocks, which the API rejects, are left out.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{ChatReply, ChatRequest, Message, StopReason, ToolCallRequest, Usage};
use crate::error::LlmError;

/// The `anthropic-version` header value this translation targets.
pub const API_VERSION: &str = "2023-06-01";

/// The request body for `request` addressed to `model`; `default_max_tokens`
/// is used when the request sets no cap (the API requires one).
pub fn encode_request(model: &str, default_max_tokens: u32, request: &ChatRequest) -> Value {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message {
            Message::User { content } => ("user", text_block(content).into_iter().collect()),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks: Vec<Value> = content
                    .as_deref()
                    .and_then(text_block)
                    .into_iter()
                    .collect();
                blocks.extend(tool_calls.iter().map(|c| {
                    json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments })
                }));
                ("assistant", blocks)
            }
            Message::Tool { results } => (
                "user",
                results
                    .iter()
                    .map(|r| {
                        json!({
                            "type": "tool_result",
                            "tool_use_id": r.call_id,
                            "content": r.content,
                            "is_error": r.is_error,
                        })
                    })
                    .collect(),
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == "user" {
                // Stable: results keep their order, texts theirs.
                blocks.sort_by_key(|b| b["type"] != "tool_result");
            }
            json!({ "role": role, "content": blocks })
        })
        .collect();
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens.unwrap_or(default_max_tokens),
        "messages": messages,
    });
    if !request.system.is_empty() {
        body["system"] = json!(request.system);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.parameters }))
            .collect();
    }
    body
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "type": "text", "text": text }))
}

#[derive(Deserialize)]
struct WireMessage {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    // Thinking, citations, server tools…: not requested, not kept.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// The neutral reply for a response body (`content` blocks, `stop_reason`,
/// `usage`). Cache write and read tokens, which Anthropic counts apart from
/// `input_tokens`, are added to the input count so spend is not under-counted.
pub fn decode_reply(body: &Value) -> Result<ChatReply, LlmError> {
    if body.get("type").and_then(Value::as_str) == Some("error") {
        return Err(LlmError::provider(body.get("error").unwrap_or(body)));
    }
    let message = WireMessage::deserialize(body).map_err(|e| LlmError::Decode {
        format: "anthropic",
        detail: e.to_string(),
    })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in message.content {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCallRequest {
                id,
                name,
                arguments: input,
            }),
            Block::Other => {}
        }
    }
    let stop = match message.stop_reason.as_deref() {
        Some("end_turn") => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_owned()),
        None => StopReason::Other("null".to_owned()),
    };
    let usage = message.usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u
            .input_tokens
            .saturating_add(u.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(u.cache_read_input_tokens.unwrap_or(0)),
        output_tokens: u.output_tokens,
    });
    Ok(ChatReply {
        content: (!text.is_empty()).then_some(text),
        tool_calls,
        stop,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ToolOutcome;
    use crate::test_support::history;

    #[test]
    fn request_wire_shape() {
        insta::assert_json_snapshot!(encode_request("claude-sonnet-4-5", 4096, &history()));
    }

    #[test]
    fn default_max_tokens_and_no_optional_fields() {
        let r = ChatRequest {
            system: String::new(),
            messages: vec![Message::User {
                content: "hi".into(),
            }],
            tools: vec![],
            max_tokens: None,
        };
        assert_eq!(
            encode_request("c", 4096, &r),
            json!({"model": "c", "max_tokens": 4096,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        );
    }

    #[test]
    fn same_role_turns_merge_with_tool_results_first() {
        let r = ChatRequest {
            system: "s".into(),
            messages: vec![
                Message::User {
                    content: "first".into(),
                },
                Message::User {
                    content: "second".into(),
                },
                Message::Assistant {
                    content: None,
                    tool_calls: vec![ToolCallRequest {
                        id: "toolu_1".into(),
                        name: "exec".into(),
                        arguments: json!({}),
                    }],
                },
                Message::Assistant {
                    content: Some(String::new()),
                    tool_calls: vec![],
                },
                Message::User {
                    content: "an interjection".into(),
                },
                Message::Tool {
                    results: vec![ToolOutcome {
                        call_id: "toolu_1".into(),
                        content: "ok".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![],
            max_tokens: None,
        };
        let wire = encode_request("c", 10, &r);
        assert_eq!(
            wire["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "first"},
                    {"type": "text", "text": "second"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "exec", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok", "is_error": false},
                    {"type": "text", "text": "an interjection"}]},
            ])
        );
    }

    #[test]
    fn reply_round_trips_into_the_next_request() {
        let body = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "c",
            "content": [
                {"type": "text", "text": "I'll look."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9",
                 "name": "exec", "input": {"cmd": "ls -la", "timeout_s": 30}},
                {"type": "tool_use", "id": "toolu_01B", "name": "read_file",
                 "input": {"path": "notes.md", "range": {"from": 1, "to": 40}}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 512, "output_tokens": 64,
                      "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0},
        });
        let reply = decode_reply(&body).unwrap();
        assert_eq!(reply.stop, StopReason::ToolUse);
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 612,
                output_tokens: 64
            }
        );
        let request = ChatRequest {
            system: String::new(),
            messages: vec![
                Message::User {
                    content: "go".into(),
                },
                Message::Assistant {
                    content: reply.content,
                    tool_calls: reply.tool_calls,
                },
            ],
            tools: vec![],
            max_tokens: None,
        };
        let wire = encode_request("c", 10, &request);
        assert_eq!(wire["messages"][1]["content"], body["content"]);
    }

    #[test]
    fn stop_reasons_and_unknown_blocks() {
        let reply = |reason: &str| {
            decode_reply(&json!({"content": [{"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "x"}], "stop_reason": reason}))
            .unwrap()
        };
        assert_eq!(reply("end_turn").stop, StopReason::EndTurn);
        assert_eq!(reply("max_tokens").stop, StopReason::MaxTokens);
        assert_eq!(reply("refusal").stop, StopReason::Other("refusal".into()));
        assert_eq!(reply("end_turn").content.as_deref(), Some("x"));
    }

    #[test]
    fn error_bodies_and_garbage_are_errors() {
        let err = decode_reply(&json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}))
        .unwrap_err();
        assert_eq!(err.to_string(), "provider reported an error: Overloaded");
        let err = decode_reply(&json!({"content": "nope"})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unreadable anthropic response: "),
            "{err}"
        );
    }
}
