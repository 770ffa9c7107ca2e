//! `con healthcheck`: asks the daemon to run every detective contract in the
//! contracts directory and con's built-in checks of itself
//! (`con_daemon::health`) once, and record each result as a
//! `contract.result` event, so the healthcheck timer does real work and a
//! failure is visible in `con status`, `con contracts list` and the journal.

use std::process::ExitCode;

use clap::Args;
use con_layout::Layout;
use con_protocol::{Client, RunContracts};

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
    let runs = Client::connect(&layout.socket())?.run_contracts(RunContracts {
        ids: Vec::new(),
        detective_only: true,
    })?;
    crate::contracts_cmd::print_runs(&runs, args.json)
}
