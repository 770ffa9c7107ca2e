//! `con run <agent>`: drain an agent's inbox, as the agent's own user.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

/// How long a run that systemd started waits before it exits after a
/// failure. While a task waits, the agent's path unit starts the run again
/// as soon as it exits: without the pause a failure (provider down, a
/// broken `con.toml`) would be retried in a tight loop, and systemd's start
/// limit would soon fail the path unit for good. SIGTERM ends the pause.
const SYSTEMD_FAILURE_PAUSE: Duration = Duration::from_secs(5);

/// Runs `con run`.
pub fn run(args: RunArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    con_config::validate_agent_name(&args.agent)
        .map_err(|e| anyhow!("agent {:?}: {e}", args.agent))?;
    let user = con_runner::check_identity(layout, &args.agent)?;
    // Before any thread starts (see stop_on_signals).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    con_runner::stop_on_signals(stop.clone())?;
    let result = drain_inbox(&args, layout, user.dir, stop.clone());
    // Started by systemd: a unit's main process, child of PID 1, with the
    // INVOCATION_ID systemd sets. The daemon's supervisor, which backs off
    // by itself, is the parent of the runs it starts.
    let by_systemd =
        std::os::unix::process::parent_id() == 1 && std::env::var_os("INVOCATION_ID").is_some();
    if by_systemd && !matches!(result, Ok(0)) {
        let end = Instant::now() + SYSTEMD_FAILURE_PAUSE;
        while Instant::now() < end && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    result.map(ExitCode::from)
}

/// Works through the inbox; the exit code: 0, 1, or [`EX_TEMPFAIL`].
fn drain_inbox(
    args: &RunArgs,
    layout: &Layout,
    dir: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<u8> {
    // No daemon, no audit: nothing happens before the socket answers (the
    // status asked next, and the link once the run may go ahead: a link
    // left idle while waiting would be closed by the daemon).
    // A halted or quarantined agent does nothing, and touches no task: they
    // wait in its inbox until an operator resumes it. Asked here as well as
    // by the supervisor, because under systemd a path unit starts this run
    // whenever a task is waiting.
    let mut view = crate::status_cmd::fetch(layout)?;
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
            return Ok(EX_TEMPFAIL);
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
            return Ok(EX_TEMPFAIL);
        }
        std::thread::sleep(RECORDING_POLL);
        view = crate::status_cmd::fetch(layout)?;
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
        return Ok(0);
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
    let mut run = AgentRun::new(agent, &config.inbox, layout.clone(), dir);
    run.stop = stop;
    if let Some(secs) = args.session_secs {
        run.session_limit = Duration::from_secs(secs);
    }

    // A spent budget is waited out here, not retried: a run refused for
    // budget and started again (a path unit fires while a task waits, a
    // supervisor backs off) would try a model call on every start. While
    // it waits it holds the agent's place, so nothing else starts one; it
    // gives up after the session wall clock (the unit's runtime limit is a
    // minute longer) and the tasks stay queued.
    let waiting = BudgetWait {
        layout,
        agent: &run.agent,
        stop: &run.stop,
        until: Instant::now() + run.session_limit,
    };
    loop {
        if !waiting.until_allowed()? {
            return Ok(EX_TEMPFAIL);
        }
        // A link per pass: one left idle through a long wait would be
        // closed by the daemon.
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
        match drained.stopped {
            None => return Ok(0),
            // Refused for budget mid-run: wait, then go on with the task.
            // At least one poll first, even if the status already says the
            // budget allows (calls in flight count against it too), so a
            // refusal is never retried in a loop.
            Some(Outcome::Budget) => {
                if !waiting.pause(BUDGET_POLL) {
                    return Ok(EX_TEMPFAIL);
                }
            }
            Some(Outcome::ProviderError) => return Ok(EX_TEMPFAIL),
            Some(_) => return Ok(1),
        }
    }
}

/// How often a run waiting for its budget asks the daemon again.
const BUDGET_POLL: Duration = Duration::from_secs(5);

/// Waiting for an agent's budget to allow model calls again.
struct BudgetWait<'a> {
    layout: &'a Layout,
    agent: &'a str,
    stop: &'a std::sync::atomic::AtomicBool,
    until: Instant,
}

impl BudgetWait<'_> {
    /// Why the daemon says the agent can make no model call today (its own
    /// or its tier's budget is spent), if so.
    fn refusal(&self) -> anyhow::Result<Option<String>> {
        Ok(crate::status_cmd::fetch(self.layout)?
            .problems
            .into_iter()
            .find(|p| {
                p.kind == con_protocol::ProblemKind::BudgetSpent
                    && p.agent.as_deref() == Some(self.agent)
            })
            .map(|p| p.message))
    }

    /// Returns once the budget allows model calls (true), or when told to
    /// stop or out of time (false), asking every [`BUDGET_POLL`].
    fn until_allowed(&self) -> anyhow::Result<bool> {
        let mut said = false;
        loop {
            let Some(why) = self.refusal()? else {
                return Ok(true);
            };
            if !said {
                said = true;
                eprintln!(
                    "con run: waiting until the budget allows: {}",
                    con_event::escape_control(&why)
                );
            }
            if !self.pause(BUDGET_POLL) {
                eprintln!(
                    "con run: {}: still no budget; the tasks stay queued",
                    self.agent
                );
                return Ok(false);
            }
        }
    }

    /// Sleeps `how_long`; false if told to stop or out of time first.
    fn pause(&self, how_long: Duration) -> bool {
        let end = Instant::now() + how_long;
        while Instant::now() < end {
            if self.stop.load(Ordering::SeqCst) || Instant::now() >= self.until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        !self.stop.load(Ordering::SeqCst) && Instant::now() < self.until
    }
}
