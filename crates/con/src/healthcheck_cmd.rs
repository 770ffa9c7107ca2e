//! `con healthcheck`: asks the daemon to run con's built-in checks of itself
//! (`con_daemon::health`) and record each result as a `contract.result`
//! event, so the healthcheck timer does real work and a failure is visible
//! in `con status` and the journal. Contract files are not evaluated yet.

use std::process::ExitCode;

use clap::Args;
use con_event::escape_control;
use con_event::payloads::CheckStatus;
use con_layout::Layout;
use con_protocol::Client;

/// Arguments of `con healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `con healthcheck`: the daemon runs the checks and records each
/// result (a client may not record `contract.result` itself).
pub fn run(args: HealthcheckArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    // No daemon, no audit: that is itself the first failure to report.
    let checks = Client::connect(&layout.socket())?.run_checks()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!(
                "{:<12} {:<24} {:<8} {}",
                escape_control(&c.contract),
                escape_control(&c.check),
                c.status.as_str(),
                escape_control(&c.detail)
            );
        }
    }
    let failed = checks.iter().any(|c| {
        matches!(
            c.status,
            CheckStatus::Fail | CheckStatus::Error | CheckStatus::Timeout
        )
    });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
