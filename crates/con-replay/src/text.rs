//! Text views. Every string an agent (or a model, or a task's author)
//! controls is written through `con_event::escape_control`, and contents
//! go line by line behind a `|` margin, so nothing recorded can forge a
//! line of the view.

use std::fmt::Write;

use con_event::escape_control;

use crate::Content;
use crate::sessions::SessionSummary;
use crate::timeline::{Step, Timeline};
use crate::trace::{HopKind, SessionNode, TaskNode, Trace};

/// Contents shown in the text view without `--full`: at most this many
/// lines…
pub const CAP_LINES: usize = 12;
/// …and this many bytes.
pub const CAP_BYTES: usize = 1024;

/// How much to show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// Whole contents (prompt, new request messages, outputs) instead of
    /// capped ones.
    pub full: bool,
}

/// `ns` since the epoch as RFC 3339 UTC with milliseconds.
pub fn timestamp(ns: i64) -> String {
    humantime::format_rfc3339_millis(con_event::json::recorded_time(ns)).to_string()
}

/// A duration in ns as seconds with milliseconds, signed (`+1.234s`).
pub fn offset(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let ms = ns.unsigned_abs() / 1_000_000;
    format!("{sign}{}.{:03}s", ms / 1000, ms % 1000)
}

/// A duration in ns as seconds with milliseconds (`1.234s`).
pub fn duration(ns: i64) -> String {
    offset(ns).trim_start_matches(['+', '-']).to_owned()
}

/// Micro-USD as dollars (`$0.000123`).
pub fn dollars(micro: u64) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Writes `content` under an entry: each line escaped, behind the margin;
/// capped unless `full`.
fn content_lines(out: &mut String, margin: &str, content: &Content, full: bool) {
    let Some(text) = content.text() else {
        let _ = writeln!(
            out,
            "{margin}(content unavailable: sha256:{}, {} bytes)",
            short(&content.blob.digest.to_hex()),
            content.blob.len
        );
        return;
    };
    text_lines(out, margin, &text, full);
}

fn text_lines(out: &mut String, margin: &str, text: &str, full: bool) {
    let mut shown = 0usize;
    for (lines, line) in text.split('\n').enumerate() {
        if !full && (lines >= CAP_LINES || shown >= CAP_BYTES) {
            let rest = text.len().saturating_sub(shown);
            let _ = writeln!(
                out,
                "{margin}… {} more (--full shows all)",
                plural(rest, "byte", "bytes")
            );
            return;
        }
        let line = if !full && shown + line.len() > CAP_BYTES {
            let mut cut = CAP_BYTES.saturating_sub(shown);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            &line[..cut]
        } else {
            line
        };
        shown += line.len() + 1;
        let _ = writeln!(out, "{margin}| {}", escape_control(line));
    }
}

/// The text view of a session's timeline.
pub fn timeline(t: &Timeline, opts: TextOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "session {}  agent {}  task {}",
        t.session,
        escape_control(&t.agent),
        escape_control(t.task.as_deref().unwrap_or("-"))
    );
    let ended = match (t.ended_at, t.outcome) {
        (Some(end), Some(outcome)) => format!(
            "ended after {}: {}",
            duration(end - t.started_at),
            outcome.as_str()
        ),
        _ => "not ended".to_owned(),
    };
    let _ = writeln!(out, "started {}, {ended}", timestamp(t.started_at));
    let _ = writeln!(out, "{}", totals(t));
    out.push('\n');
    out.push_str(&entries(t, opts, |_| true));
    out
}

/// Model calls, tokens and cost of a timeline, one line.
fn totals(t: &Timeline) -> String {
    format!(
        "{}, {} in / {} out tokens, {}",
        plural(t.model_calls as usize, "model call", "model calls"),
        t.input_tokens,
        t.output_tokens,
        dollars(t.cost_micro_usd)
    )
}

/// The entries of `t` whose seq `shown` accepts, as [`timeline`] writes
/// them: what a follower prints as a session grows.
pub fn entries(t: &Timeline, opts: TextOptions, shown: impl Fn(u64) -> bool) -> String {
    let mut out = String::new();
    let margin = " ".repeat(19);
    for e in t.entries.iter().filter(|e| shown(e.seq)) {
        let (kind, line) = summary(&e.step);
        let _ = writeln!(
            out,
            "{:>9}  #{:<6} {:<18} {}",
            offset(e.offset_nanos),
            e.seq,
            kind,
            line
        );
        details(&mut out, &margin, &e.step, opts.full);
    }
    out
}

/// The closing lines of a followed session: how it ended and its totals
/// (the header [`timeline`] wrote said "not ended").
pub fn ending(t: &Timeline) -> String {
    match (t.ended_at, t.outcome) {
        (Some(end), Some(outcome)) => format!(
            "\nended after {}: {}\n{}\n",
            duration(end - t.started_at),
            outcome.as_str(),
            totals(t)
        ),
        _ => String::new(),
    }
}

/// Kind name and one line about a step (agent-controlled parts escaped).
fn summary(step: &Step) -> (&'static str, String) {
    match step {
        Step::Arrived {
            inbox,
            path,
            owner_uid,
            trust,
            trust_reason,
            content,
        } => (
            "inbox.arrived",
            format!(
                "in {}, owner uid {owner_uid}: {} ({}), {}, {}",
                escape_control(inbox),
                trust.as_str(),
                escape_control(trust_reason),
                plural(content.blob.len as usize, "byte", "bytes"),
                escape_control(path)
            ),
        ),
        Step::Started {
            runner,
            provider,
            model,
            trust,
            prompt,
        } => (
            "session.started",
            format!(
                "runner {}, model {}{}, {} task, prompt {} sha256:{}",
                escape_control(runner),
                provider
                    .as_deref()
                    .map(|p| format!("{}/", escape_control(p)))
                    .unwrap_or_default(),
                escape_control(model.as_deref().unwrap_or("-")),
                trust.as_str(),
                plural(prompt.blob.len as usize, "byte", "bytes"),
                short(&prompt.blob.digest.to_hex())
            ),
        ),
        Step::Request {
            provider,
            model,
            iteration,
            messages,
            new_messages,
        } => (
            "llm.request",
            format!(
                "#{iteration} to {}/{}, {} ({} new)",
                escape_control(provider),
                escape_control(model),
                messages
                    .map(|m| plural(m, "message", "messages"))
                    .unwrap_or_else(|| "? messages".to_owned()),
                new_messages.len()
            ),
        ),
        Step::Response {
            model,
            status,
            attempts,
            latency_ms,
            input_tokens,
            output_tokens,
            cost_micro_usd,
            error,
            ..
        } => (
            "llm.response",
            format!(
                "{}{}, {}, {latency_ms} ms, {input_tokens} in / {output_tokens} out tokens, {}{}",
                escape_control(model),
                status.map(|s| format!(" status {s}")).unwrap_or_default(),
                plural(*attempts as usize, "attempt", "attempts"),
                dollars(*cost_micro_usd),
                error
                    .as_deref()
                    .map(|e| format!(", failed: {}", escape_control(e)))
                    .unwrap_or_default()
            ),
        ),
        Step::ToolCall { call_id, tool, .. } => (
            "tool.call",
            format!("{} ({})", escape_control(tool), escape_control(call_id)),
        ),
        Step::ToolResult {
            tool,
            exit_code,
            duration_ms,
            output,
            truncated,
            error,
            ..
        } => (
            "tool.result",
            format!(
                "{}{}, {duration_ms} ms, {}{}{}",
                escape_control(tool),
                exit_code.map(|c| format!(" exit {c}")).unwrap_or_default(),
                plural(output.blob.len as usize, "byte", "bytes"),
                if *truncated {
                    " (capped by the tool)"
                } else {
                    ""
                },
                error
                    .as_deref()
                    .map(|e| format!(", error: {}", escape_control(e)))
                    .unwrap_or_default()
            ),
        ),
        Step::Routed { from, to, path } => (
            "task.routed",
            format!(
                "{} -> {} ({})",
                escape_control(from),
                escape_control(to),
                escape_control(path)
            ),
        ),
        Step::Ended {
            outcome,
            iterations,
            duration_ms,
            detail,
            ..
        } => (
            "session.ended",
            format!(
                "{} after {}, {duration_ms} ms{}",
                outcome.as_str(),
                plural(*iterations as usize, "iteration", "iterations"),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", escape_control(detail))
                }
            ),
        ),
        Step::Contract {
            contract,
            check,
            status,
            detail,
        } => (
            "contract.result",
            format!(
                "{} {}: {}{}",
                escape_control(contract),
                escape_control(check),
                status.as_str(),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", escape_control(detail))
                }
            ),
        ),
        Step::Enforcement {
            contract,
            action,
            reason,
        } => (
            "enforcement.action",
            format!(
                "{} by {}: {}",
                escape_control(action),
                escape_control(contract),
                escape_control(reason)
            ),
        ),
        Step::EnforcementDone {
            contract,
            action,
            ok,
            detail,
        } => (
            "enforcement.done",
            format!(
                "{} by {} {}: {}",
                escape_control(action),
                escape_control(contract),
                if *ok { "done" } else { "FAILED" },
                escape_control(detail)
            ),
        ),
    }
}

/// Contents under a step.
fn details(out: &mut String, margin: &str, step: &Step, full: bool) {
    match step {
        Step::Arrived { content, .. } => content_lines(out, margin, content, full),
        // The prompt is the same long text in every session: only on request.
        Step::Started { prompt, .. } if full => content_lines(out, margin, prompt, true),
        Step::Request { new_messages, .. } if full => {
            for m in new_messages {
                content_lines(out, margin, m, true);
            }
        }
        Step::Response {
            text, tool_calls, ..
        } => {
            for call in tool_calls {
                let _ = writeln!(
                    out,
                    "{margin}asks {} {}",
                    escape_control(&call.name),
                    escape_control(&call.arguments)
                );
            }
            if let Some(text) = text {
                text_lines(out, margin, text, full);
            }
        }
        Step::ToolCall { arguments, .. } => content_lines(out, margin, arguments, full),
        Step::ToolResult { output, .. } => content_lines(out, margin, output, full),
        Step::Ended {
            response: Some(r), ..
        } => content_lines(out, margin, r, full),
        _ => {}
    }
}

/// The text view of a session list.
pub fn session_list(list: &[SessionSummary]) -> String {
    let mut out = format!(
        "{:<32}  {:<24}  {:<24}  {:>10}  {:<14}  {:>5}  {:>10}\n",
        "SESSION", "TASK", "STARTED", "DURATION", "OUTCOME", "CALLS", "COST"
    );
    for s in list {
        let _ = writeln!(
            out,
            "{:<32}  {:<24}  {:<24}  {:>10}  {:<14}  {:>5}  {:>10}",
            s.session.to_hex(),
            escape_control(s.task.as_deref().unwrap_or("-")),
            timestamp(s.started_at),
            s.duration_nanos.map(duration).unwrap_or_else(|| "-".into()),
            s.outcome.map(|o| o.as_str()).unwrap_or("running"),
            s.model_calls,
            dollars(s.cost_micro_usd)
        );
    }
    out
}

/// One session of a list that spans logs (and hosts).
#[derive(Clone, Copy, Debug)]
pub struct ListedSession<'a> {
    /// The name of the host the log was written on (`-` if unknown).
    pub host: &'a str,
    /// The log's id (`CON_LOG_ID`; empty if unknown).
    pub log_id: &'a str,
    /// The session.
    pub session: &'a SessionSummary,
}

/// The text view of sessions from several logs: one line each, with the
/// host and log it belongs to, then what [`session_list`] shows and the
/// agent.
pub fn sessions_of_logs(rows: &[ListedSession<'_>]) -> String {
    let mut out = format!(
        "{:<16}  {:<32}  {:<32}  {:<12}  {:<24}  {:<24}  {:>10}  {:<14}  {:>5}  {:>10}\n",
        "HOST",
        "LOG",
        "SESSION",
        "AGENT",
        "TASK",
        "STARTED",
        "DURATION",
        "OUTCOME",
        "CALLS",
        "COST"
    );
    for row in rows {
        let s = row.session;
        let _ = writeln!(
            out,
            "{:<16}  {:<32}  {:<32}  {:<12}  {:<24}  {:<24}  {:>10}  {:<14}  {:>5}  {:>10}",
            escape_control(row.host),
            if row.log_id.is_empty() {
                "-".to_owned()
            } else {
                escape_control(row.log_id).into_owned()
            },
            s.session.to_hex(),
            escape_control(&s.agent),
            escape_control(s.task.as_deref().unwrap_or("-")),
            timestamp(s.started_at),
            s.duration_nanos.map(duration).unwrap_or_else(|| "-".into()),
            s.outcome.map(|o| o.as_str()).unwrap_or("running"),
            s.model_calls,
            dollars(s.cost_micro_usd)
        );
    }
    out
}

/// The text view of a trace: a tree, one line per hop and session.
pub fn trace(t: &Trace) -> String {
    let mut out = String::new();
    task_node(&mut out, &t.root, "", true, true);
    out
}

fn task_node(out: &mut String, node: &TaskNode, indent: &str, last: bool, root: bool) {
    let (head, below) = branch(indent, last, root);
    let via = node
        .via
        .as_ref()
        .map(|l| match l.seq {
            Some(seq) => format!(" (by {} #{seq})", l.how.as_str()),
            None => format!(" ({})", l.how.as_str()),
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{head}task {}{via}",
        escape_control(node.task.as_deref().unwrap_or("-"))
    );
    let n = node.hops.len() + node.sessions.len();
    let mut i = 0;
    for hop in &node.hops {
        i += 1;
        let (b, _) = branch(&below, i == n, false);
        let line = match &hop.what {
            HopKind::Arrived {
                inbox,
                path,
                owner_uid,
                trust,
                trust_reason,
                content,
            } => format!(
                "arrived in {} #{}, owner uid {owner_uid}: {} ({}), sha256:{}, {}",
                escape_control(inbox),
                hop.seq,
                trust.as_str(),
                escape_control(trust_reason),
                short(&content.to_hex()),
                escape_control(path)
            ),
            HopKind::Routed { from, to } => format!(
                "routed {} -> {} #{}",
                escape_control(from),
                escape_control(to),
                hop.seq
            ),
        };
        let _ = writeln!(out, "{b}{line}");
    }
    for s in &node.sessions {
        i += 1;
        session_node(out, s, &below, i == n);
    }
}

fn session_node(out: &mut String, s: &SessionNode, indent: &str, last: bool) {
    let (b, below) = branch(indent, last, false);
    let _ = writeln!(
        out,
        "{b}session {} {} #{}: {} task, model {}, {}, {}, {}, started {}",
        s.session,
        escape_control(&s.agent),
        s.start_seq,
        s.trust.as_str(),
        escape_control(s.model.as_deref().unwrap_or("-")),
        s.outcome.map(|o| o.as_str()).unwrap_or("running"),
        plural(s.model_calls as usize, "model call", "model calls"),
        dollars(s.cost_micro_usd),
        timestamp(s.started_at)
    );
    let n = s.children.len();
    for (i, c) in s.children.iter().enumerate() {
        task_node(out, c, &below, i + 1 == n, false);
    }
}

/// The prefix of a tree line and the indent of its children.
fn branch(indent: &str, last: bool, root: bool) -> (String, String) {
    if root {
        return (String::new(), String::new());
    }
    if last {
        (format!("{indent}└─ "), format!("{indent}   "))
    } else {
        (format!("{indent}├─ "), format!("{indent}│  "))
    }
}
