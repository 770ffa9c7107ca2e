//! Fixtures shared by the unit tests.

use serde_json::json;

use crate::chat::{ChatRequest, Message, ToolCallRequest, ToolOutcome, ToolSpec};

/// A multi-turn history: user, assistant with text and two tool calls,
/// their results (one failed), assistant, user.
pub(crate) fn history() -> ChatRequest {
    ChatRequest {
        system: "You are a-alice.".into(),
        messages: vec![
            Message::User {
                content: "List the workspace.".into(),
            },
            Message::Assistant {
                content: Some("Looking.".into()),
                tool_calls: vec![
                    ToolCallRequest {
                        id: "call_1".into(),
                        name: "exec".into(),
                        arguments: json!({"cmd": "ls -la"}),
                    },
                    ToolCallRequest {
                        id: "call_2".into(),
                        name: "read_file".into(),
                        arguments: json!({"path": "missing.txt"}),
                    },
                ],
            },
            Message::Tool {
                results: vec![
                    ToolOutcome {
                        call_id: "call_1".into(),
                        content: "a.txt\nb.txt".into(),
                        is_error: false,
                    },
                    ToolOutcome {
                        call_id: "call_2".into(),
                        content: "missing.txt: No such file or directory".into(),
                        is_error: true,
                    },
                ],
            },
            Message::Assistant {
                content: Some("Two files.".into()),
                tool_calls: vec![],
            },
            Message::User {
                content: "Thanks.".into(),
            },
        ],
        tools: vec![ToolSpec {
            name: "exec".into(),
            description: "Run a shell command.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"cmd": {"type": "string"}},
                "required": ["cmd"],
            }),
        }],
        max_tokens: Some(512),
    }
}
