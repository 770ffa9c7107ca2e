//! `con ledger`: one line per finished session (time, agent, model, task,
//! trust, outcome, duration, cost), for operators and the agents that see
//! the fleet. Accounting only: no prompt, tool output or answer.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;
use con_event::escape_control;
use con_layout::Layout;
use con_protocol::{Client, LedgerEntry, LedgerQuery};

/// Arguments of `con ledger`.
#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// Only sessions that ended at or after T: an RFC 3339 time
    /// (`2025-01-31T08:00:00Z`), a UTC date (`2025-01-31`), or a duration
    /// before now (`24h`, `7d`).
    #[arg(long, value_name = "T")]
    since: Option<String>,
    /// Only this agent's sessions.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// One JSON object per line (the fields of the daily TSV files, by name).
    #[arg(long)]
    json: bool,
}

/// Runs `con ledger`.
pub fn run(args: LedgerArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let since = args
        .since
        .as_deref()
        .map(|t| crate::time_bound::parse("--since", t, SystemTime::now()))
        .transpose()?;
    let entries = Client::connect_with_timeout(&layout.socket(), crate::DAEMON_TIMEOUT)?.ledger(
        LedgerQuery {
            since_unix_nanos: since,
            agent: args.agent,
        },
    )?;
    let text = if args.json {
        let mut out = String::new();
        for e in &entries {
            out.push_str(&serde_json::to_string(e)?);
            out.push('\n');
        }
        out
    } else {
        render(&entries)
    };
    // A closed pipe (`con ledger | head -1`) is not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// The text form: one aligned line per session, agent-chosen text escaped.
fn render(entries: &[LedgerEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<14} {:<28} {:<10} {:<8} {:>10} {:>10}  TASK",
        "ENDED", "AGENT", "MODEL", "TRUST", "OUTCOME", "DURATION", "COST"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<24} {:<14} {:<28} {:<10} {:<8} {:>10} {:>10}  {}",
            e.time,
            escape_control(&e.agent),
            escape_control(e.model.as_deref().unwrap_or("-")),
            e.trust.as_str(),
            e.outcome.as_str(),
            format!("{:.1}s", e.duration_ms as f64 / 1000.0),
            format!("${:.4}", e.cost_micro_usd as f64 / 1e6),
            escape_control(e.task.as_deref().unwrap_or("-")),
        );
    }
    let total: u64 = entries.iter().map(|e| e.cost_micro_usd).sum();
    let _ = writeln!(
        out,
        "\n{} sessions, ${:.4}",
        entries.len(),
        total as f64 / 1e6
    );
    out
}
