//! The tools the model may call: `exec`, `read_file`, `write_file`,
//! `edit_file`, `append_file` and `list_dir`.
//!
//! There is no deny-list and no path jail: tools run as the agent's Linux
//! user, and the kernel decides what it may do. Every failure (bad
//! arguments, `EACCES`, a missing file, a timeout) becomes a tool result with
//! `is_error` that goes back to the model; nothing here ends the run.

mod exec;
mod files;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use con_llm::ToolSpec;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use exec::EXEC_MAX_TIMEOUT;
use exec::{EXEC_DEFAULT_TIMEOUT, EXEC_OUTPUT_CAP, ExecArgs, exec};
use files::{READ_MAX_LIMIT, READ_PAGE};

/// Where and as whom tools run.
#[derive(Clone, Debug)]
pub struct ToolContext {
    /// The agent's workspace: `exec`'s working directory and the base of
    /// relative paths.
    pub workspace: PathBuf,
    /// The complete environment of commands `exec` runs (built from
    /// scratch: see [`scrubbed_env`]).
    pub env: Vec<(String, String)>,
    /// The run's stop flag: a running command is killed when it is set.
    pub stop: Arc<AtomicBool>,
}

/// The environment of commands the agent runs: PATH, HOME, USER, LOGNAME,
/// LANG and PWD, nothing inherited, so no secret in the run's own
/// environment reaches them.
pub fn scrubbed_env(home: &Path, user: &str, workspace: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), home.display().to_string()),
        ("USER".into(), user.into()),
        ("LOGNAME".into(), user.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("PWD".into(), workspace.display().to_string()),
    ]
}

impl ToolContext {
    /// `path` made absolute against the workspace.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.workspace.join(path)
    }
}

/// What one tool call produced, as the model sees it and as `tool.result`
/// records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    /// Text returned to the model.
    pub content: String,
    /// Whether the call failed (the model is told so).
    pub is_error: bool,
    /// Exit code, for `exec`.
    pub exit_code: Option<i32>,
    /// Whether the output was capped.
    pub truncated: bool,
    /// The failure, in one line, when `is_error`.
    pub error: Option<String>,
}

impl ToolOutput {
    /// A successful result.
    pub fn ok(content: String) -> Self {
        Self {
            content,
            is_error: false,
            exit_code: None,
            truncated: false,
            error: None,
        }
    }

    /// A failed call: the message is both the content and the error.
    pub fn error(message: String) -> Self {
        Self {
            content: format!("error: {message}"),
            is_error: true,
            exit_code: None,
            truncated: false,
            error: Some(message),
        }
    }
}

/// The tool specs offered to the model, with their JSON schemas.
pub fn specs() -> Vec<ToolSpec> {
    let spec = |name: &str, description: String, parameters: Value| ToolSpec {
        name: name.into(),
        description,
        parameters,
    };
    vec![
        spec(
            "exec",
            format!(
                "Run a shell command (/bin/sh -c) in your workspace, as your own Linux user. \
                 Standard output and error are returned together, at most {EXEC_OUTPUT_CAP} bytes \
                 (the total size is reported when more was written). The command and everything \
                 it started are killed after timeout_secs (default {}, at most {}); background \
                 processes do not outlive the command. The environment holds only PATH, HOME, \
                 USER, LOGNAME, LANG and PWD.",
                EXEC_DEFAULT_TIMEOUT.as_secs(),
                EXEC_MAX_TIMEOUT.as_secs()
            ),
            json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command."},
                    "timeout_secs": {
                        "type": "integer", "minimum": 1, "maximum": EXEC_MAX_TIMEOUT.as_secs(),
                        "description": "Seconds before the command is killed."
                    }
                },
                "required": ["command"]
            }),
        ),
        spec(
            "read_file",
            format!(
                "Read a file, one page at a time: `limit` bytes (default {READ_PAGE}, at most \
                 {READ_MAX_LIMIT}) from byte `offset` (default 0). The result says when there is \
                 more and which offset to read next. Relative paths are in your workspace."
            ),
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "offset": {"type": "integer", "minimum": 0},
                    "limit": {"type": "integer", "minimum": 1, "maximum": READ_MAX_LIMIT}
                },
                "required": ["path"]
            }),
        ),
        spec(
            "write_file",
            "Create a file or replace its whole content (missing parent directories are \
             created). Relative paths are in your workspace."
                .into(),
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"}
                },
                "required": ["path", "content"]
            }),
        ),
        spec(
            "edit_file",
            "Replace one exact piece of text in a file. old_text must occur exactly once \
             (include surrounding lines to make it unique); otherwise nothing is changed and \
             the number of matches is reported."
                .into(),
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "old_text": {"type": "string"},
                    "new_text": {"type": "string"}
                },
                "required": ["path", "old_text", "new_text"]
            }),
        ),
        spec(
            "append_file",
            "Append text to the end of a file, creating it (and missing parent directories) \
             if needed."
                .into(),
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"}
                },
                "required": ["path", "content"]
            }),
        ),
        spec(
            "list_dir",
            "List a directory: one entry per line with its type and size, sorted by name. \
             Defaults to your workspace."
                .into(),
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"}
                }
            }),
        ),
    ]
}

/// Runs the tool `name` with the model's `arguments`. `time_left` bounds
/// `exec` (the session's wall clock wins over the model's timeout).
pub fn run(ctx: &ToolContext, name: &str, arguments: &Value, time_left: Duration) -> ToolOutput {
    match name {
        "exec" => match parse::<ExecArgs>(name, arguments) {
            Ok(args) => exec(ctx, &args, time_left),
            Err(e) => e,
        },
        "read_file" => parse(name, arguments).map_or_else(|e| e, |a| files::read_file(ctx, &a)),
        "write_file" => parse(name, arguments).map_or_else(|e| e, |a| files::write_file(ctx, &a)),
        "edit_file" => parse(name, arguments).map_or_else(|e| e, |a| files::edit_file(ctx, &a)),
        "append_file" => parse(name, arguments).map_or_else(|e| e, |a| files::append_file(ctx, &a)),
        "list_dir" => parse(name, arguments).map_or_else(|e| e, |a| files::list_dir(ctx, &a)),
        other => ToolOutput::error(format!(
            "unknown tool {other:?} (available: exec, read_file, write_file, edit_file, \
             append_file, list_dir)"
        )),
    }
}

/// The model's arguments as `T`, or the tool error telling it what is wrong.
fn parse<T: DeserializeOwned>(tool: &str, arguments: &Value) -> Result<T, ToolOutput> {
    if !arguments.is_object() {
        return Err(ToolOutput::error(format!(
            "invalid arguments for {tool}: expected a JSON object, got {arguments}"
        )));
    }
    serde_json::from_value(arguments.clone())
        .map_err(|e| ToolOutput::error(format!("invalid arguments for {tool}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &Path) -> ToolContext {
        ToolContext {
            workspace: dir.to_owned(),
            env: scrubbed_env(dir, "nobody", dir),
            stop: Arc::default(),
        }
    }

    #[test]
    fn every_spec_is_an_object_schema_and_dispatches() {
        let dir = tempfile::tempdir().unwrap();
        for spec in specs() {
            assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
            // Dispatch reaches the tool: a wrong argument type is reported
            // as that tool's invalid arguments, not as an unknown tool.
            let out = run(
                &ctx(dir.path()),
                &spec.name,
                &json!({"path": 7}),
                Duration::from_secs(5),
            );
            assert!(out.is_error, "{}", spec.name);
            assert!(
                out.content
                    .contains(&format!("invalid arguments for {}", spec.name)),
                "{}: {}",
                spec.name,
                out.content
            );
        }
    }

    #[test]
    fn malformed_arguments_are_tool_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let out = run(&c, "exec", &json!("ls"), Duration::from_secs(5));
        assert!(out.is_error);
        assert!(
            out.content.contains("expected a JSON object"),
            "{}",
            out.content
        );
        let out = run(
            &c,
            "write_file",
            &json!({"path": "x"}),
            Duration::from_secs(5),
        );
        assert!(out.is_error);
        assert!(
            out.content.contains("missing field `content`"),
            "{}",
            out.content
        );
        let out = run(&c, "rm_rf", &json!({}), Duration::from_secs(5));
        assert!(out.is_error);
        assert!(
            out.content.contains("unknown tool \"rm_rf\""),
            "{}",
            out.content
        );
    }
}
