//! The OpenAI Chat Completions wire format (OpenRouter, OpenAI, local
//! OpenAI-compatible servers): pure translation, no IO.
//!
//! Requests: the system prompt is a `system` message; an assistant turn's
//! tool calls are `tool_calls` with `function.arguments` as a JSON string;
//! each tool result is its own `tool` message carrying `tool_call_id`. The
//! format has no error flag on tool results, so a failed result's content is
//! prefixed with [`TOOL_ERROR_PREFIX`].

use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{ChatReply, ChatRequest, Message, StopReason, ToolCallRequest, Usage};
use crate::error::LlmError;

/// Prefix that marks a failed tool result, which this format cannot flag.
pub const TOOL_ERROR_PREFIX: &str = "Error: ";

/// The request body for `request` addressed to `model`.
///
/// `max_tokens` is sent only when the request sets it: OpenAI-compatible
/// servers apply their own default, and some models reject the field.
pub fn encode_request(model: &str, request: &ChatRequest) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        messages.push(json!({ "role": "system", "content": request.system }));
    }
    for message in &request.messages {
        match message {
            Message::User { content } => {
                messages.push(json!({ "role": "user", "content": content }));
            }
            Message::Assistant {
                content,
                tool_calls,
            } => {
                let mut m = json!({ "role": "assistant", "content": content });
                if !tool_calls.is_empty() {
                    m["tool_calls"] = tool_calls.iter().map(encode_tool_call).collect();
                } else if content.is_none() {
                    // An assistant message needs content or tool calls.
                    m["content"] = json!("");
                }
                messages.push(m);
            }
            Message::Tool { results } => {
                for r in results {
                    let content = if r.is_error {
                        format!("{TOOL_ERROR_PREFIX}{}", r.content)
                    } else {
                        r.content.clone()
                    };
                    messages.push(json!({
                        "role": "tool",
                        "tool_call_id": r.call_id,
                        "content": content,
                    }));
                }
            }
        }
    }
    let mut body = json!({ "model": model, "messages": messages });
    if !request.tools.is_empty() {
        // Some servers reject an empty `tools` array, so it is omitted then.
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                })
            })
            .collect();
    }
    if let Some(max) = request.max_tokens {
        body["max_tokens"] = json!(max);
    }
    body
}

fn encode_tool_call(call: &ToolCallRequest) -> Value {
    // Arguments the model sent as unparsable text are kept as a JSON string
    // and go back exactly as it wrote them.
    let arguments = match &call.arguments {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    };
    json!({
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": arguments },
    })
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// The neutral reply for a response body (`choices[0]`, `usage`).
pub fn decode_reply(body: &Value) -> Result<ChatReply, LlmError> {
    if body.get("choices").is_none()
        && let Some(error) = body.get("error")
    {
        return Err(LlmError::provider(error));
    }
    let completion = Completion::deserialize(body).map_err(|e| decode_error(e.to_string()))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| decode_error("no choices".into()))?;
    let content = choice.message.content.as_ref().and_then(text_of);
    let tool_calls: Vec<ToolCallRequest> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| ToolCallRequest {
            // A few local servers omit ids; they do not check them either.
            id: c
                .id
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| format!("call_{i}")),
            name: c.function.name,
            arguments: decode_arguments(c.function.arguments),
        })
        .collect();
    let stop = match choice.finish_reason.as_deref() {
        Some("tool_calls" | "function_call") => StopReason::ToolUse,
        // Some compatible servers say `stop` while asking for tools.
        Some("stop") if !tool_calls.is_empty() => StopReason::ToolUse,
        Some("stop") => StopReason::EndTurn,
        Some("length") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_owned()),
        None => StopReason::Other("null".to_owned()),
    };
    let usage = completion.usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u.prompt_tokens.unwrap_or(0),
        output_tokens: u.completion_tokens.unwrap_or(0),
    });
    Ok(ChatReply {
        content,
        tool_calls,
        stop,
        usage,
    })
}

/// Arguments arrive as a JSON string; parse it, or keep the text as a JSON
/// string so the runner can tell the model what was wrong with it.
fn decode_arguments(arguments: Option<Value>) -> Value {
    match arguments {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(raw)) if raw.trim().is_empty() => json!({}),
        Some(Value::String(raw)) => serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
        // Some servers send an object outright.
        Some(other) => other,
    }
}

/// `content` is a string, or (some servers) an array of `{type:"text", text}` parts.
fn text_of(content: &Value) -> Option<String> {
    let text = match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    (!text.is_empty()).then_some(text)
}

fn decode_error(detail: String) -> LlmError {
    LlmError::Decode {
        format: "openai",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::history;

    #[test]
    fn request_wire_shape() {
        insta::assert_json_snapshot!(encode_request("openai/gpt-4o", &history()));
    }

    #[test]
    fn minimal_request_omits_optional_fields() {
        let r = ChatRequest {
            system: String::new(),
            messages: vec![Message::User {
                content: "hi".into(),
            }],
            tools: vec![],
            max_tokens: None,
        };
        assert_eq!(
            encode_request("m", &r),
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn decodes_tool_calls_usage_and_bad_arguments() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "exec", "arguments": "{\"cmd\": \"ls\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "exec", "arguments": "{not json"}},
                ]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        });
        let reply = decode_reply(&body).unwrap();
        assert_eq!(
            reply,
            ChatReply {
                content: None,
                tool_calls: vec![
                    ToolCallRequest {
                        id: "call_a".into(),
                        name: "exec".into(),
                        arguments: json!({"cmd": "ls"}),
                    },
                    ToolCallRequest {
                        id: "call_b".into(),
                        name: "exec".into(),
                        arguments: json!("{not json"),
                    },
                ],
                stop: StopReason::ToolUse,
                usage: Usage {
                    input_tokens: 100,
                    output_tokens: 20,
                },
            }
        );
    }

    #[test]
    fn reply_round_trips_into_the_next_request() {
        let body = json!({
            "choices": [{"finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "call_x", "type": "function",
                    "function": {"name": "exec", "arguments": "{\"cmd\":\"ls\"}"}},
                    {"id": "call_y", "type": "function",
                    "function": {"name": "exec", "arguments": "{broken"}}]}}],
        });
        let reply = decode_reply(&body).unwrap();
        let request = ChatRequest {
            system: String::new(),
            messages: vec![Message::Assistant {
                content: reply.content,
                tool_calls: reply.tool_calls,
            }],
            tools: vec![],
            max_tokens: None,
        };
        let wire = encode_request("m", &request);
        // Ids, names and argument strings go back exactly as received.
        assert_eq!(wire["messages"][0], body["choices"][0]["message"]);
    }

    #[test]
    fn finish_reasons() {
        let reply = |reason: Value| {
            decode_reply(&json!({"choices": [{"finish_reason": reason,
                "message": {"content": "x"}}]}))
            .unwrap()
            .stop
        };
        assert_eq!(reply(json!("stop")), StopReason::EndTurn);
        assert_eq!(reply(json!("length")), StopReason::MaxTokens);
        assert_eq!(
            reply(json!("content_filter")),
            StopReason::Other("content_filter".into())
        );
        let stop_with_tools = decode_reply(&json!({"choices": [{"finish_reason": "stop",
            "message": {"tool_calls": [{"id": "c", "function": {"name": "exec", "arguments": ""}}]}}]}))
        .unwrap();
        assert_eq!(stop_with_tools.stop, StopReason::ToolUse);
        assert_eq!(stop_with_tools.tool_calls[0].arguments, json!({}));
        assert_eq!(stop_with_tools.usage, Usage::default());
    }

    #[test]
    fn error_bodies_and_garbage_are_errors() {
        let err = decode_reply(&json!({"error": {"message": "No endpoints found", "code": 404}}))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider reported an error: No endpoints found"
        );
        let err = decode_reply(&json!({"choices": []})).unwrap_err();
        assert_eq!(err.to_string(), "unreadable openai response: no choices");
        assert!(decode_reply(&json!({"choices": "x"})).is_err());
    }
}
