//! The provider-neutral chat schema.
//!
//! The runner builds a [`ChatRequest`], sends it (as JSON) to the daemon,
//! which records those exact bytes in `llm.request`, translates them to the
//! configured provider's wire format, and answers with a [`ChatReply`]
//! (recorded in `llm.response`). Replay therefore shows exactly what the model
//! saw, whatever the provider.

use serde::{Deserialize, Serialize};

/// One model call: system prompt, conversation so far, tools on offer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// System prompt (AGENTS.md, skills, framing).
    pub system: String,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Cap on output tokens, if the caller wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// One turn of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// Text from the user side (the task, earlier exchanges).
    User {
        /// The text.
        content: String,
    },
    /// What the model said earlier, including the tools it called (sent
    /// back verbatim: the Anthropic API rejects a history whose `tool_use`
    /// ids or inputs differ from what it produced).
    Assistant {
        /// Text, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        /// Tool calls, in the model's order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallRequest>,
    },
    /// Results of the previous assistant turn's tool calls.
    Tool {
        /// One per call, same ids.
        results: Vec<ToolOutcome>,
    },
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name (`exec`, `read_file`, …).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of its arguments (an `object` schema).
    pub parameters: serde_json::Value,
}

/// The model asking for one tool call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// Provider-assigned id; results refer to it.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as the model gave them (an object when well-formed; the
    /// runner reports anything else back to the model as a tool error).
    pub arguments: serde_json::Value,
}

/// The result of one tool call, as the model will see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolOutcome {
    /// The call's id.
    pub call_id: String,
    /// Output (or error text).
    pub content: String,
    /// Whether the call failed.
    #[serde(default)]
    pub is_error: bool,
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its answer.
    EndTurn,
    /// It wants tool results.
    ToolUse,
    /// It hit the output token cap.
    MaxTokens,
    /// Anything else the provider said, verbatim.
    Other(String),
}

/// Tokens billed for one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// The model's answer to one [`ChatRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    /// Text, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool calls, in order (empty when the model is done).
    #[serde(default)]
    pub tool_calls: Vec<ToolCallRequest>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Tokens billed.
    pub usage: Usage,
}
