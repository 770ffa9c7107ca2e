//! Rerun: a recorded session's tool calls, run again and compared with
//! what was recorded (`con replay --rerun`).
//!
//! This module is the pure part: which calls the recorded model replies
//! asked for and the session ran ([`recorded_calls`]), whether each may be
//! run again in a scratch copy of the agent's workspace and with which
//! arguments ([`prepare`]), how an output written there reads with the
//! live paths put back ([`unmap`]), what the comparison says ([`compare`])
//! and the report's text view ([`text`]). Running the calls (as an
//! unprivileged user, without network, in the copy) is the caller's: no
//! model is called here or there, since the replies are the recorded ones.

use std::fmt::{self, Write};
use std::path::{Component, Path, PathBuf};

use con_event::escape_control;
use serde::Serialize;
use serde_json::Value;

use crate::Content;
use crate::timeline::{Step, Timeline};

/// The runner whose calls can be run again: the built-in tool loop.
pub const BUILTIN_RUNNER: &str = "builtin";

/// What a session ran, as far as the record says.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedSession {
    /// The agent.
    pub agent: String,
    /// Its runner (`builtin`, `claude`, `exec:…`), if `session.started`
    /// was among the events.
    pub runner: Option<String>,
    /// Its tool calls, in recorded order.
    pub calls: Vec<RecordedCall>,
}

/// One `tool.call` and what it produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedCall {
    /// Seq of the `tool.call`.
    pub seq: u64,
    /// The provider's call id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// Its arguments (JSON as the model sent them): the `tool.call`'s
    /// content, or the reply's when that content is unavailable.
    pub arguments: Option<String>,
    /// Seq of the `llm.response` whose recorded reply asked for it.
    pub asked_by: Option<u64>,
    /// Its `tool.result`, if one was recorded.
    pub result: Option<RecordedResult>,
}

/// A recorded `tool.result`.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedResult {
    /// Its seq.
    pub seq: u64,
    /// Exit code, for `exec`.
    pub exit_code: Option<i32>,
    /// The output returned to the model.
    pub output: Content,
    /// How long it took.
    pub duration_ms: u64,
}

/// The tool calls of `t`, each with the reply that asked for it and its
/// result.
pub fn recorded_calls(t: &Timeline) -> RecordedSession {
    let mut runner = None;
    let mut calls: Vec<RecordedCall> = Vec::new();
    // (seq of the reply, call id, arguments it gave), latest reply last.
    let mut asked: Vec<(u64, Option<String>, String)> = Vec::new();
    for entry in &t.entries {
        match &entry.step {
            Step::Started { runner: r, .. } => runner = Some(r.clone()),
            Step::Response { tool_calls, .. } => {
                asked.extend(
                    tool_calls
                        .iter()
                        .map(|c| (entry.seq, c.id.clone(), c.arguments.clone())),
                );
            }
            Step::ToolCall {
                call_id,
                tool,
                arguments,
            } => {
                let reply = asked
                    .iter()
                    .rev()
                    .find(|(_, id, _)| id.as_deref() == Some(call_id.as_str()));
                calls.push(RecordedCall {
                    seq: entry.seq,
                    call_id: call_id.clone(),
                    tool: tool.clone(),
                    arguments: arguments
                        .text()
                        .or_else(|| reply.map(|(_, _, a)| a.clone())),
                    asked_by: reply.map(|(seq, _, _)| *seq),
                    result: None,
                });
            }
            Step::ToolResult {
                call_id,
                exit_code,
                duration_ms,
                output,
                ..
            } => {
                if let Some(call) = calls
                    .iter_mut()
                    .rev()
                    .find(|c| c.call_id == *call_id && c.result.is_none())
                {
                    call.result = Some(RecordedResult {
                        seq: entry.seq,
                        exit_code: *exit_code,
                        output: output.clone(),
                        duration_ms: *duration_ms,
                    });
                }
            }
            _ => {}
        }
    }
    RecordedSession {
        agent: t.agent.clone(),
        runner,
        calls,
    }
}

/// Why a call was not run again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReproduced {
    /// A file tool's path lies outside the workspace (absolute elsewhere,
    /// `..` out of it, or a symlink in the copy that leads out).
    Outside {
        /// `reads` or `writes`.
        verb: &'static str,
        /// The path, made absolute.
        path: String,
        /// How it left the workspace, when not by its spelling.
        how: Option<String>,
    },
    /// The session ran an agent CLI, not the built-in tool loop.
    Runner(String),
    /// Neither the call's arguments nor the reply's could be read.
    ArgumentsUnavailable,
    /// No `tool.result` was recorded (the session was stopped during the
    /// call): nothing to compare with.
    NoResult,
    /// The recorded output could not be read (not the caller's, or gone).
    OutputUnavailable,
    /// The rerun itself failed.
    Failed(String),
}

impl fmt::Display for NotReproduced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Outside {
                verb,
                path,
                how: None,
            } => write!(f, "{verb} {path} outside the workspace"),
            Self::Outside {
                verb,
                path,
                how: Some(how),
            } => write!(f, "{verb} {path} outside the workspace ({how})"),
            Self::Runner(r) => write!(
                f,
                "the session's runner is {r}, an agent CLI that would call its own model; \
                 only the built-in tool loop's calls are rerun"
            ),
            Self::ArgumentsUnavailable => f.write_str("its arguments are unavailable"),
            Self::NoResult => f.write_str(
                "no tool.result was recorded (the session stopped during the call): \
                 nothing to compare with",
            ),
            Self::OutputUnavailable => f.write_str("the recorded output is unavailable"),
            Self::Failed(why) => write!(f, "the rerun failed: {why}"),
        }
    }
}

impl NotReproduced {
    /// A short name for the reason, for the summary and the JSON view.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Outside { .. } => "outside_workspace",
            Self::Runner(_) => "agent_cli",
            Self::ArgumentsUnavailable => "arguments_unavailable",
            Self::NoResult => "no_result",
            Self::OutputUnavailable => "output_unavailable",
            Self::Failed(_) => "failed",
        }
    }
}

/// The agent's live workspace and its scratch copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workspaces {
    /// Where the agent's workspace is (what the recorded paths name).
    pub live: PathBuf,
    /// Where the copy is.
    pub scratch: PathBuf,
}

/// A call ready to run in the copy.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Prepared {
    /// The tool.
    pub tool: String,
    /// Its arguments, with paths under the workspace moved into the copy.
    pub arguments: Value,
    /// The path a file tool will open, in the copy, for the runner to
    /// check (after resolving symlinks) right before it runs the call;
    /// `None` for `exec`.
    pub path: Option<PathBuf>,
    /// `reads` or `writes`, for that check's message.
    pub verb: Option<String>,
}

/// `path` with `.` and `..` resolved by spelling alone (`..` at `/`
/// stays at `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::CurDir => {}
            Component::RootDir => out.push("/"),
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// The file tools, what they do with their `path` (`reads` or `writes`),
/// and its default.
pub fn file_tool(tool: &str) -> Option<(&'static str, Option<&'static str>)> {
    match tool {
        "read_file" => Some(("reads", None)),
        "list_dir" => Some(("reads", Some("."))),
        "write_file" | "append_file" | "edit_file" => Some(("writes", None)),
        _ => None,
    }
}

/// Whether `call` of a session run by `runner` may run again in the copy,
/// and with which arguments: a file tool's path must lie in the live
/// workspace by its spelling (it is then moved into the copy); `exec`'s
/// command has the live workspace's path replaced by the copy's (a
/// command cannot be checked for the paths it touches: the caller runs it
/// where it can do no harm). Any other tool runs as recorded (the runner
/// answers an unknown one with the same error).
pub fn prepare(
    call: &RecordedCall,
    runner: Option<&str>,
    ws: &Workspaces,
) -> Result<Prepared, NotReproduced> {
    if let Some(r) = runner.filter(|r| *r != BUILTIN_RUNNER) {
        return Err(NotReproduced::Runner(r.to_owned()));
    }
    let Some(result) = &call.result else {
        return Err(NotReproduced::NoResult);
    };
    if result.output.bytes.is_none() {
        return Err(NotReproduced::OutputUnavailable);
    }
    let Some(text) = &call.arguments else {
        return Err(NotReproduced::ArgumentsUnavailable);
    };
    // Arguments that are not JSON run as such: the runner answers them
    // with the same error it gave the model.
    let mut arguments: Value =
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
    let mut prepared = Prepared {
        tool: call.tool.clone(),
        arguments: Value::Null,
        path: None,
        verb: None,
    };
    if call.tool == "exec" {
        if let Some(Value::String(command)) = arguments.get_mut("command") {
            *command = replace_path(command, &ws.live, &ws.scratch);
        }
    } else if let Some((verb, default)) = file_tool(&call.tool) {
        let given = match arguments.get("path") {
            Some(Value::String(p)) => Some(p.clone()),
            None | Some(Value::Null) => default.map(str::to_owned),
            // A path that is not a string: the runner's own error.
            Some(_) => None,
        };
        if let Some(given) = given {
            let absolute = normalize(&ws.live.join(&given));
            let Ok(inside) = absolute.strip_prefix(&ws.live) else {
                return Err(NotReproduced::Outside {
                    verb,
                    path: absolute.display().to_string(),
                    how: None,
                });
            };
            let in_copy = if inside.as_os_str().is_empty() {
                ws.scratch.clone()
            } else {
                ws.scratch.join(inside)
            };
            // A plain relative path stays as given, so the runner's
            // messages name it as they did; anything else is spelled in
            // the copy.
            let plain = Path::new(&given).is_relative()
                && !Path::new(&given)
                    .components()
                    .any(|c| c == Component::ParentDir);
            if !plain && let Some(obj) = arguments.as_object_mut() {
                obj.insert("path".into(), Value::String(in_copy.display().to_string()));
            }
            prepared.path = Some(in_copy);
            prepared.verb = Some(verb.to_owned());
        }
    }
    prepared.arguments = arguments;
    Ok(prepared)
}

/// `text` with every occurrence of the path `from` written as `to`.
fn replace_path(text: &str, from: &Path, to: &Path) -> String {
    match (from.to_str(), to.to_str()) {
        (Some(f), Some(t)) if !f.is_empty() && f != "/" => text.replace(f, t),
        _ => text.to_owned(),
    }
}

/// An output written in the copy with the live paths put back: each
/// `(scratch, live)` pair, longest scratch path first, so that `pwd` or
/// "wrote 3 bytes to …" reads as it did in the session.
pub fn unmap(output: &str, pairs: &[(PathBuf, PathBuf)]) -> String {
    let mut pairs: Vec<&(PathBuf, PathBuf)> = pairs.iter().collect();
    pairs.sort_by_key(|(s, _)| std::cmp::Reverse(s.as_os_str().len()));
    pairs
        .into_iter()
        .fold(output.to_owned(), |out, (s, l)| replace_path(&out, s, l))
}

/// What a call produced when run again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RerunResult {
    /// Exit code, for `exec`.
    pub exit_code: Option<i32>,
    /// The output as the model would have seen it, with the live paths
    /// put back ([`unmap`]).
    pub output: String,
    /// How long it took.
    pub duration_ms: u64,
}

/// How a rerun compares with the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same exit code and output.
    Same,
    /// Not the same.
    Differs(Difference),
    /// Not run again.
    NotReproduced(NotReproduced),
}

/// Where a rerun's result first departs from the recorded one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The recorded exit code and the rerun's, when they differ.
    pub exit_codes: Option<(Option<i32>, Option<i32>)>,
    /// The first line (numbered from 1) where the outputs differ: the
    /// recorded line and the rerun's (`None` past the end of either).
    pub line: Option<LineDifference>,
}

/// One differing line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineDifference {
    /// Its number, from 1.
    pub number: usize,
    /// The recorded line, if the recorded output has that many.
    pub recorded: Option<String>,
    /// The rerun's line, if its output has that many.
    pub now: Option<String>,
}

/// Compares `rerun` with `recorded` (exit code and output).
pub fn compare(recorded: &RecordedResult, rerun: &RerunResult) -> Verdict {
    let Some(text) = recorded.output.text() else {
        return Verdict::NotReproduced(NotReproduced::OutputUnavailable);
    };
    let exit_codes =
        (recorded.exit_code != rerun.exit_code).then_some((recorded.exit_code, rerun.exit_code));
    let line = (text != rerun.output).then(|| first_difference(&text, &rerun.output));
    if exit_codes.is_none() && line.is_none() {
        Verdict::Same
    } else {
        Verdict::Differs(Difference { exit_codes, line })
    }
}

fn first_difference(a: &str, b: &str) -> LineDifference {
    let mut left = a.split('\n');
    let mut right = b.split('\n');
    let mut number = 0;
    loop {
        number += 1;
        let (l, r) = (left.next(), right.next());
        if l != r || (l.is_none() && r.is_none()) {
            return LineDifference {
                number,
                recorded: l.map(str::to_owned),
                now: r.map(str::to_owned),
            };
        }
    }
}

/// A rerun, call by call, for the text and JSON views.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The session.
    pub session: String,
    /// Its agent.
    pub agent: String,
    /// The agent's live workspace, which was copied.
    pub workspace: String,
    /// As whom the calls ran (`nobody (uid 65534)`).
    pub user: String,
    /// The network the calls had (`none …`, or why it was not isolated).
    pub network: String,
    /// What of the file system they could write (`read-only but the
    /// copy …`, or why not).
    pub file_system: String,
    /// Files of the workspace not copied (sockets, devices, FIFOs).
    pub not_copied: Vec<String>,
    /// One per recorded tool call.
    pub calls: Vec<CallReport>,
}

/// One call of a [`Report`].
#[derive(Clone, Debug, Serialize)]
pub struct CallReport {
    /// Seq of its `tool.call`.
    pub seq: u64,
    /// Seq of its `tool.result`, if any.
    pub result_seq: Option<u64>,
    /// Seq of the `llm.response` that asked for it.
    pub asked_by: Option<u64>,
    /// The call id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// Its recorded arguments (JSON).
    pub arguments: Option<String>,
    /// `same`, `differs` or `not_reproduced`.
    pub verdict: &'static str,
    /// For `not_reproduced`: why, in words…
    pub reason: Option<String>,
    /// …and as a short name (`outside_workspace`, `agent_cli`, …).
    pub reason_kind: Option<&'static str>,
    /// The recorded exit code.
    pub recorded_exit_code: Option<i32>,
    /// The recorded output.
    pub recorded_output: Option<String>,
    /// What the rerun produced, if it ran.
    pub rerun: Option<RerunResult>,
    /// For `differs`: where.
    pub difference: Option<Difference>,
}

impl CallReport {
    /// The report line of `call` with `verdict` and, if it ran, `rerun`.
    pub fn new(call: &RecordedCall, verdict: Verdict, rerun: Option<RerunResult>) -> Self {
        let (name, reason, kind, difference) = match verdict {
            Verdict::Same => ("same", None, None, None),
            Verdict::Differs(d) => ("differs", None, None, Some(d)),
            Verdict::NotReproduced(why) => (
                "not_reproduced",
                Some(why.to_string()),
                Some(why.kind()),
                None,
            ),
        };
        Self {
            seq: call.seq,
            result_seq: call.result.as_ref().map(|r| r.seq),
            asked_by: call.asked_by,
            call_id: call.call_id.clone(),
            tool: call.tool.clone(),
            arguments: call.arguments.clone(),
            verdict: name,
            reason,
            reason_kind: kind,
            recorded_exit_code: call.result.as_ref().and_then(|r| r.exit_code),
            recorded_output: call.result.as_ref().and_then(|r| r.output.text()),
            rerun,
            difference,
        }
    }
}

impl Report {
    /// How many calls have `verdict`.
    pub fn count(&self, verdict: &str) -> usize {
        self.calls.iter().filter(|c| c.verdict == verdict).count()
    }

    /// Whether every call run again matched (`con replay --rerun`'s exit
    /// status).
    pub fn all_same(&self) -> bool {
        self.count("differs") == 0
    }
}

/// Arguments shown on a report line: compact, escaped, capped.
fn shown_arguments(arguments: Option<&str>) -> String {
    const CAP: usize = 60;
    let Some(a) = arguments else {
        return "(arguments unavailable)".into();
    };
    let a = escape_control(a);
    if a.chars().count() <= CAP {
        return a.into_owned();
    }
    let cut: String = a.chars().take(CAP).collect();
    format!("{cut}…")
}

fn exit(code: Option<i32>) -> String {
    code.map_or_else(|| "-".into(), |c| c.to_string())
}

/// The text view of a rerun: a header saying where and as whom the calls
/// ran, one line per call (and, under a `differs`, where), and a summary
/// that names every reason a call was not run again.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rerun of session {}  agent {}",
        escape_control(&r.session),
        escape_control(&r.agent)
    );
    let _ = writeln!(
        out,
        "in a scratch copy of {}, as {}",
        escape_control(&r.workspace),
        escape_control(&r.user),
    );
    let _ = writeln!(
        out,
        "the calls the recorded model replies asked for, in recorded order; no model is called, nothing is recorded"
    );
    let _ = writeln!(out, "network: {}", escape_control(&r.network));
    let _ = writeln!(out, "file system: {}", escape_control(&r.file_system));
    if !r.not_copied.is_empty() {
        let _ = writeln!(
            out,
            "not copied (not regular files, directories or symlinks): {}",
            r.not_copied
                .iter()
                .map(|p| escape_control(p).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out.push('\n');
    for c in &r.calls {
        let verdict = match (c.verdict, &c.reason) {
            ("not_reproduced", Some(why)) => format!("not reproduced: {}", escape_control(why)),
            (v, _) => v.to_owned(),
        };
        let _ = writeln!(
            out,
            "#{:<6} {:<11} {:<62} {verdict}",
            c.seq,
            escape_control(&c.tool),
            shown_arguments(c.arguments.as_deref())
        );
        if let Some(d) = &c.difference {
            if let Some((was, now)) = d.exit_codes {
                let _ = writeln!(
                    out,
                    "         exit code: recorded {}, now {}",
                    exit(was),
                    exit(now)
                );
            }
            if let Some(l) = &d.line {
                let line = |s: &Option<String>| match s {
                    Some(s) => format!("| {}", escape_control(s)),
                    None => "(no such line)".into(),
                };
                let _ = writeln!(out, "         output line {}:", l.number);
                let _ = writeln!(out, "           recorded {}", line(&l.recorded));
                let _ = writeln!(out, "           now      {}", line(&l.now));
            }
        }
    }
    out.push('\n');
    let (same, differs, not) = (
        r.count("same"),
        r.count("differs"),
        r.count("not_reproduced"),
    );
    let _ = writeln!(
        out,
        "{} tool call{}: {same} same, {differs} differ{}, {not} not reproduced",
        r.calls.len(),
        if r.calls.len() == 1 { "" } else { "s" },
        if differs == 1 { "s" } else { "" },
    );
    if not > 0 {
        let mut reasons: Vec<(&str, usize)> = Vec::new();
        for c in r.calls.iter().filter(|c| c.verdict == "not_reproduced") {
            let why = c.reason.as_deref().unwrap_or("?");
            match reasons.iter_mut().find(|(w, _)| *w == why) {
                Some((_, n)) => *n += 1,
                None => reasons.push((why, 1)),
            }
        }
        let _ = writeln!(
            out,
            "{not} call{} could not be reproduced:",
            if not == 1 { "" } else { "s" }
        );
        for (why, n) in reasons {
            let _ = writeln!(out, "  {n} × {}", escape_control(why));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use con_event::BlobRef;

    use super::*;
    use crate::timeline::{AskedTool, Entry};

    fn content(s: &str) -> Content {
        Content {
            blob: BlobRef::of(s.as_bytes()),
            bytes: Some(s.as_bytes().to_vec()),
        }
    }

    fn ws() -> Workspaces {
        Workspaces {
            live: "/srv/con/agents/a/workspace".into(),
            scratch: "/tmp/con-rerun-x/workspace".into(),
        }
    }

    fn call(tool: &str, arguments: &str) -> RecordedCall {
        RecordedCall {
            seq: 7,
            call_id: "c1".into(),
            tool: tool.into(),
            arguments: Some(arguments.into()),
            asked_by: Some(6),
            result: Some(RecordedResult {
                seq: 8,
                exit_code: None,
                output: content("out"),
                duration_ms: 1,
            }),
        }
    }

    fn entry(seq: u64, step: Step) -> Entry {
        Entry {
            seq,
            offset_nanos: 0,
            step,
        }
    }

    #[test]
    fn calls_are_paired_with_the_reply_that_asked_and_their_result() {
        let t = Timeline {
            session: con_event::SessionId::from_hex("00000000000000000000000000000001").unwrap(),
            agent: "a".into(),
            task: None,
            start_seq: 1,
            started_at: 0,
            ended_at: None,
            outcome: None,
            model_calls: 1,
            input_tokens: 0,
            output_tokens: 0,
            cost_micro_usd: 0,
            entries: vec![
                entry(
                    2,
                    Step::Response {
                        model: "m".into(),
                        status: Some(200),
                        attempts: 1,
                        latency_ms: 1,
                        input_tokens: 0,
                        output_tokens: 0,
                        cost_micro_usd: 0,
                        text: None,
                        tool_calls: vec![AskedTool {
                            id: Some("c1".into()),
                            name: "exec".into(),
                            arguments: r#"{"command":"ls"}"#.into(),
                        }],
                        error: None,
                        reply: None,
                    },
                ),
                entry(
                    3,
                    Step::ToolCall {
                        call_id: "c1".into(),
                        tool: "exec".into(),
                        // Unavailable: the reply's arguments stand in.
                        arguments: Content {
                            blob: BlobRef::of(b"x"),
                            bytes: None,
                        },
                    },
                ),
                entry(
                    4,
                    Step::ToolResult {
                        call_id: "c1".into(),
                        tool: "exec".into(),
                        exit_code: Some(0),
                        duration_ms: 5,
                        output: content("x\n[exit code 0]"),
                        truncated: false,
                        error: None,
                    },
                ),
            ],
        };
        let s = recorded_calls(&t);
        assert_eq!(s.calls.len(), 1);
        let c = &s.calls[0];
        assert_eq!((c.seq, c.asked_by), (3, Some(2)));
        assert_eq!(c.arguments.as_deref(), Some(r#"{"command":"ls"}"#));
        let r = c.result.as_ref().unwrap();
        assert_eq!((r.seq, r.exit_code), (4, Some(0)));
    }

    #[test]
    fn file_paths_outside_the_workspace_are_not_run() {
        for (tool, args, verb, path) in [
            (
                "read_file",
                r#"{"path":"/etc/hostname"}"#,
                "reads",
                "/etc/hostname",
            ),
            (
                "read_file",
                r#"{"path":"../../b/workspace/x"}"#,
                "reads",
                "/srv/con/agents/b/workspace/x",
            ),
            (
                "write_file",
                r#"{"path":"/srv/con/agents/b/inbox/t.task","content":"x"}"#,
                "writes",
                "/srv/con/agents/b/inbox/t.task",
            ),
            (
                "edit_file",
                r#"{"path":"/srv/con/agents/a/workspace/../outbox/r","old_text":"a","new_text":"b"}"#,
                "writes",
                "/srv/con/agents/a/outbox/r",
            ),
            ("list_dir", r#"{"path":".."}"#, "reads", "/srv/con/agents/a"),
        ] {
            assert_eq!(
                prepare(&call(tool, args), Some("builtin"), &ws()),
                Err(NotReproduced::Outside {
                    verb,
                    path: path.into(),
                    how: None
                }),
                "{tool} {args}"
            );
        }
    }

    #[test]
    fn paths_inside_are_moved_into_the_copy() {
        let p = prepare(
            &call("read_file", r#"{"path":"notes.txt"}"#),
            Some("builtin"),
            &ws(),
        )
        .unwrap();
        // Relative stays as given (the runner joins it to the copy).
        assert_eq!(p.arguments["path"], "notes.txt");
        assert_eq!(
            p.path.as_deref(),
            Some(Path::new("/tmp/con-rerun-x/workspace/notes.txt"))
        );
        assert_eq!(p.verb.as_deref(), Some("reads"));
        let p = prepare(
            &call(
                "write_file",
                r#"{"path":"/srv/con/agents/a/workspace/d/../r.txt","content":"x"}"#,
            ),
            None,
            &ws(),
        )
        .unwrap();
        assert_eq!(p.arguments["path"], "/tmp/con-rerun-x/workspace/r.txt");
        assert_eq!(p.arguments["content"], "x");
        let p = prepare(&call("list_dir", "{}"), None, &ws()).unwrap();
        assert_eq!(
            p.path.as_deref(),
            Some(Path::new("/tmp/con-rerun-x/workspace"))
        );
        let p = prepare(
            &call(
                "exec",
                r#"{"command":"cat /srv/con/agents/a/workspace/n.txt","timeout_secs":5}"#,
            ),
            None,
            &ws(),
        )
        .unwrap();
        assert_eq!(
            p.arguments["command"],
            "cat /tmp/con-rerun-x/workspace/n.txt"
        );
        assert_eq!(p.arguments["timeout_secs"], 5);
        assert_eq!(p.path, None);
    }

    #[test]
    fn agent_clis_missing_results_and_contents_are_not_run() {
        let c = call("exec", r#"{"command":"ls"}"#);
        assert_eq!(
            prepare(&c, Some("claude"), &ws()),
            Err(NotReproduced::Runner("claude".into()))
        );
        let mut no_result = c.clone();
        no_result.result = None;
        assert_eq!(
            prepare(&no_result, None, &ws()),
            Err(NotReproduced::NoResult)
        );
        let mut no_args = c.clone();
        no_args.arguments = None;
        assert_eq!(
            prepare(&no_args, None, &ws()),
            Err(NotReproduced::ArgumentsUnavailable)
        );
        let mut no_output = c;
        if let Some(r) = no_output.result.as_mut() {
            r.output.bytes = None;
        }
        assert_eq!(
            prepare(&no_output, None, &ws()),
            Err(NotReproduced::OutputUnavailable)
        );
    }

    #[test]
    fn outputs_are_unmapped_and_compared_line_by_line() {
        let pairs = [
            (
                PathBuf::from("/tmp/con-rerun-x"),
                PathBuf::from("/nonexistent"),
            ),
            (
                PathBuf::from("/tmp/con-rerun-x/workspace"),
                PathBuf::from("/srv/con/agents/a/workspace"),
            ),
        ];
        assert_eq!(
            unmap("wrote 1 bytes to /tmp/con-rerun-x/workspace/r", &pairs),
            "wrote 1 bytes to /srv/con/agents/a/workspace/r"
        );
        let recorded = RecordedResult {
            seq: 2,
            exit_code: Some(0),
            output: content("a\nb\n[exit code 0]"),
            duration_ms: 1,
        };
        let rerun = |output: &str, exit_code| RerunResult {
            exit_code,
            output: output.into(),
            duration_ms: 1,
        };
        assert_eq!(
            compare(&recorded, &rerun("a\nb\n[exit code 0]", Some(0))),
            Verdict::Same
        );
        assert_eq!(
            compare(&recorded, &rerun("a\nc\n[exit code 1]", Some(1))),
            Verdict::Differs(Difference {
                exit_codes: Some((Some(0), Some(1))),
                line: Some(LineDifference {
                    number: 2,
                    recorded: Some("b".into()),
                    now: Some("c".into()),
                }),
            })
        );
        assert_eq!(
            compare(&recorded, &rerun("a\nb\n[exit code 0]\nmore", Some(0))),
            Verdict::Differs(Difference {
                exit_codes: None,
                line: Some(LineDifference {
                    number: 4,
                    recorded: None,
                    now: Some("more".into()),
                }),
            })
        );
    }

    #[test]
    fn the_text_view_names_each_verdict_and_every_reason() {
        let same = CallReport::new(
            &call("exec", r#"{"command":"cat notes.txt"}"#),
            Verdict::Same,
            None,
        );
        let differs = CallReport::new(
            &call("read_file", r#"{"path":"n"}"#),
            Verdict::Differs(Difference {
                exit_codes: None,
                line: Some(LineDifference {
                    number: 1,
                    recorded: Some("old\u{1b}[2J".into()),
                    now: None,
                }),
            }),
            None,
        );
        let outside = CallReport::new(
            &call("read_file", r#"{"path":"/etc/hostname"}"#),
            Verdict::NotReproduced(NotReproduced::Outside {
                verb: "reads",
                path: "/etc/hostname".into(),
                how: None,
            }),
            None,
        );
        let report = Report {
            session: "s".into(),
            agent: "a".into(),
            workspace: "/w".into(),
            user: "nobody (uid 65534)".into(),
            network: "none".into(),
            file_system: "read-only".into(),
            not_copied: vec![],
            calls: vec![same, differs, outside],
        };
        let t = text(&report);
        assert!(t.contains("as nobody (uid 65534)\n"), "{t}");
        assert!(t.contains("\nnetwork: none\n"), "{t}");
        assert!(t.contains(r#"{"command":"cat notes.txt"}"#), "{t}");
        assert!(
            t.contains("not reproduced: reads /etc/hostname outside the workspace"),
            "{t}"
        );
        assert!(t.contains("output line 1:"), "{t}");
        assert!(t.contains("recorded | old\\u{1b}[2J"), "{t}");
        assert!(t.contains("now      (no such line)"), "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
        assert!(
            t.contains("3 tool calls: 1 same, 1 differs, 1 not reproduced"),
            "{t}"
        );
        assert!(
            t.contains(
                "1 call could not be reproduced:\n  1 × reads /etc/hostname outside the workspace"
            ),
            "{t}"
        );
        assert!(!report.all_same());
    }
}
