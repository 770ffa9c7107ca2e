//! `con verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use con_layout::Layout;
use con_protocol::{Client, ClientError};
use con_store::Store;
use serde::Serialize;

/// Arguments of `con verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Event log directory (or a copy of one) to open and walk here. Without
    /// it, the running daemon walks its log (operators only); with no
    /// daemon running, <root>/var/lib/con/events is opened here.
    #[arg(long, value_name = "DIR")]
    db: Option<PathBuf>,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Outcome {
    db: PathBuf,
    /// Whether the daemon walked the log (it owns a live log).
    by_daemon: bool,
    ok: bool,
    events: u64,
    /// The last seq that verified, and its hash.
    head_seq: u64,
    head_hash: String,
    first_bad_seq: Option<u64>,
    reason: Option<String>,
}

/// Runs `con verify`: exit 0 when the chain holds, 1 when it is broken.
pub fn run(args: VerifyArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    if args.db.is_none() {
        // A live log has one owner, the daemon: it walks the chain. With no
        // daemon to answer, the log is free to open here.
        match Client::connect(&layout.socket()) {
            Ok(mut client) => {
                let view = client.verify()?;
                let outcome = Outcome {
                    db: layout.event_log(),
                    by_daemon: true,
                    ok: view.first_bad_seq.is_none(),
                    events: view.events,
                    head_seq: view.head_seq,
                    head_hash: view.head_hash.to_hex(),
                    first_bad_seq: view.first_bad_seq,
                    reason: view.reason,
                };
                return report(&outcome, args.json);
            }
            Err(ClientError::Connect { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let db = args.db.unwrap_or_else(|| layout.event_log());
    if !db.join("db").exists() {
        anyhow::bail!("{}: no event log here", db.display());
    }
    // Inspection mode: a damaged log must be reported, not repaired or
    // refused, and verifying must not change what it verifies.
    let store = Store::open_for_inspection(&db)?;
    let result = store
        .verify()
        .with_context(|| format!("{}: reading the event log", db.display()))?;
    let outcome = match &result {
        Ok(report) => Outcome {
            db: db.clone(),
            by_daemon: false,
            ok: true,
            events: report.events,
            head_seq: report.head.seq,
            head_hash: report.head.hash.to_hex(),
            first_bad_seq: None,
            reason: None,
        },
        Err(broken) => Outcome {
            db: db.clone(),
            by_daemon: false,
            ok: false,
            events: broken.last_good.seq,
            head_seq: broken.last_good.seq,
            head_hash: broken.last_good.hash.to_hex(),
            first_bad_seq: Some(broken.seq),
            reason: Some(broken.reason.clone()),
        },
    };
    report(&outcome, args.json)
}

/// Prints the outcome; exit 0 when the chain holds, 1 when it is broken.
fn report(outcome: &Outcome, json: bool) -> anyhow::Result<ExitCode> {
    let by = if outcome.by_daemon {
        " (walked by the daemon)"
    } else {
        ""
    };
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
    } else if let (Some(seq), Some(reason)) = (outcome.first_bad_seq, &outcome.reason) {
        println!(
            "{}: chain broken at seq {seq}: {reason}{by}",
            outcome.db.display()
        );
    } else {
        println!(
            "{}: chain ok: {} events, head seq {} hash {}{by}",
            outcome.db.display(),
            outcome.events,
            outcome.head_seq,
            outcome.head_hash
        );
    }
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
