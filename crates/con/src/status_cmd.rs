//! `con status`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;
use con_event::escape_control;
use con_event::payloads::CheckStatus;
use con_protocol::{Client, MirrorState, RecordingState, STATUS_VIEW_VERSION, StatusView};

use con_layout::Layout;

/// Arguments of `con status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status view as JSON (documented in docs/status-json.md).
    #[arg(long)]
    json: bool,
}

/// The daemon's status view, refused unless it is the layout this con
/// reads.
pub(crate) fn fetch(layout: &Layout) -> anyhow::Result<StatusView> {
    let view = Client::connect_with_timeout(&layout.socket(), crate::DAEMON_TIMEOUT)?.status()?;
    if view.view_version != STATUS_VIEW_VERSION {
        anyhow::bail!(
            "the daemon answered status view version {} but this con reads version {STATUS_VIEW_VERSION}; use the con binary the daemon runs",
            view.view_version
        );
    }
    Ok(view)
}

/// Runs `con status`.
pub fn run(args: StatusArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let view = fetch(layout)?;
    let text = if args.json {
        serde_json::to_string_pretty(&view)? + "\n"
    } else {
        render(&view)
    };
    // A closed pipe (`con status | head -1`) is not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// The text form of a status view. Every string that an agent or a check
/// could have written is escaped.
pub fn render(view: &StatusView) -> String {
    let mut out = String::new();
    let caller = &view.caller;
    let _ = match &caller.agent {
        Some(agent) if caller.sees_fleet => writeln!(
            out,
            "you are:        agent {agent} (uid {}), seeing the fleet",
            caller.uid
        ),
        Some(agent) => writeln!(out, "you are:        agent {agent} (uid {})", caller.uid),
        None => writeln!(out, "you are:        operator (uid {})", caller.uid),
    };
    if let Some(log) = &view.log {
        let _ = writeln!(
            out,
            "event log:      {} (head seq {}, {})",
            log.log_id, log.head_seq, log.head_hash
        );
    }
    let why = || escape_control(view.recording.reason.as_deref().unwrap_or(""));
    let _ = match view.recording.state {
        RecordingState::Recording => Ok(()),
        RecordingState::NotRecording => writeln!(
            out,
            "NOT RECORDING:  since {}: {} (no run starts; the daemon retries by itself)",
            view.recording
                .since_unix_nanos
                .map_or_else(|| "?".to_owned(), con_projection::rfc3339_utc),
            why()
        ),
        RecordingState::Failed => writeln!(
            out,
            "NOT RECORDING:  the log's writer failed: {} (restart the daemon)",
            why()
        ),
    };
    if let Some(m) = &view.journal_mirror {
        let _ = match m.state {
            MirrorState::Healthy => writeln!(out, "journal mirror: healthy"),
            MirrorState::Degraded => writeln!(
                out,
                "journal mirror: degraded since seq {} ({} entries lost): {}",
                m.first_unmirrored_seq.unwrap_or(0),
                m.dropped,
                escape_control(m.reason.as_deref().unwrap_or(""))
            ),
        };
    }
    if let Some(depth) = view.outer_inbox_depth {
        let _ = writeln!(out, "outer inbox:    {depth} waiting");
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:<14} {:>6} {:>8} {:>9}  {:<16} {:>12}",
        "AGENT", "CONDITION", "INBOX", "RUNNING", "SESSIONS", "LAST OUTCOME", "SPENT TODAY"
    );
    for a in &view.agents {
        let name = if a.configured {
            a.name.clone()
        } else {
            format!("{} (gone)", escape_control(&a.name))
        };
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:>6} {:>8} {:>9}  {:<16} {:>12}",
            name,
            a.condition.as_str(),
            a.inbox_depth,
            a.running_sessions,
            a.sessions_total,
            a.last_outcome.map_or("-", |o| o.as_str()),
            format!("${:.4}", a.spent_today_micro_usd as f64 / 1e6)
        );
    }
    render_problems(&mut out, view);
    if !caller.sees_fleet {
        return out;
    }
    let failing: Vec<_> = view
        .checks
        .iter()
        .filter(|c| !matches!(c.status, CheckStatus::Pass | CheckStatus::Skipped))
        .collect();
    if failing.is_empty() && view.log.is_none() {
        // A fleet viewer that is no operator is sent only the failing ones.
        let _ = writeln!(out, "\nchecks: none failing");
    } else if failing.is_empty() {
        let _ = writeln!(
            out,
            "\nchecks: {} recorded, none failing",
            view.checks.len()
        );
    } else {
        let _ = writeln!(out, "\nfailing checks:");
        for c in failing {
            let _ = writeln!(
                out,
                "  {}/{}: {} (seq {}) {}",
                escape_control(&c.contract),
                escape_control(&c.check),
                c.status.as_str(),
                c.seq,
                escape_control(&c.detail)
            );
        }
    }
    if !view.alerts.is_empty() {
        let _ = writeln!(out, "\nalerts:");
        for a in &view.alerts {
            let _ = writeln!(
                out,
                "  {}/{}{}: {} (since seq {})",
                escape_control(&a.contract),
                escape_control(&a.check),
                a.scope_agent
                    .as_deref()
                    .map(|s| format!(" ({})", escape_control(s)))
                    .unwrap_or_default(),
                escape_control(&a.message),
                a.since_seq
            );
        }
    }
    out
}

/// The problems section: one line per problem, with where it is recorded
/// and its recorded reason when the caller may read it.
fn render_problems(out: &mut String, view: &StatusView) {
    if view.problems.is_empty() {
        let _ = writeln!(out, "\nproblems: none");
        return;
    }
    let _ = writeln!(out, "\nproblems:");
    for p in &view.problems {
        let mut at = Vec::new();
        if let Some(task) = &p.task {
            at.push(format!("task {}", escape_control(task)));
        }
        if let Some(seq) = p.seq {
            at.push(format!("seq {seq}"));
        }
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" ({})", at.join(", "))
        };
        let detail = if p.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", escape_control(&p.detail))
        };
        let _ = writeln!(out, "  {}{at}{detail}", escape_control(&p.message));
    }
}
