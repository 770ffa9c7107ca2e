//! `con status`.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use con_projection::FleetStatus;
use con_protocol::Client;
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
    if args.json {
        let value = json!({
            "identity": report.identity,
            "log_id": report.log_id,
            "head_seq": report.head_seq,
            "head_hash": report.head_hash.to_hex(),
            "journal_mirror": report.journal_mirror,
            "fleet": fleet,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("you are:        {}", report.identity);
    println!(
        "event log:      {} (head seq {}, {})",
        report.log_id, report.head_seq, report.head_hash
    );
    println!("journal mirror: {}", report.journal_mirror);
    let Some(fleet) = fleet else {
        return Ok(ExitCode::SUCCESS);
    };
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    println!();
    println!(
        "{:<16} {:<14} {:>6} {:>8} {:>9}  {:<16} {:>12}",
        "AGENT", "CONDITION", "INBOX", "RUNNING", "SESSIONS", "LAST OUTCOME", "SPENT TODAY"
    );
    for (name, a) in &fleet.agents {
        let spent = a.spend_micro_usd_by_day.get(&today).copied().unwrap_or(0);
        println!(
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
        .filter(|(_, c)| {
            !matches!(
                c.status,
                con_event::payloads::CheckStatus::Pass | con_event::payloads::CheckStatus::Skipped
            )
        })
        .collect();
    println!();
    if failing.is_empty() {
        println!("checks: {} recorded, none failing", fleet.checks.len());
    } else {
        println!("failing checks:");
        for (name, c) in failing {
            println!("  {name}: {:?} (seq {}) {}", c.status, c.seq, c.detail);
        }
    }
    Ok(ExitCode::SUCCESS)
}
