#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The scripted server over real loopback HTTP, from blocking and async
//! tests, and as a process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use con_llm_script::{
    ErrorReply, RecordedRequest, Reply, ScriptedServer, Step, Stop, ToolCall, WireFormat,
};
use serde_json::{Value, json};

fn post(url: &str, body: &Value) -> (u16, Option<String>, Value) {
    let r = reqwest::blocking::Client::new()
        .post(url)
        .header("Authorization", "Bearer k")
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry_after, body)
}

#[test]
fn openai_replies_are_realistic() {
    let server = ScriptedServer::start(vec![
        Reply::tool_calls([("exec", json!({"cmd": "ls"})), ("list_dir", json!({}))])
            .with_text("Looking.")
            .with_usage(10, 4)
            .into(),
        Reply::text("done").with_usage(20, 2).into(),
    ]);
    let url = format!("{}/v1/chat/completions", server.base_url());
    let (status, _, body) = post(&url, &json!({"model": "gpt-x", "messages": []}));
    assert_eq!(status, 200);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-x");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Looking.");
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([
            {"id": "call_1", "type": "function",
             "function": {"name": "exec", "arguments": "{\"cmd\":\"ls\"}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "list_dir", "arguments": "{}"}},
        ])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14})
    );

    let (status, _, body) = post(&url, &json!({"model": "gpt-x"}));
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["content"], "done");
    assert!(body["choices"][0]["message"].get("tool_calls").is_none());
}

#[test]
fn anthropic_replies_are_realistic() {
    let server = ScriptedServer::start(vec![
        Reply::tool_calls([("exec", json!({"cmd": "ls"}))])
            .with_usage(7, 3)
            .into(),
        Reply::text("cut").with_stop(Stop::MaxTokens).into(),
    ]);
    let url = format!("{}/v1/messages", server.base_url());
    let (status, _, body) = post(&url, &json!({"model": "claude-x", "messages": []}));
    assert_eq!(status, 200);
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-x");
    assert_eq!(body["stop_reason"], "tool_use");
    assert_eq!(
        body["content"],
        json!([{"type": "tool_use", "id": "toolu_1", "name": "exec", "input": {"cmd": "ls"}}])
    );
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 7, "output_tokens": 3})
    );
    // `/messages` without `/v1` is Anthropic too (a base URL ending in /v1).
    let (_, _, body) = post(&format!("{}/messages", server.base_url()), &json!({}));
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["content"], json!([{"type": "text", "text": "cut"}]));
}

#[test]
fn requests_are_recorded_with_lowercased_headers() {
    let server = ScriptedServer::start(vec![Step::text("a")]);
    let url = format!("{}/api/v1/chat/completions", server.base_url());
    post(
        &url,
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/api/v1/chat/completions");
    assert_eq!(r.format, Some(WireFormat::OpenAi));
    assert_eq!(
        r.headers.get("authorization").map(String::as_str),
        Some("Bearer k")
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.body["messages"][0]["content"], "hi");
    assert!(r.received_at <= std::time::SystemTime::now());
}

#[test]
fn errors_carry_status_retry_after_and_body() {
    let server = ScriptedServer::start(vec![
        ErrorReply::new(429).with_retry_after("2").into(),
        Step::error(500),
        ErrorReply::new(400).with_body("plain words").into(),
    ]);
    let openai = format!("{}/v1/chat/completions", server.base_url());
    let anthropic = format!("{}/v1/messages", server.base_url());
    let (status, retry_after, body) = post(&openai, &json!({}));
    assert_eq!((status, retry_after.as_deref()), (429, Some("2")));
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    let (status, retry_after, body) = post(&anthropic, &json!({}));
    assert_eq!((status, retry_after), (500, None));
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "api_error");
    let (status, _, body) = post(&anthropic, &json!({}));
    assert_eq!((status, body), (400, json!("plain words")));
}

#[test]
fn an_exhausted_script_fails_loudly() {
    let server = ScriptedServer::start(vec![Step::text("only")]);
    let url = format!("{}/v1/chat/completions", server.base_url());
    assert_eq!(post(&url, &json!({})).0, 200);
    let (status, _, body) = post(&url, &json!({}));
    assert_eq!(status, 500);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("script exhausted after 1 steps"),
        "{message}"
    );
    server.push(Step::text("more"));
    assert_eq!(post(&url, &json!({})).0, 200);
    assert_eq!(server.remaining(), 0);
}

#[test]
fn unknown_paths_and_bad_bodies_do_not_consume_steps() {
    let server = ScriptedServer::start(vec![Step::text("kept")]);
    let (status, _, _) = post(&format!("{}/v1/embeddings", server.base_url()), &json!({}));
    assert_eq!(status, 404);
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/messages", server.base_url()))
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(server.remaining(), 1);
    let sent = server.requests();
    assert_eq!(sent[0].format, None);
    assert_eq!(sent[1].body, json!("{not json"));
}

#[test]
fn delays_and_disconnects() {
    let server = ScriptedServer::start(vec![
        Step::text("slow").delayed(Duration::from_millis(300)),
        Step::disconnect(),
    ]);
    let url = format!("{}/v1/messages", server.base_url());
    let started = std::time::Instant::now();
    assert_eq!(post(&url, &json!({})).0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let err = reqwest::blocking::Client::new()
        .post(&url)
        .json(&json!({}))
        .send()
        .unwrap_err();
    assert!(!err.is_status(), "{err}");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_async_tests() {
    let server = ScriptedServer::start(vec![Step::text("async")]);
    let body: Value = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["content"][0]["text"], "async");
    drop(server);
}

#[test]
fn dropping_the_server_closes_the_port() {
    let server = ScriptedServer::start(vec![]);
    let addr = server.addr();
    drop(server);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// The script format documented in the crate docs, verbatim.
const DOC_SCRIPT: &str = r#"[
  {"reply": {"text": "Looking.", "tool_calls": [{"name": "exec", "arguments": {"cmd": "ls"}}],
             "usage": {"input_tokens": 120, "output_tokens": 9}}},
  {"error": {"status": 429, "retry_after": "1"}},
  {"error": {"status": 500, "body": "upstream exploded", "delay_ms": 50}},
  {"disconnect": {}},
  {"reply": {"text": "All done.", "delay_ms": 2000}}
]"#;

#[test]
fn the_documented_json_format_parses() {
    let steps: Vec<Step> = serde_json::from_str(DOC_SCRIPT).unwrap();
    assert_eq!(
        steps,
        vec![
            Step::Reply(
                Reply {
                    text: Some("Looking.".into()),
                    tool_calls: vec![ToolCall {
                        name: "exec".into(),
                        arguments: json!({"cmd": "ls"}),
                        raw_arguments: None,
                    }],
                    ..Reply::default()
                }
                .with_usage(120, 9)
            ),
            ErrorReply::new(429).with_retry_after("1").into(),
            Step::from(ErrorReply::new(500).with_body("upstream exploded"))
                .delayed(Duration::from_millis(50)),
            Step::disconnect(),
            Step::text("All done.").delayed(Duration::from_secs(2)),
        ]
    );
    // Serialising gives the same steps back.
    let again: Vec<Step> = serde_json::from_value(serde_json::to_value(&steps).unwrap()).unwrap();
    assert_eq!(again, steps);
    let typo = serde_json::from_str::<Vec<Step>>(r#"[{"reply": {"txt": "x"}}]"#).unwrap_err();
    assert!(typo.to_string().contains("unknown field `txt`"), "{typo}");
}

#[test]
fn binary_serves_a_script_file() {
    let dir = std::env::temp_dir().join(format!("con-llm-script-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.json");
    std::fs::write(
        &script,
        r#"[{"reply": {"tool_calls": [{"name": "exec", "arguments": {"cmd": "id"}}]}},
            {"reply": {"text": "bye", "usage": {"input_tokens": 5, "output_tokens": 1}}}]"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_con-llm-script"))
        .args([
            "--script",
            script.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let (_, _, first) = post(&format!("{base}/v1/messages"), &json!({"model": "c"}));
    assert_eq!(first["content"][0]["id"], "toolu_1");
    let (_, _, second) = post(
        &format!("{base}/api/v1/chat/completions"),
        &json!({"model": "o"}),
    );
    assert_eq!(second["choices"][0]["message"]["content"], "bye");
    assert_eq!(second["usage"]["total_tokens"], 6);

    let recorded: Vec<RecordedRequest> = reqwest::blocking::get(format!("{base}/_script/requests"))
        .unwrap()
        .json()
        .unwrap();
    let paths: Vec<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/v1/messages", "/api/v1/chat/completions"]);
    assert_eq!(recorded[1].body["model"], "o");

    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binary_rejects_a_bad_script_in_one_line() {
    let dir = std::env::temp_dir().join(format!("con-llm-script-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("bad.json");
    std::fs::write(&script, r#"[{"reply": {"text": "x"}}, {"explode": {}}]"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_con-llm-script"))
        .args(["--script", script.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "script {} is not a JSON array of steps",
            script.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("unknown variant `explode`"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
