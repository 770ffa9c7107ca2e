#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real client against the scripted server over real loopback HTTP.

use std::time::{Duration, Instant};

use con_llm::{
    ChatReply, ChatRequest, Endpoint, LlmClient, LlmError, Message, Price, ProviderKind, Secret,
    StopReason, ToolCallRequest, ToolOutcome, ToolSpec, Usage,
};
use con_llm_script::{ErrorReply, Reply, ScriptedServer, Step, ToolCall, WireFormat};
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-or-test-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";

fn openai(server: &ScriptedServer) -> Endpoint {
    fast(
        Endpoint::new(
            ProviderKind::OpenAiCompatible,
            format!("{}/api/v1", server.base_url()),
            "openai/gpt-4o-mini",
        )
        .with_api_key(Secret::new(OPENAI_KEY)),
    )
}

fn anthropic(server: &ScriptedServer) -> Endpoint {
    fast(
        Endpoint::new(
            ProviderKind::Anthropic,
            server.base_url(),
            "claude-sonnet-4-5",
        )
        .with_api_key(Secret::new(ANTHROPIC_KEY)),
    )
}

/// Short backoff so retry tests take milliseconds, not seconds.
fn fast(mut e: Endpoint) -> Endpoint {
    e.timeout = Duration::from_secs(10);
    e.backoff_base = Duration::from_millis(10);
    e.backoff_cap = Duration::from_secs(5);
    e
}

fn exec_tool() -> ToolSpec {
    ToolSpec {
        name: "exec".into(),
        description: "Run a shell command in the workspace.".into(),
        parameters: json!({"type": "object", "properties": {"cmd": {"type": "string"}},
                           "required": ["cmd"]}),
    }
}

fn task(text: &str) -> ChatRequest {
    ChatRequest {
        system: "You are a-alice. Be brief.".into(),
        messages: vec![Message::User {
            content: text.into(),
        }],
        tools: vec![exec_tool()],
        max_tokens: None,
    }
}

/// Appends the reply and a result per tool call, as the runner does.
fn continue_with(request: &mut ChatRequest, reply: &ChatReply, outputs: &[(&str, bool)]) {
    request.messages.push(Message::Assistant {
        content: reply.content.clone(),
        tool_calls: reply.tool_calls.clone(),
    });
    request.messages.push(Message::Tool {
        results: reply
            .tool_calls
            .iter()
            .zip(outputs)
            .map(|(call, (content, is_error))| ToolOutcome {
                call_id: call.id.clone(),
                content: (*content).into(),
                is_error: *is_error,
            })
            .collect(),
    });
}

fn client() -> LlmClient {
    LlmClient::new().unwrap()
}

#[tokio::test]
async fn openai_tool_loop_round_trips_history() {
    let server = ScriptedServer::start(vec![
        Reply::tool_calls([
            ("exec", json!({"cmd": "ls -la"})),
            ("exec", json!({"cmd": "cat missing"})),
        ])
        .with_text("Let me look.")
        .with_usage(1200, 40)
        .into(),
        Reply::text("Two files; one is missing.")
            .with_usage(1400, 12)
            .into(),
    ]);
    let endpoint = openai(&server);
    let client = client();
    let mut request = task("What is in the workspace?");

    let first = client.call(&endpoint, &request).await;
    assert_eq!((first.attempts, first.status), (1, Some(200)));
    let reply = first.result.unwrap();
    assert_eq!(reply.stop, StopReason::ToolUse);
    assert_eq!(reply.content.as_deref(), Some("Let me look."));
    assert_eq!(
        reply.tool_calls,
        vec![
            ToolCallRequest {
                id: "call_1".into(),
                name: "exec".into(),
                arguments: json!({"cmd": "ls -la"}),
            },
            ToolCallRequest {
                id: "call_2".into(),
                name: "exec".into(),
                arguments: json!({"cmd": "cat missing"}),
            },
        ]
    );
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 1200,
            output_tokens: 40
        }
    );

    continue_with(
        &mut request,
        &reply,
        &[("a.txt\n", false), ("cat: missing: No such file", true)],
    );
    let second = client.call(&endpoint, &request).await.result.unwrap();
    assert_eq!(second.stop, StopReason::EndTurn);
    assert_eq!(
        second.content.as_deref(),
        Some("Two files; one is missing.")
    );
    assert!(second.tool_calls.is_empty());

    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    for r in &sent {
        assert_eq!(r.path, "/api/v1/chat/completions");
        assert_eq!(r.format, Some(WireFormat::OpenAi));
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {OPENAI_KEY}"))
        );
        assert_eq!(r.header("x-api-key"), None);
        assert_eq!(r.body["model"], "openai/gpt-4o-mini");
    }
    let body = &sent[1].body;
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are a-alice. Be brief."},
            {"role": "user", "content": "What is in the workspace?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "exec", "arguments": "{\"cmd\":\"ls -la\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "exec", "arguments": "{\"cmd\":\"cat missing\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\n"},
            {"role": "tool", "tool_call_id": "call_2",
             "content": "Error: cat: missing: No such file"},
        ])
    );
    assert_eq!(body["tools"][0]["function"]["name"], "exec");
    assert_eq!(
        body["tools"][0]["function"]["parameters"],
        exec_tool().parameters
    );
    assert!(body.get("max_tokens").is_none());
}

#[tokio::test]
async fn anthropic_tool_loop_round_trips_history() {
    let server = ScriptedServer::start(vec![
        Reply::tool_calls([
            ("exec", json!({"cmd": "ls", "timeout_s": 30})),
            (
                "read_file",
                json!({"path": "notes.md", "range": {"from": 1, "to": 40}}),
            ),
        ])
        .with_text("Checking two things.")
        .with_usage(900, 55)
        .into(),
        Step::tool_call("exec", json!({"cmd": "wc -l notes.md"})),
        Reply::text("notes.md has 3 lines.")
            .with_usage(1500, 9)
            .into(),
    ]);
    let endpoint = anthropic(&server);
    let client = client();
    let mut request = task("Summarise notes.md");

    let first = client.call(&endpoint, &request).await.result.unwrap();
    assert_eq!(first.stop, StopReason::ToolUse);
    assert_eq!(first.content.as_deref(), Some("Checking two things."));
    let ids: Vec<&str> = first.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["toolu_1", "toolu_2"]);
    continue_with(
        &mut request,
        &first,
        &[("notes.md\n", false), ("line 1", false)],
    );

    let second = client.call(&endpoint, &request).await.result.unwrap();
    assert_eq!(second.content, None);
    assert_eq!(second.tool_calls[0].id, "toolu_3");
    continue_with(&mut request, &second, &[("wc: exploded", true)]);

    let third = client.call(&endpoint, &request).await;
    let third_reply = third.result.unwrap();
    assert_eq!(third_reply.stop, StopReason::EndTurn);
    assert_eq!(
        third_reply.content.as_deref(),
        Some("notes.md has 3 lines.")
    );

    let sent = server.requests();
    assert_eq!(sent.len(), 3);
    for r in &sent {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.format, Some(WireFormat::Anthropic));
        assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.body["system"], "You are a-alice. Be brief.");
        assert_eq!(r.body["max_tokens"], Endpoint::DEFAULT_MAX_TOKENS);
        assert_eq!(r.body["tools"][0]["input_schema"], exec_tool().parameters);
    }
    let messages = &sent[2].body["messages"];
    assert!(
        messages
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["role"] != "system"),
        "system prompt must be top level only"
    );
    assert_eq!(
        *messages,
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Summarise notes.md"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking two things."},
                {"type": "tool_use", "id": "toolu_1", "name": "exec",
                 "input": {"cmd": "ls", "timeout_s": 30}},
                {"type": "tool_use", "id": "toolu_2", "name": "read_file",
                 "input": {"path": "notes.md", "range": {"from": 1, "to": 40}}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "notes.md\n", "is_error": false},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "line 1", "is_error": false}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_3", "name": "exec",
                 "input": {"cmd": "wc -l notes.md"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_3", "content": "wc: exploded", "is_error": true}]},
        ])
    );
}

#[tokio::test]
async fn usage_and_cost() {
    let server = ScriptedServer::start(vec![
        Reply::text("a").with_usage(123_456, 7_890).into(),
        Reply::text("b").with_usage(10, 1).into(),
    ]);
    let price = Price {
        input_usd_per_mtok: 3.0,
        output_usd_per_mtok: 15.0,
    };
    let client = client();
    let a = client
        .call(&anthropic(&server), &task("x"))
        .await
        .result
        .unwrap();
    assert_eq!(
        a.usage,
        Usage {
            input_tokens: 123_456,
            output_tokens: 7_890
        }
    );
    // 123456 × 3 + 7890 × 15 µUSD.
    assert_eq!(price.cost_micro_usd(&a.usage), 488_718);
    let b = client
        .call(&openai(&server), &task("x"))
        .await
        .result
        .unwrap();
    let cheap = Price {
        input_usd_per_mtok: 0.15,
        output_usd_per_mtok: 0.6,
    };
    // 10 × 0.15 + 1 × 0.6 = 2.1 µUSD, rounded up.
    assert_eq!(cheap.cost_micro_usd(&b.usage), 3);
}

#[tokio::test]
async fn no_key_sends_no_auth_header() {
    let server = ScriptedServer::start(vec![Step::text("hi"), Step::text("hi")]);
    let mut local = openai(&server);
    local.api_key = None;
    let mut claude = anthropic(&server);
    claude.api_key = None;
    let client = client();
    client.call(&local, &task("x")).await.result.unwrap();
    client.call(&claude, &task("x")).await.result.unwrap();
    for r in server.requests() {
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("x-api-key"), None);
    }
}

#[tokio::test]
async fn malformed_arguments_reach_the_runner_and_go_back_verbatim() {
    let server = ScriptedServer::start(vec![
        Step::Reply(Reply {
            tool_calls: vec![ToolCall {
                name: "exec".into(),
                arguments: json!({}),
                raw_arguments: Some("{\"cmd\": \"ls\"".into()),
            }],
            ..Reply::default()
        }),
        Step::text("sorry"),
    ]);
    let endpoint = openai(&server);
    let client = client();
    let mut request = task("x");
    let reply = client.call(&endpoint, &request).await.result.unwrap();
    assert_eq!(
        reply.tool_calls[0].arguments,
        Value::String("{\"cmd\": \"ls\"".into())
    );
    continue_with(
        &mut request,
        &reply,
        &[("arguments are not valid JSON", true)],
    );
    client.call(&endpoint, &request).await.result.unwrap();
    let sent = server.requests();
    assert_eq!(
        sent[1].body["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"cmd\": \"ls\""
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = ScriptedServer::start(vec![
        ErrorReply::new(429).with_retry_after("1").into(),
        Step::text("ok"),
    ]);
    let started = Instant::now();
    let outcome = client().call(&openai(&server), &task("x")).await;
    let elapsed = started.elapsed();
    assert_eq!(outcome.result.unwrap().content.as_deref(), Some("ok"));
    assert_eq!((outcome.attempts, outcome.status), (2, Some(200)));
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(outcome.latency >= Duration::from_secs(1));
    let sent = server.requests();
    let gap = sent[1]
        .received_at
        .duration_since(sent[0].received_at)
        .unwrap();
    assert!(gap >= Duration::from_secs(1), "{gap:?}");
}

#[tokio::test]
async fn retry_after_is_capped() {
    let server = ScriptedServer::start(vec![
        ErrorReply::new(429).with_retry_after("30").into(),
        Step::text("ok"),
    ]);
    let mut endpoint = anthropic(&server);
    endpoint.backoff_cap = Duration::from_millis(100);
    let started = Instant::now();
    let outcome = client().call(&endpoint, &task("x")).await;
    assert_eq!(outcome.attempts, 2);
    outcome.result.unwrap();
    // Far below the 30 s asked for: only shows the cap applied.
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn server_errors_are_retried() {
    let server = ScriptedServer::start(vec![Step::error(500), Step::error(503), Step::text("ok")]);
    let outcome = client().call(&anthropic(&server), &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (3, Some(200)));
    assert_eq!(outcome.result.unwrap().content.as_deref(), Some("ok"));
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let server = ScriptedServer::start(vec![
        Step::error(502),
        Step::error(529),
        Step::text("never reached"),
    ]);
    let mut endpoint = anthropic(&server);
    endpoint.max_attempts = 2;
    let outcome = client().call(&endpoint, &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (2, Some(529)));
    match outcome.result.unwrap_err() {
        LlmError::Status { status, excerpt } => {
            assert_eq!(status, 529);
            assert!(excerpt.contains("overloaded_error"), "{excerpt}");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(server.remaining(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = ScriptedServer::start(vec![
        ErrorReply::new(400)
            .with_body(r#"{"error":{"message":"messages: tool_use ids must be unique"}}"#)
            .into(),
        Step::text("never reached"),
    ]);
    let outcome = client().call(&openai(&server), &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (1, Some(400)));
    let err = outcome.result.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"provider answered HTTP 400: {"error":{"message":"messages: tool_use ids must be unique"}}"#
    );
    assert_eq!(server.remaining(), 1);
}

#[tokio::test]
async fn an_echoed_key_is_redacted() {
    let server = ScriptedServer::start(vec![
        ErrorReply::new(401)
            .with_body(format!(
                "Incorrect API key provided: {OPENAI_KEY}.\nCheck it."
            ))
            .into(),
    ]);
    let endpoint = openai(&server);
    let outcome = client().call(&endpoint, &task("x")).await;
    assert_eq!(outcome.attempts, 1);
    let shown = format!("{:?} {}", outcome, outcome.result.as_ref().unwrap_err());
    assert!(!shown.contains(OPENAI_KEY), "{shown}");
    assert!(
        shown.contains("Incorrect API key provided: <redacted>. Check it."),
        "{shown}"
    );
    let endpoint_debug = format!("{endpoint:?}");
    assert!(!endpoint_debug.contains(OPENAI_KEY), "{endpoint_debug}");
}

#[tokio::test]
async fn slow_replies_time_out_and_are_retried() {
    let server = ScriptedServer::start(vec![
        Step::text("too late").delayed(Duration::from_secs(5)),
        Step::text("in time"),
    ]);
    let mut endpoint = openai(&server);
    // Generous, so the prompt second reply is in time even on a loaded machine.
    endpoint.timeout = Duration::from_secs(1);
    let outcome = client().call(&endpoint, &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (2, Some(200)));
    assert_eq!(outcome.result.unwrap().content.as_deref(), Some("in time"));
}

#[tokio::test]
async fn all_attempts_timing_out_is_a_timeout_error() {
    let slow = || Step::text("too late").delayed(Duration::from_secs(3));
    let server = ScriptedServer::start(vec![slow(), slow()]);
    let mut endpoint = anthropic(&server);
    endpoint.timeout = Duration::from_millis(200);
    endpoint.max_attempts = 2;
    let started = Instant::now();
    let outcome = client().call(&endpoint, &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (2, None));
    assert_eq!(
        outcome.result.unwrap_err(),
        LlmError::Timeout {
            after: Duration::from_millis(200)
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let server = ScriptedServer::start(vec![Step::disconnect(), Step::text("back")]);
    let outcome = client().call(&anthropic(&server), &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (2, Some(200)));
    assert_eq!(outcome.result.unwrap().content.as_deref(), Some("back"));
}

#[tokio::test]
async fn unreachable_server_is_a_transport_error() {
    // A port that was just free: nothing listens there. Over HTTPS the
    // connection is tried (TLS would check the server) and refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut endpoint = fast(Endpoint::new(
        ProviderKind::OpenAiCompatible,
        format!("https://127.0.0.1:{port}/v1"),
        "m",
    ));
    endpoint.max_attempts = 3;
    let outcome = client().call(&endpoint, &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (3, None));
    let err = outcome.result.unwrap_err();
    assert!(matches!(err, LlmError::Transport { .. }), "{err}");
    let message = err.to_string();
    assert!(message.starts_with(&format!(
        "cannot reach https://127.0.0.1:{port}/v1/chat/completions: "
    )));
    assert!(!message.contains('\n'));
}

#[tokio::test]
async fn plain_http_to_an_empty_local_port_is_not_sent_and_is_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut endpoint = fast(Endpoint::new(
        ProviderKind::OpenAiCompatible,
        format!("http://127.0.0.1:{port}/v1"),
        "m",
    ));
    endpoint.max_attempts = 3;
    let outcome = client().call(&endpoint, &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (3, None));
    let err = outcome.result.unwrap_err();
    assert!(matches!(err, LlmError::NoListener { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "refused to send to http://127.0.0.1:{port}/v1/chat/completions: nothing listens on 127.0.0.1:{port} (port {port})"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_success_body_is_a_decode_error_without_retry() {
    let server = ScriptedServer::start(vec![
        ErrorReply::new(200)
            .with_body("<html>gateway</html>")
            .into(),
        Step::text("never reached"),
    ]);
    let outcome = client().call(&openai(&server), &task("x")).await;
    assert_eq!((outcome.attempts, outcome.status), (1, Some(200)));
    let err = outcome.result.unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::Decode {
                format: "openai",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn max_tokens_stop_is_reported() {
    let server = ScriptedServer::start(vec![
        Reply::text("trunc")
            .with_stop(con_llm_script::Stop::MaxTokens)
            .into(),
        Reply::text("trunc")
            .with_stop(con_llm_script::Stop::MaxTokens)
            .into(),
    ]);
    let mut request = task("x");
    request.max_tokens = Some(16);
    let client = client();
    for endpoint in [openai(&server), anthropic(&server)] {
        let reply = client.call(&endpoint, &request).await.result.unwrap();
        assert_eq!(reply.stop, StopReason::MaxTokens);
    }
    let sent = server.requests();
    assert_eq!(sent[0].body["max_tokens"], 16);
    assert_eq!(sent[1].body["max_tokens"], 16);
}
