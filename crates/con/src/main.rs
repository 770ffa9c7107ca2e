//! `con`: the command line of the con agent operating system.
//!
//! Each subcommand is a thin shell over a library crate; this binary owns
//! argument parsing, resolving the global flags into a `con_layout::Layout`,
//! output formatting and exit codes.

mod agent_cmd;
mod backup_cmd;
mod bootstrap_cmd;
mod commission_cmd;
mod config_cmd;
mod contracts_cmd;
mod daemon_cmd;
mod healthcheck_cmd;
mod journal_args;
mod ledger_cmd;
mod logs_cmd;
mod paths;
mod policy_cmd;
mod replay_cmd;
mod rerun_cmd;
mod responses_cmd;
mod route_cmd;
mod run_cmd;
mod status_cmd;
mod task_cmd;
mod time_bound;
mod verify_cmd;

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// How long a command waits for the daemon to take a request or answer it:
/// a daemon that accepts but never answers is reported, never waited on.
pub(crate) const DAEMON_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// con: a Linux agent operating system.
///
/// Every agent is a Linux user, agents talk through filesystem inboxes, and
/// every action is recorded in a hash-chained event log mirrored to journald.
#[derive(Debug, Parser)]
#[command(name = "con", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    layout: paths::LayoutArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Walk the event log's hash chain and name the first bad seq.
    Verify(verify_cmd::VerifyArgs),
    /// Copy the live event log into a new directory, through the daemon
    /// (root), without stopping it.
    Backup(backup_cmd::BackupArgs),
    /// Run the daemon (root): owner of the event log, serving the socket.
    Daemon(daemon_cmd::DaemonArgs),
    /// Work through an agent's inbox (as the agent's user): one LLM tool-loop session per task.
    Run(run_cmd::RunArgs),
    /// Show events from the log (through the daemon).
    Logs(logs_cmd::LogsArgs),
    /// Reconstruct sessions and tasks from the record (never calls a model).
    Replay(replay_cmd::ReplayArgs),
    /// List agents; halt, quarantine, kill or resume one (operators).
    #[command(subcommand)]
    Agent(agent_cmd::AgentCommand),
    /// Show agents, inboxes, sessions and checks (through the daemon).
    Status(status_cmd::StatusArgs),
    /// One line per finished session (time, agent, model, task, trust,
    /// outcome, duration, cost; never content), for operators and the
    /// agents that see the fleet.
    Ledger(ledger_cmd::LedgerArgs),
    /// Drop a task into the outer inbox (or an agent's inbox), as yourself.
    Task(task_cmd::TaskArgs),
    /// Show the answers agents wrote, with the task each answers.
    Responses(responses_cmd::ResponsesArgs),
    /// Route the outer inbox now, through the daemon (operators), and say
    /// what moved.
    RouteInbox(route_cmd::RouteArgs),
    /// Create or repair the host state the config implies (users, directories,
    /// ACLs, sudoers, instructions, units, egress), or check it for drift.
    Bootstrap(bootstrap_cmd::BootstrapArgs),
    /// Add one agent: a new [[agents]] entry in the installed config, then
    /// the same plan and apply as bootstrap.
    Commission(commission_cmd::CommissionArgs),
    /// Remove one agent: stop and delete its units and sudoers, lock its
    /// account, close its directory (kept for forensics), remove its
    /// [[agents]] entry, then re-apply the plan.
    Decommission(commission_cmd::DecommissionArgs),
    /// Explain what an agent may do, and which config line says so.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Run every detective contract and con's built-in checks once, through
    /// the daemon, which records each result.
    Healthcheck(healthcheck_cmd::HealthcheckArgs),
    /// List contracts with their state, or run them now.
    #[command(subcommand)]
    Contracts(contracts_cmd::ContractsCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for con and every subcommand into DIR.
    Manpages {
        /// Output directory.
        dir: std::path::PathBuf,
    },
    /// Internal: runs the tool calls `con replay --rerun` hands it, as the
    /// unprivileged user it was started as.
    #[command(name = "__rerun-worker", hide = true)]
    RerunWorker,
}

/// `con.1` plus `con-<sub>.1` for every subcommand (nested ones too).
fn write_manpages(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    fn render(cmd: clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
        let cmd = cmd.name(name.to_owned());
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| path.display().to_string())?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help" && !s.is_hide_set())
        {
            render(sub.clone(), &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let mut cmd = Cli::command();
    cmd.build();
    render(cmd, "con", dir)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cli.layout.resolve().and_then(|layout| match cli.command {
        Command::Config(cmd) => config_cmd::run(cmd, &layout),
        Command::Verify(args) => verify_cmd::run(args, &layout),
        Command::Backup(args) => backup_cmd::run(args, &layout),
        Command::Daemon(args) => daemon_cmd::run(args, &layout),
        Command::Run(args) => run_cmd::run(args, &layout),
        Command::Logs(args) => logs_cmd::run(args, &layout),
        Command::Replay(args) => replay_cmd::run(args, &layout),
        Command::Agent(cmd) => agent_cmd::run(cmd, &layout),
        Command::Status(args) => status_cmd::run(args, &layout),
        Command::Ledger(args) => ledger_cmd::run(args, &layout),
        Command::Task(args) => task_cmd::run(args, &layout),
        Command::Responses(args) => responses_cmd::run(args, &layout),
        Command::RouteInbox(args) => route_cmd::run(args, &layout),
        Command::Healthcheck(args) => healthcheck_cmd::run(args, &layout),
        Command::Contracts(cmd) => contracts_cmd::run(cmd, &layout),
        Command::Bootstrap(args) => bootstrap_cmd::run(args, &layout),
        Command::Commission(args) => commission_cmd::commission(args, &layout),
        Command::Decommission(args) => commission_cmd::decommission(args, &layout),
        Command::Policy(cmd) => policy_cmd::run(cmd, &layout),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "con", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => write_manpages(&dir),
        Command::RerunWorker => rerun_cmd::worker(),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the whole cause chain, colon-separated.
            eprintln!("con: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
