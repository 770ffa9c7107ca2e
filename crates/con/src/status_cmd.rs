//! `con status`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use con_event::payloads::CheckStatus;
use con_projection::FleetStatus;
use con_protocol::{Client, StatusReport};
use serde_json::json;

use crate::paths::Paths;

/// Arguments of `con status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `con status`.
pub fn run(args: StatusArgs, paths: &Paths) -> anyhow::Result<ExitCode> {
    let report = Client::connect(&paths.socket())?.status()?;
    let fleet: Option<FleetStatus> = if report.fleet.is_empty() {
        None
    } else {
        Some(
            con_event::codec::decode_with_limit("fleet status", &report.fleet, u64::MAX)
                .map_err(|e| anyhow::anyhow!("undecodable status from the daemon: {e}"))?,
        )
    };
    let text = if args.json {
        let value = json!({
            "identity": report.identity,
            "log_id": report.log_id,
            "head_seq": report.head_seq,
            "head_hash": report.head_hash.to_hex(),
            "journal_mirror": report.journal_mirror,
            "fleet": fleet,
        });
        serde_json::to_string_pretty(&value)? + "\n"
    } else {
        render(&report, fleet.as_ref())
    };
    // A closed pipe (`con status | head -1`) is not an error.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

fn render(report: &StatusReport, fleet: Option<&FleetStatus>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "you are:        {}", report.identity);
    let _ = writeln!(
        out,
        "event log:      {} (head seq {}, {})",
        report.log_id, report.head_seq, report.head_hash
    );
    let _ = writeln!(out, "journal mirror: {}", report.journal_mirror);
    let Some(fleet) = fleet else {
        return out;
    };
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0))
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "\n{:<16} {:<14} {:>6} {:>8} {:>9}  {:<16} {:>12}",
        "AGENT", "CONDITION", "INBOX", "RUNNING", "SESSIONS", "LAST OUTCOME", "SPENT TODAY"
    );
    for (name, a) in &fleet.agents {
        let spent = a.spend_micro_usd_by_day.get(&today).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:>6} {:>8} {:>9}  {:<16} {:>12}",
            name,
            format!("{:?}", a.condition).to_lowercase(),
            a.inbox_depth,
            a.running_sessions,
            a.sessions_total,
            a.last_outcome
                .map_or_else(|| "-".to_owned(), |o| format!("{o:?}").to_lowercase()),
            format!("${:.4}", spent as f64 / 1e6)
        );
    }
    let failing: Vec<_> = fleet
        .checks
        .iter()
        .filter(|(_, c)| !matches!(c.status, CheckStatus::Pass | CheckStatus::Skipped))
        .collect();
    if failing.is_empty() {
        let _ = writeln!(
            out,
            "\nchecks: {} recorded, none failing",
            fleet.checks.len()
        );
    } else {
        let _ = writeln!(out, "\nfailing checks:");
        for (name, c) in failing {
            let _ = writeln!(out, "  {name}: {:?} (seq {}) {}", c.status, c.seq, c.detail);
        }
    }
    out
}
