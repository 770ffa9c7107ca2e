//! `con daemon`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use con_daemon::{Daemon, DaemonConfig};

use crate::paths::Paths;

/// Arguments of `con daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Group whose members are operators (besides root).
    #[arg(long, default_value = "trusted", value_name = "GROUP")]
    trusted_group: String,
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs, paths: &Paths) -> anyhow::Result<ExitCode> {
    // Fail closed: no valid config, no daemon.
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = con_config::load(&paths.config_file(), &env)?;
    let daemon = DaemonConfig {
        socket: paths.socket(),
        db: paths.event_log(),
        system_name: config.system.name.clone(),
        user_prefix: paths.user_prefix().to_owned(),
        trusted_group: args.trusted_group,
        mirror_capacity: 65_536,
        drain_timeout: Duration::from_secs(10),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        eprintln!(
            "con daemon: serving {} on {} ({} agents configured)",
            daemon.db.display(),
            daemon.socket.display(),
            config.agents.len()
        );
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("con daemon: stopping (draining in-flight requests)");
        };
        Daemon::run(daemon, shutdown).await
    })?;
    eprintln!("con daemon: stopped cleanly");
    Ok(ExitCode::SUCCESS)
}
