//! `con daemon`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use con_daemon::{Daemon, HostConfig, Loader, Reload};
use con_layout::Layout;

/// Arguments of `con daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Who starts agent runs: the daemon itself, systemd units, or `auto`
    /// (the daemon when PID 1 is not systemd) [default: `[infra] supervisor`].
    #[arg(long, value_enum, value_name = "MODE")]
    supervisor: Option<SupervisorMode>,

    /// Program the supervisor runs as each agent, with `run <agent>`
    /// appended [default: this con binary].
    #[arg(long, value_name = "PATH")]
    run_program: Option<PathBuf>,

    /// Contract checks run at once (benchmarks compare 1 with the default).
    #[arg(long, value_name = "N", hide = true, default_value_t = con_daemon::PARALLEL_CHECKS)]
    check_concurrency: usize,
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

impl From<SupervisorMode> for con_config::Supervisor {
    fn from(mode: SupervisorMode) -> Self {
        match mode {
            SupervisorMode::Auto => Self::Auto,
            SupervisorMode::Daemon => Self::Daemon,
            SupervisorMode::Systemd => Self::Systemd,
        }
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT; SIGHUP
/// reloads the configuration (so does a change of `con.toml` or the
/// secrets file).
pub fn run(args: DaemonArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    limit_malloc_arenas();
    // Diagnostics from here on go to journald (and stderr unless it is the
    // journal), rate-limited; see con_daemon::diag.
    con_daemon::diag::DaemonLogger::new(&layout.socket()).install()?;
    // Fail closed: no valid config, no daemon.
    let env = con_config::collect_environment(std::env::vars_os())?;
    let run_program = match args.run_program {
        Some(p) => p,
        None => std::env::current_exe()?,
    };
    let supervisor = args.supervisor.map(Into::into);
    // Start and every reload read the files through this one function.
    let load: Arc<Loader> = {
        let layout = layout.clone();
        Arc::new(move || HostConfig::load(&layout, &env, supervisor, run_program.clone()))
    };
    let host = load()?;
    let mut daemon = host.daemon.clone();
    daemon.contracts.parallel = args.check_concurrency;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        log::info!(
            "starting on {} with {} ({} agents configured; {})",
            layout.socket().display(),
            layout.event_log().display(),
            daemon.agents.len(),
            if daemon.supervisor.as_ref().is_some_and(|s| s.start_runs) {
                "supervising agent runs"
            } else {
                "agent runs are left to systemd"
            }
        );
        for problem in daemon.gateway.iter().flat_map(|g| g.problems()) {
            log::warn!("{problem}");
        }
        // Handlers are installed before the daemon can report itself ready:
        // a SIGTERM right after READY must drain, not kill, and a SIGHUP
        // must reload (its default action would end the daemon).
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // A reload already pending covers this signal too.
                let _ = reload_tx.try_send(());
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            log::info!("stopping (draining in-flight requests)");
        };
        let reload = Reload {
            current: host,
            load,
            files: vec![layout.config_file().to_path_buf(), layout.env_file()],
            requests: reload_rx,
        };
        Daemon::run(daemon, Some(reload), shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    log::info!("stopped cleanly");
    // Repeats suppressed since they were last said are counted, not lost.
    log::logger().flush();
    Ok(ExitCode::SUCCESS)
}

/// glibc malloc arenas the daemon may use (`MALLOC_ARENA_MAX`). glibc's
/// default (8 per core) let each thread that reads much of the log (a
/// `con verify` through the daemon, a projection's catch-up) leave its
/// freed pages in an arena of its own: measured on a 1,000,000-event log,
/// each `con verify` added about 116 MiB of free heap the daemon kept
/// (326 → 444 → 560 MiB); with 2 arenas it stayed at 367 MiB.
const MALLOC_ARENAS: &str = "2";

/// Re-executes this program with `MALLOC_ARENA_MAX` set (glibc reads it
/// only at start), unless it is set already: by the operator, or by this
/// re-execution. Same process id, arguments and environment otherwise, so
/// systemd and `sd_notify` see the same service. If the re-execution fails
/// the daemon runs with glibc's default.
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let error = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("MALLOC_ARENA_MAX", MALLOC_ARENAS)
        .exec();
    eprintln!(
        "con daemon: cannot re-execute {} to limit malloc arenas ({error}); going on with glibc's default",
        exe.display()
    );
}
