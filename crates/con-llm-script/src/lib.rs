//! A scripted LLM server for tests: real HTTP on loopback, speaking both
//! provider wire formats, answering each model call with the next step of a
//! script.
//!
//! The request path picks the format: a path ending in `/chat/completions`
//! is answered in the OpenAI Chat Completions format, one ending in
//! `/messages` (so `/v1/messages` too) in the Anthropic Messages format. Every
//! request is recorded (path, lower-cased headers, JSON body) so tests can
//! assert exactly what the client sent.
//!
//! ```no_run
//! use con_llm_script::{ScriptedServer, Step, Reply};
//! use serde_json::json;
//!
//! let server = ScriptedServer::start(vec![
//!     Step::tool_call("exec", json!({"cmd": "ls"})),
//!     Reply::text("done").with_usage(120, 8).into(),
//! ]);
//! let base = server.base_url(); // http://127.0.0.1:PORT
//! // … point the client at `{base}/v1` (OpenAI) or `{base}` (Anthropic) …
//! let sent = server.requests();
//! # drop((base, sent));
//! ```
//!
//! The server runs on its own thread with its own Tokio runtime, so it works
//! the same from plain `#[test]`s and from async tests; it stops when the
//! [`ScriptedServer`] is dropped. When the script runs out, every further
//! model call gets a 500 whose body says so, so a test that makes more calls
//! than it scripted fails loudly.
//!
//! # The JSON script format
//!
//! The `con-llm-script` binary (`con-llm-script --script FILE --listen
//! 127.0.0.1:PORT`, which prints its base URL on stdout and serves until
//! killed) reads a JSON array of steps. Each step is an object with exactly
//! one key:
//!
//! ```json
//! [
//!   {"reply": {"text": "Looking.", "tool_calls": [{"name": "exec", "arguments": {"cmd": "ls"}}],
//!              "usage": {"input_tokens": 120, "output_tokens": 9}}},
//!   {"error": {"status": 429, "retry_after": "1"}},
//!   {"error": {"status": 500, "body": "upstream exploded", "delay_ms": 50}},
//!   {"disconnect": {}},
//!   {"reply": {"text": "All done.", "delay_ms": 2000}}
//! ]
//! ```
//!
//! - `reply`: `text` (optional), `tool_calls` (optional; each `name`,
//!   `arguments` — default `{}` — and, OpenAI only, `raw_arguments`, a
//!   string sent verbatim as `function.arguments` to script malformed JSON),
//!   `usage` (`input_tokens`, `output_tokens`, default 0), `stop`
//!   (`end_turn` | `tool_use` | `max_tokens`; default `tool_use` when there
//!   are tool calls, else `end_turn`), `delay_ms`. Tool-call ids are
//!   generated, unique per server: `call_1`, `call_2`, … (OpenAI) and
//!   `toolu_1`, … (Anthropic).
//! - `error`: `status` (any HTTP status, even 200 with a broken `body`),
//!   `retry_after` (the `Retry-After` header, verbatim: seconds or an
//!   HTTP-date), `body` (verbatim; by default the provider's usual error
//!   JSON), `delay_ms`.
//! - `disconnect`: read the request, wait `delay_ms`, close the connection
//!   without answering.
//!
//! Unknown keys are errors. A process started from the binary also answers
//! `GET /_script/requests` with the recorded requests as JSON (an array of
//! [`RecordedRequest`]), for suites that cannot call [`ScriptedServer::requests`].

mod server;
mod step;
mod wire;

pub use server::{RecordedRequest, ScriptedServer};
pub use step::{Disconnect, ErrorReply, Reply, ScriptUsage, Step, Stop, ToolCall};
pub use wire::WireFormat;

/// Path of the endpoint listing recorded requests.
pub const REQUESTS_PATH: &str = "/_script/requests";
