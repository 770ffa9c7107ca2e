//! `con daemon`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use std::path::PathBuf;

use anyhow::Context;
use con_daemon::{Daemon, DaemonConfig, GatewayConfig, Route, SupervisedAgent, SupervisorConfig};

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
        // Runs frame tasks by the same trust the daemon records.
        run_options: vec!["--trusted-group".to_owned(), args.trusted_group.clone()],
        agents,
        outer_inbox: paths.outer_inbox(),
        router: config.agent("concierge").map(|a| a.name.clone()),
        tick: Duration::from_secs(1),
        start_runs: supervise,
    }))
}

/// Reads the secrets file (`KEY=value` lines). It must be root's alone: a
/// key file others can read is refused rather than used. A missing file
/// means no keys (local servers may need none).
fn read_secrets(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    if meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "{}: holds API keys, so it must be owned by root with mode 0600 (it is uid {} mode {:04o})",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    let mut secrets = BTreeMap::new();
    for item in dotenvy::from_path_iter(path).with_context(|| path.display().to_string())? {
        // dotenvy's parse errors quote the whole line, key included: say
        // only where it is.
        let (key, value) = item.map_err(|e| match e {
            dotenvy::Error::LineParse(_, index) => anyhow::anyhow!(
                "{}: cannot parse the entry at character {index} (KEY=value lines; the line is not shown because it may hold a key)",
                path.display()
            ),
            other => anyhow::anyhow!("{}: {}", path.display(), other.to_string().lines().next().unwrap_or("unreadable")),
        })?;
        secrets.insert(key, value);
    }
    Ok(secrets)
}

/// How each agent's model calls are routed, from config and the secrets.
fn gateway_config(
    config: &con_config::Config,
    secrets: &BTreeMap<String, String>,
    env_file: &std::path::Path,
) -> GatewayConfig {
    let routes = config
        .agents
        .iter()
        .filter(|a| a.runner == con_config::Runner::Builtin)
        .filter_map(|a| {
            let provider = a.provider?;
            let model = a.model.clone()?;
            let key_var = a
                .api_key_env
                .clone()
                .or_else(|| provider.default_api_key_env().map(str::to_owned));
            let key = key_var.as_ref().and_then(|v| secrets.get(v)).cloned();
            let unusable = match (&key_var, &key) {
                (Some(var), None) if provider != con_config::Provider::OpenAiCompatible => {
                    Some(format!(
                        "{var} is not set in {}: no key for provider {}",
                        env_file.display(),
                        provider.as_str()
                    ))
                }
                _ => None,
            };
            let (endpoint, unusable) = match con_llm::Endpoint::for_provider(
                provider,
                &model,
                a.base_url.as_deref(),
                key.map(con_llm::Secret::new),
            ) {
                Ok(endpoint) => (endpoint, unusable),
                // Config validation should make this unreachable; if not,
                // the agent's calls fail with the reason instead of the
                // daemon refusing to serve everyone.
                Err(e) => (
                    con_llm::Endpoint::new(
                        con_llm::ProviderKind::for_provider(provider),
                        "",
                        &model,
                    ),
                    Some(format!("agent {}: {e}", a.name)),
                ),
            };
            Some((
                a.name.clone(),
                Route {
                    provider: provider.as_str().to_owned(),
                    endpoint,
                    price: config
                        .pricing
                        .get(&model)
                        .copied()
                        .map(con_llm::Price::from),
                    daily_budget_micro_usd: a.daily_budget_usd.map(con_daemon::micro_usd),
                    tier: a.tier,
                    unusable,
                },
            ))
        })
        .collect();
    GatewayConfig {
        routes,
        tier_budgets_micro_usd: config
            .tier_budgets
            .iter()
            .map(|(t, usd)| (*t, con_daemon::micro_usd(*usd)))
            .collect(),
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs, paths: &Paths) -> anyhow::Result<ExitCode> {
    // Fail closed: no valid config, no daemon.
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = con_config::load(&paths.config_file(), &env)?;
    let supervisor = supervisor_config(&args, &config, paths)?;
    let secrets = read_secrets(&paths.env_file())?;
    let gateway = gateway_config(&config, &secrets, &paths.env_file());
    drop(secrets);
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
        gateway: Some(gateway),
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
            if daemon.supervisor.as_ref().is_some_and(|s| s.start_runs) {
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
