//! `con verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use con_layout::Layout;
use con_store::Store;
use serde::Serialize;

/// Arguments of `con verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Event log directory [default: <root>/var/lib/con/events]. Use a copy
    /// while the daemon runs: the log has a single owner.
    #[arg(long, value_name = "DIR")]
    db: Option<PathBuf>,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Outcome {
    db: PathBuf,
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
            ok: true,
            events: report.events,
            head_seq: report.head.seq,
            head_hash: report.head.hash.to_hex(),
            first_bad_seq: None,
            reason: None,
        },
        Err(broken) => Outcome {
            db: db.clone(),
            ok: false,
            events: broken.last_good.seq,
            head_seq: broken.last_good.seq,
            head_hash: broken.last_good.hash.to_hex(),
            first_bad_seq: Some(broken.seq),
            reason: Some(broken.reason.clone()),
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else if let Err(broken) = &result {
        println!(
            "{}: chain broken at seq {}: {}",
            db.display(),
            broken.seq,
            broken.reason
        );
    } else {
        println!(
            "{}: chain ok: {} events, head seq {} hash {}",
            db.display(),
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
