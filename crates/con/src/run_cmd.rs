//! `con run <agent>`: drain an agent's inbox, as the agent's own user.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use con_event::payloads::{AgentCondition, Outcome};
use con_layout::Layout;
use con_protocol::RecordingState;
use con_runner::{AgentRun, ClientLink};

/// Exit code when the run stopped on a temporary condition (budget spent,
/// provider down): the task stays queued and the supervisor backs off.
const EX_TEMPFAIL: u8 = 75;

/// How often a run waiting for the event log to record asks again.
const RECORDING_POLL: Duration = Duration::from_millis(500);

/// Arguments of `con run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent whose inbox to work through.
    agent: String,

    /// Per-session wall clock in seconds, instead of the agent's
    /// `max_session_min` (for tests).
    #[arg(long, hide = true, value_name = "SECS")]
    session_secs: Option<u64>,
}

/// Runs `con run`.
pub fn run(args: RunArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    con_config::validate_agent_name(&args.agent)
        .map_err(|e| anyhow!("agent {:?}: {e}", args.agent))?;
    let user = con_runner::check_identity(layout, &args.agent)?;
    // Before any thread starts (see stop_on_signals).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    con_runner::stop_on_signals(stop.clone())?;
    // No daemon, no audit: nothing happens before the socket answers (the
    // status asked next, and the link once the run may go ahead: a link
    // left idle while waiting would be closed by the daemon).
    // A halted or quarantined agent does nothing, and touches no task: they
    // wait in its inbox until an operator resumes it. Asked here as well as
    // by the supervisor, because under systemd a path unit starts this run
    // whenever a task is waiting.
    let mut view =
        con_protocol::Client::connect_with_timeout(&layout.socket(), crate::DAEMON_TIMEOUT)?
            .status()?;
    // No audit, no action: while the log cannot record, no session could
    // be opened (the daemon refuses it). Wait here rather than exit, so a
    // systemd path unit firing for the waiting task does not spin; the
    // task stays untouched until the log records again.
    let mut said = false;
    while view.recording.state != RecordingState::Recording {
        if view.recording.state == RecordingState::Failed {
            eprintln!(
                "con run: the event log has failed: {}; not running (tasks stay queued)",
                view.recording.reason.as_deref().unwrap_or("")
            );
            return Ok(ExitCode::from(EX_TEMPFAIL));
        }
        if !said {
            said = true;
            eprintln!(
                "con run: {}; waiting until it records again (tasks stay queued)",
                view.recording
                    .reason
                    .as_deref()
                    .unwrap_or("the event log cannot record")
            );
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(ExitCode::from(EX_TEMPFAIL));
        }
        std::thread::sleep(RECORDING_POLL);
        view = con_protocol::Client::connect_with_timeout(&layout.socket(), crate::DAEMON_TIMEOUT)?
            .status()?;
    }
    let condition = view
        .agents
        .iter()
        .find(|a| a.name == args.agent)
        .map_or(AgentCondition::Active, |a| a.condition);
    if condition != AgentCondition::Active {
        eprintln!(
            "con run: agent {} is {}: not running (tasks stay queued until `con agent resume {}`)",
            args.agent,
            condition.as_str(),
            args.agent
        );
        return Ok(ExitCode::SUCCESS);
    }
    let env = con_config::collect_environment(std::env::vars_os())?;
    let config_file = layout.config_file();
    let config = con_config::load(config_file, &env)?;
    let agent = config.agent(&args.agent).ok_or_else(|| {
        anyhow!(
            "{}: no agent {:?} is configured",
            config_file.display(),
            args.agent
        )
    })?;
    let mut run = AgentRun::new(agent, &config.inbox, layout.clone(), user.dir);
    run.stop = stop;
    if let Some(secs) = args.session_secs {
        run.session_limit = Duration::from_secs(secs);
    }

    let mut link = ClientLink::connect(&layout.socket())?;
    let drained = con_runner::drain(&mut link, &run)?;
    for s in &drained.sessions {
        let detail = if s.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", con_event::escape_control(&s.detail))
        };
        println!(
            "{}: task {}: {} after {} iteration(s){detail}",
            run.agent,
            con_event::escape_control(&s.task),
            s.outcome.as_str(),
            s.iterations
        );
    }
    Ok(match drained.stopped {
        None => ExitCode::SUCCESS,
        Some(Outcome::Budget | Outcome::ProviderError) => ExitCode::from(EX_TEMPFAIL),
        Some(_) => ExitCode::FAILURE,
    })
}
