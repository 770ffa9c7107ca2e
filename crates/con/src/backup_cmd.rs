//! `con backup`: a consistent copy of the live log, made by the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use con_layout::Layout;
use con_protocol::Client;

/// Arguments of `con backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new directory for the copy (it must not exist); `con verify --db`
    /// checks it, and it replaces the log as is (see README, "Backups").
    dir: PathBuf,
}

/// Runs `con backup`.
pub fn run(args: BackupArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(&args.dir)?;
    let (seq, hash) = Client::connect(&layout.socket())?.backup(&dir)?;
    println!(
        "backed up the event log through seq {seq} (hash {}) to {}",
        hash.to_hex(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
