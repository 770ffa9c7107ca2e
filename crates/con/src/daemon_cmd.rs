//! `con daemon`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use std::path::PathBuf;

use con_daemon::{Daemon, DaemonConfig, SupervisedAgent, SupervisorConfig};

use crate::paths::Paths;

/// Arguments of `con daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Group whose members are operators (besides root).
    #[arg(long, default_value = "trusted", value_name = "GROUP")]
    trusted_group: String,

    /// Who starts agent runs: the daemon itself, systemd units, or `auto`
    /// (the daemon when PID 1 is not systemd) [default: `[infra] supervisor`].
    #[arg(long, value_enum, value_name = "MODE")]
    supervisor: Option<SupervisorMode>,

    /// Program the supervisor runs as each agent, with `run <agent>`
    /// appended [default: this con binary].
    #[arg(long, value_name = "PATH")]
    run_program: Option<PathBuf>,
}

/// Who starts agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SupervisorMode {
    /// The daemon when PID 1 is not systemd, else systemd.
    Auto,
    /// The daemon.
    Daemon,
    /// systemd units (installed by `con bootstrap`).
    Systemd,
}

fn supervisor_config(
    args: &DaemonArgs,
    config: &con_config::Config,
    paths: &Paths,
) -> anyhow::Result<Option<SupervisorConfig>> {
    let mode = args.supervisor.unwrap_or(match config.infra.supervisor {
        con_config::Supervisor::Auto => SupervisorMode::Auto,
        con_config::Supervisor::Daemon => SupervisorMode::Daemon,
        con_config::Supervisor::Systemd => SupervisorMode::Systemd,
    });
    let supervise = match mode {
        SupervisorMode::Daemon => true,
        SupervisorMode::Systemd => false,
        SupervisorMode::Auto => !std::path::Path::new("/run/systemd/system").exists(),
    };
    if !supervise {
        return Ok(None);
    }
    let run_program = match &args.run_program {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let agents = config
        .agents
        .iter()
        .map(|a| SupervisedAgent {
            name: a.name.clone(),
            inbox: paths.agent_inbox(&a.name),
            max_sessions: a.max_sessions,
            mode: a.mode,
            schedule: a
                .schedule
                .as_ref()
                .and_then(|s| con_config::CronSchedule::parse(&s.cron).ok()),
        })
        .collect();
    Ok(Some(SupervisorConfig {
        run_program,
        // Runs see the same tree and config as the daemon.
        run_args: [
            "--root".to_owned(),
            paths.root().display().to_string(),
            "--user-prefix".to_owned(),
            paths.user_prefix().to_owned(),
        ]
        .into_iter()
        .chain(
            paths
                .explicit_config()
                .map(|c| ["--config".to_owned(), c.display().to_string()])
                .into_iter()
                .flatten(),
        )
        .collect(),
        agents,
        outer_inbox: paths.outer_inbox(),
        router: config.agent("concierge").map(|a| a.name.clone()),
        tick: Duration::from_secs(1),
    }))
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs, paths: &Paths) -> anyhow::Result<ExitCode> {
    // Fail closed: no valid config, no daemon.
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = con_config::load(&paths.config_file(), &env)?;
    let supervisor = supervisor_config(&args, &config, paths)?;
    let daemon = DaemonConfig {
        socket: paths.socket(),
        db: paths.event_log(),
        system_name: config.system.name.clone(),
        user_prefix: paths.user_prefix().to_owned(),
        trusted_group: args.trusted_group,
        agents: config.agents.iter().map(|a| a.name.clone()).collect(),
        mirror_capacity: 65_536,
        drain_timeout: Duration::from_secs(10),
        supervisor,
        inboxes: std::iter::once(con_inbox::InboxSpec {
            name: "outer".into(),
            dir: paths.outer_inbox(),
        })
        .chain(config.agents.iter().map(|a| con_inbox::InboxSpec {
            name: a.name.clone(),
            dir: paths.agent_inbox(&a.name),
        }))
        .collect(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        eprintln!(
            "con daemon: serving {} on {} ({} agents configured; {})",
            daemon.db.display(),
            daemon.socket.display(),
            config.agents.len(),
            if daemon.supervisor.is_some() {
                "supervising agent runs"
            } else {
                "agent runs are left to systemd"
            }
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
