//! `con healthcheck`: con's built-in checks of itself
//! (`con_daemon::health`), each result recorded as a `contract.result`
//! event, so the healthcheck timer does real work and a failure is visible
//! in `con status` and the journal. Contract files are not evaluated yet.

use std::process::ExitCode;

use clap::Args;
use con_event::Payload;
use con_layout::Layout;
use con_protocol::Client;

use crate::bootstrap_cmd::client_event;

/// Arguments of `con healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `con healthcheck`.
pub fn run(args: HealthcheckArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    // No daemon, no audit: that is itself the first failure to report.
    let mut client = Client::connect(&layout.socket())?;
    let report = client.status()?;
    let verdicts = con_daemon::health::builtin_checks(layout, &report.journal_mirror);
    for v in &verdicts {
        let payload: Payload = v.result().into();
        client.append(client_event(&payload, Vec::new())?)?;
    }
    if args.json {
        let rows: Vec<_> = verdicts
            .iter()
            .map(|v| {
                serde_json::json!({
                    "contract": v.contract,
                    "check": v.check,
                    "status": v.status,
                    "detail": v.detail,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for v in &verdicts {
            println!(
                "{:<12} {:<24} {:<8} {}",
                v.contract,
                v.check,
                format!("{:?}", v.status).to_lowercase(),
                v.detail
            );
        }
    }
    Ok(if verdicts.iter().any(|v| v.failed()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
