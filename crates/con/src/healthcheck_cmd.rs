//! `con healthcheck`: the checks con can make of itself.
//!
//! Contract files (`/srv/con/contracts/*.yaml`) are evaluated by the
//! contract engine, which does not exist yet; until then this runs the
//! built-in checks of the event log's own health and records each result as
//! a `contract.result` event, so the healthcheck timer does real work and a
//! failure is visible in `con status` and the journal.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use con_event::Payload;
use con_event::payloads::{CheckStatus, ContractResult};
use con_protocol::Client;

use crate::bootstrap_cmd::client_event;
use crate::paths::Paths;

/// Arguments of `con healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// One built-in check's verdict.
struct Verdict {
    contract: &'static str,
    check: &'static str,
    status: CheckStatus,
    detail: String,
}

/// `path` must be owned by root and grant nothing to group or others
/// beyond `allowed` bits.
fn root_only(path: &Path, allowed: u32) -> (CheckStatus, String) {
    match std::fs::metadata(path) {
        Ok(m) if m.uid() == 0 && m.mode() & 0o077 & !allowed == 0 => (
            CheckStatus::Pass,
            format!("{}: uid 0, mode {:04o}", path.display(), m.mode() & 0o7777),
        ),
        Ok(m) => (
            CheckStatus::Fail,
            format!(
                "{}: uid {}, mode {:04o} (want uid 0 and no group/other access)",
                path.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
        ),
        Err(e) => (CheckStatus::Error, format!("{}: {e}", path.display())),
    }
}

/// Runs `con healthcheck`.
pub fn run(args: HealthcheckArgs, paths: &Paths) -> anyhow::Result<ExitCode> {
    // No daemon, no audit: that is itself the first failure to report.
    let mut client = Client::connect(&paths.socket())?;
    let mut verdicts = Vec::new();
    let started = Instant::now();
    let report = client.status()?;
    let (status, detail) = match &report.journal_mirror {
        Some(m) if m.state == con_protocol::MirrorState::Healthy => {
            (CheckStatus::Pass, "journald mirror: healthy".to_owned())
        }
        Some(m) => (
            CheckStatus::Fail,
            format!(
                "journald mirror degraded since seq {} ({} entries lost): {}",
                m.first_unmirrored_seq.unwrap_or(0),
                m.dropped,
                m.reason.as_deref().unwrap_or("")
            ),
        ),
        None => (
            CheckStatus::Error,
            "the daemon did not report the mirror's health".to_owned(),
        ),
    };
    verdicts.push(Verdict {
        contract: "CON-LOG-001",
        check: "journal-mirror",
        status,
        detail,
    });
    let (status, detail) = root_only(&paths.event_log(), 0);
    verdicts.push(Verdict {
        contract: "CON-LOG-002",
        check: "database-permissions",
        status,
        detail,
    });
    if let Some(parent) = paths.event_log().parent() {
        let (status, detail) = root_only(parent, 0);
        verdicts.push(Verdict {
            contract: "CON-LOG-002",
            check: "state-dir-permissions",
            status,
            detail,
        });
    }
    let (status, detail) = root_only(&paths.env_file(), 0);
    verdicts.push(Verdict {
        contract: "CON-LOG-003",
        check: "secrets-permissions",
        status: if matches!(status, CheckStatus::Error) && !paths.env_file().exists() {
            CheckStatus::Skipped
        } else {
            status
        },
        detail,
    });
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    let mut failed = false;
    let mut rows = Vec::new();
    for v in verdicts {
        failed |= matches!(
            v.status,
            CheckStatus::Fail | CheckStatus::Error | CheckStatus::Timeout
        );
        let payload: Payload = ContractResult {
            contract: v.contract.to_owned(),
            check: v.check.to_owned(),
            scope_agent: None,
            status: v.status,
            detail: v.detail.clone(),
            duration_ms,
        }
        .into();
        client.append(client_event(&payload, Vec::new())?)?;
        rows.push((v.contract, v.check, v.status, v.detail));
    }
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(c, k, s, d)| serde_json::json!({"contract": c, "check": k, "status": s, "detail": d}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (contract, check, status, detail) in &rows {
            println!(
                "{contract:<12} {check:<24} {:<8} {detail}",
                format!("{status:?}").to_lowercase()
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
