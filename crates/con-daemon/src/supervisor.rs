//! The supervisor: starts agent runs when PID 1 is not systemd (containers,
//! CI), or when selected explicitly.
//!
//! It routes the outer inbox to the concierge, starts `con run <agent>` as
//! the agent's own Linux user (uid, gid and supplementary groups, via
//! `setpriv --init-groups`) with a scrubbed environment whenever the agent's
//! inbox holds tasks, honours `max_sessions`, never starts a halted,
//! quarantined or decommissioned agent, keeps continuous agents running and
//! fires cron agents on their schedule (UTC). Every start and exit is an event.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use con_config::{CronSchedule, Mode};
use con_event::NewEvent;
use con_event::payloads::{AgentCondition, RunExited, RunStarted, TaskRouted};
use con_protocol::{RouteView, RoutedTask};
use con_store::AppendError;
use nix::unistd::User;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::Shared;
use crate::arrivals::Recorded;

/// One agent under supervision.
#[derive(Clone, Debug)]
pub struct SupervisedAgent {
    /// Agent name.
    pub name: String,
    /// Its inbox directory.
    pub inbox: PathBuf,
    /// Concurrent runs allowed.
    pub max_sessions: u32,
    /// When it runs.
    pub mode: Mode,
    /// For cron agents.
    pub schedule: Option<CronSchedule>,
}

/// What the supervisor runs and watches.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The program to run as the agent (normally the `con` binary itself).
    pub run_program: PathBuf,
    /// Arguments before `run <agent>`: the global flags under which the
    /// run resolves the daemon's layout.
    pub run_args: Vec<OsString>,
    /// Agents.
    pub agents: Vec<SupervisedAgent>,
    /// The outer inbox.
    pub outer_inbox: PathBuf,
    /// Agent that receives outer-inbox tasks (the concierge), if any.
    pub router: Option<String>,
    /// How often inboxes are re-checked without a wake-up.
    pub tick: Duration,
    /// Whether the daemon starts agent runs itself; when systemd does, the
    /// daemon still routes the outer inbox (it knows which arrivals are
    /// recorded, so nothing is routed before it is in the log).
    pub start_runs: bool,
}

/// An operator's request for a routing pass now (`con route-inbox`): the
/// supervisor answers with what it moved.
pub(crate) type RouteRequest = tokio::sync::oneshot::Sender<RouteView>;

/// Longest back-off after failing runs.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run that fails faster than this counts towards back-off.
const QUICK_FAILURE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct AgentRuns {
    /// Process ids of the runs in progress.
    running: HashSet<u32>,
    /// Per run: the oldest recorded task when it started. If it is still in
    /// the inbox when the run exits, the run made no progress and counts as
    /// a failure (a task the run cannot take must not be retried in a loop).
    oldest_task: HashMap<u32, PathBuf>,
    failures: u32,
    not_before: Option<Instant>,
    warned: bool,
    /// The UTC day it was last said that this agent's budget is spent.
    budget_said: Option<i64>,
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(6)).min(MAX_BACKOFF)
}

struct Exit {
    agent: String,
    pid: u32,
    status: std::io::Result<std::process::ExitStatus>,
    duration: Duration,
}

/// Recorded `*.task` entries of `dir`, sorted by name (oldest first). A task
/// whose arrival is not durable yet is not there for the supervisor.
fn tasks_in(dir: &Path, recorded: &Recorded) -> Vec<PathBuf> {
    task_entries(dir, |p| recorded.contains(p))
}

/// The task entries of `dir` (named as the inbox watcher names tasks) for
/// which `keep` holds, sorted by name (oldest first).
pub(crate) fn task_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut tasks: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| con_inbox::is_task_name(p) && keep(p))
        .collect();
    tasks.sort();
    tasks
}

/// Least time between two starts of a continuous agent, so a run that exits
/// at once cannot turn into a spawn loop.
const MIN_RESTART: Duration = Duration::from_secs(1);

/// How long runs get to stop when the daemon stops.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    config: SupervisorConfig,
    recorded: Recorded,
    runs: HashMap<String, AgentRuns>,
    exits: JoinSet<Exit>,
    last_cron_minute: Option<i64>,
    /// Set when the log's writer failed for good: no audit, no action.
    log_failed: bool,
    /// Events refused while the log could not record (a run's exit, a
    /// start that was then killed), recorded in order once it records
    /// again, before anything else is done.
    unrecorded: Vec<NewEvent>,
}

impl Supervisor {
    pub(crate) fn new(shared: Arc<Shared>, config: SupervisorConfig, recorded: Recorded) -> Self {
        Self {
            shared,
            config,
            recorded,
            runs: HashMap::new(),
            exits: JoinSet::new(),
            last_cron_minute: None,
            log_failed: false,
            unrecorded: Vec::new(),
        }
    }

    /// Runs until the daemon stops. `wake` carries the name of an inbox that
    /// just received a task; `reloads` the configuration of each reload,
    /// whose agents and router replace the current ones (runs in progress
    /// of a removed agent finish and their exits are recorded; no new one
    /// starts).
    pub(crate) async fn run(
        mut self,
        mut wake: mpsc::Receiver<String>,
        mut reloads: watch::Receiver<SupervisorConfig>,
        mut route_requests: mpsc::Receiver<RouteRequest>,
    ) {
        let stop = crate::until_stopping(self.shared.stopping.clone());
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return self.stop_runs().await,
                Ok(()) = reloads.changed() => {
                    let reloaded = reloads.borrow_and_update().clone();
                    // What the process was started with (program, flags,
                    // who starts runs) stays: only a restart changes it.
                    self.config.agents = reloaded.agents;
                    self.config.router = reloaded.router;
                    self.round(false).await;
                }
                _ = tick.tick() => self.round(true).await,
                Some(reply) = route_requests.recv() => {
                    let view = self.route_outer_inbox().await;
                    let _ = reply.send(view);
                }
                Some(_) = wake.recv() => {
                    // Coalesce a burst of arrivals into one round.
                    while wake.try_recv().is_ok() {}
                    self.round(false).await;
                }
                Some(exit) = self.exits.join_next(), if !self.exits.is_empty() => {
                    if let Ok(exit) = exit {
                        self.exited(exit).await;
                    }
                    self.round(false).await;
                }
            }
        }
    }

    /// Records `event`; its seq, or `None` if the log cannot take it now.
    /// While the log cannot record, the event is kept and recorded once it
    /// can (and no run starts meanwhile); if its writer failed for good, no
    /// further action is taken from now on.
    async fn record(&mut self, event: NewEvent) -> Option<u64> {
        if !self.unrecorded.is_empty() {
            // Keep the order: this one goes after those still waiting.
            self.unrecorded.push(event);
            return None;
        }
        match self
            .shared
            .appender
            .submit(event.clone())
            .wait_async()
            .await
        {
            Ok(appended) => Some(appended.seq),
            Err(AppendError::CannotRecord(_)) => {
                self.unrecorded.push(event);
                None
            }
            Err(e) => {
                if !self.log_failed {
                    log::error!("supervisor stops starting runs: {e}");
                }
                self.log_failed = true;
                None
            }
        }
    }

    /// Records the events kept while the log could not record; true once
    /// none is left.
    async fn record_unrecorded(&mut self) -> bool {
        while !self.unrecorded.is_empty() {
            let event = self.unrecorded.remove(0);
            match self
                .shared
                .appender
                .submit(event.clone())
                .wait_async()
                .await
            {
                Ok(_) => {}
                Err(AppendError::CannotRecord(_)) => {
                    self.unrecorded.insert(0, event);
                    return false;
                }
                Err(e) => {
                    log::error!("supervisor stops starting runs: {e}");
                    self.log_failed = true;
                    return false;
                }
            }
        }
        true
    }

    /// SIGTERMs every run's session, waits up to `STOP_GRACE`, records exits.
    async fn stop_runs(&mut self) {
        for runs in self.runs.values() {
            for &pid in &runs.running {
                if let Ok(pid) = i32::try_from(pid) {
                    // Each run leads its own session and process group.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !self.exits.is_empty() {
            match tokio::time::timeout_at(deadline, self.exits.join_next()).await {
                Ok(Some(Ok(exit))) => self.exited(exit).await,
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    async fn round(&mut self, from_tick: bool) {
        // No audit, no action: while the log cannot record, nothing is
        // routed and no run starts; their tasks wait and are taken up on
        // the first round after it records again.
        if self.log_failed || !self.shared.recording() || !self.record_unrecorded().await {
            return;
        }
        if from_tick {
            // Once a second is enough to forget tasks that have left.
            self.recorded.prune();
        }
        self.route_outer_inbox().await;
        if !self.config.start_runs {
            return;
        }
        let Ok(conditions) = self.shared.fleet_status().await else {
            return;
        };
        let cron_minute = from_tick.then(|| self.new_cron_minute()).flatten();
        for agent in self.config.agents.clone() {
            let condition = conditions
                .agents
                .get(&agent.name)
                .map_or(AgentCondition::Active, |a| a.condition);
            if condition != AgentCondition::Active {
                continue;
            }
            // A run could make no model call: it would only be refused,
            // exit and be retried on every back-off. The tasks wait, and the
            // check passes again at the next UTC day or when a reload raises
            // the budget.
            if let Some(why) = self
                .shared
                .gateway
                .as_ref()
                .and_then(|g| g.budget_spent(&conditions, &agent.name))
            {
                let runs = self.runs.entry(agent.name.clone()).or_default();
                let today = crate::server::today();
                if runs.budget_said != Some(today) {
                    runs.budget_said = Some(today);
                    log::warn!("no runs of {} until its budget allows: {why}", agent.name);
                }
                continue;
            }
            let runs = self.runs.entry(agent.name.clone()).or_default();
            let running = u32::try_from(runs.running.len()).unwrap_or(u32::MAX);
            if running >= agent.max_sessions || runs.not_before.is_some_and(|t| Instant::now() < t)
            {
                continue;
            }
            let trigger = match agent.mode {
                Mode::Continuous if running == 0 => Some("continuous"),
                Mode::Cron => cron_minute
                    .as_ref()
                    .filter(|now| {
                        agent
                            .schedule
                            .as_ref()
                            .is_some_and(|s| s.matches(now.0, now.1, now.2, now.3, now.4))
                    })
                    .map(|_| "cron"),
                _ => None,
            }
            .or_else(|| {
                // One more run only while recorded tasks outnumber the runs
                // already taking them.
                let pending = tasks_in(&agent.inbox, &self.recorded).len();
                (u32::try_from(pending).unwrap_or(u32::MAX) > running).then_some("inbox")
            });
            if let Some(trigger) = trigger {
                self.start(&agent.name, trigger).await;
            }
        }
    }

    /// The current UTC minute as (minute, hour, day, month, weekday), once
    /// per minute.
    fn new_cron_minute(&mut self) -> Option<(u32, u32, u32, u32, u32)> {
        let now = time::OffsetDateTime::now_utc();
        let minute_index = now.unix_timestamp().div_euclid(60);
        if self.last_cron_minute == Some(minute_index) {
            return None;
        }
        self.last_cron_minute = Some(minute_index);
        Some((
            u32::from(now.minute()),
            u32::from(now.hour()),
            u32::from(now.day()),
            u32::from(u8::from(now.month())),
            u32::from(now.weekday().number_days_from_sunday()),
        ))
    }

    /// Moves every recorded task of the outer inbox to the router's inbox
    /// (recording each move); says what it did.
    async fn route_outer_inbox(&mut self) -> RouteView {
        let mut view = RouteView::default();
        if self.log_failed {
            view.failed
                .push("the log refused an event: the daemon acts on nothing more".to_owned());
            return view;
        }
        let Some(router) = self.config.router.clone() else {
            return view;
        };
        let Some(target) = self
            .config
            .agents
            .iter()
            .find(|a| a.name == router)
            .cloned()
        else {
            return view;
        };
        view.router = Some(router.clone());
        let inbox = target.inbox.clone();
        for task in tasks_in(&self.config.outer_inbox, &self.recorded) {
            let Some(name) = task.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            // The inode moves, so the owner (the provenance) travels with
            // the task; a task already there is never overwritten.
            match con_fs::move_without_replacing(&task, &inbox, &name) {
                Ok(dest) => {
                    let path = dest.display().to_string();
                    let recorded = self
                        .record(NewEvent {
                            task: name.strip_suffix(".task").map(str::to_owned),
                            ..NewEvent::system(TaskRouted {
                                from: con_inbox::OUTER_INBOX.into(),
                                to: router.clone(),
                                path: path.clone(),
                            })
                        })
                        .await;
                    match recorded {
                        Some(seq) => view.routed.push(RoutedTask {
                            name,
                            to: router.clone(),
                            path,
                            seq,
                        }),
                        None => view.failed.push(format!(
                            "{name}: moved to {path}, but the log refused its record"
                        )),
                    }
                }
                Err(e) => {
                    log::error!("cannot route {}: {e}", task.display());
                    view.failed.push(format!("{name}: {e}"));
                }
            }
        }
        view
    }

    async fn start(&mut self, agent: &str, trigger: &str) {
        let user_name = self.shared.config.layout.user(agent);
        let user = match User::from_name(&user_name) {
            Ok(Some(u)) if !u.uid.is_root() && u.gid.as_raw() != 0 => u,
            found => {
                let runs = self.runs.entry(agent.to_owned()).or_default();
                // Growing back-off, not the longest at once: a config
                // reload can name an agent a moment before `con commission`
                // has created its user.
                runs.failures += 1;
                runs.not_before = Some(Instant::now() + backoff(runs.failures));
                if !runs.warned {
                    runs.warned = true;
                    let why = match found {
                        Ok(Some(_)) => format!("{user_name} is root or in group root"),
                        Ok(None) => format!("no user {user_name}"),
                        Err(e) => format!("cannot look up {user_name}: {e}"),
                    };
                    log::warn!("not starting {agent}: {why}");
                }
                return;
            }
        };
        // setsid: the run leads a new session with no controlling terminal
        // (it must never reach the terminal the daemon was started from);
        // setpriv: the agent's uid, gid and supplementary groups.
        let mut cmd = tokio::process::Command::new("/usr/bin/setsid");
        cmd.arg("/usr/bin/setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(&self.config.run_program)
            .args(&self.config.run_args)
            .args(["run", agent])
            // Nothing of the daemon's environment (which may hold API keys)
            // reaches the agent.
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &user.dir)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("LANG", "C.UTF-8")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        let started = Instant::now();
        let oldest = self
            .config
            .agents
            .iter()
            .find(|a| a.name == agent)
            .and_then(|a| tasks_in(&a.inbox, &self.recorded).into_iter().next());
        let runs = self.runs.entry(agent.to_owned()).or_default();
        if trigger == "continuous" {
            runs.not_before = Some(started + MIN_RESTART);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                runs.failures += 1;
                runs.not_before = Some(started + backoff(runs.failures));
                log::error!("cannot start {agent}: {e}");
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        runs.running.insert(pid);
        if let Some(task) = oldest {
            runs.oldest_task.insert(pid, task);
        }
        let recorded = self
            .record(NewEvent::system(RunStarted {
                agent: agent.to_owned(),
                pid,
                trigger: trigger.to_owned(),
            }))
            .await;
        if recorded.is_none() {
            // No audit, no action.
            let _ = child.start_kill();
        }
        let agent = agent.to_owned();
        self.exits.spawn(async move {
            let status = child.wait().await;
            Exit {
                agent,
                pid,
                status,
                duration: started.elapsed(),
            }
        });
    }

    async fn exited(&mut self, exit: Exit) {
        use std::os::unix::process::ExitStatusExt;
        let (exit_code, signal) = match &exit.status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        let runs = self.runs.entry(exit.agent.clone()).or_default();
        runs.running.remove(&exit.pid);
        let stuck = runs
            .oldest_task
            .remove(&exit.pid)
            .is_some_and(|task| std::fs::symlink_metadata(task).is_ok());
        if (exit_code == Some(0) && !stuck) || exit.duration >= QUICK_FAILURE {
            runs.failures = 0;
        } else {
            runs.failures += 1;
            runs.not_before = Some(Instant::now() + backoff(runs.failures));
        }
        self.record(NewEvent::system(RunExited {
            agent: exit.agent,
            pid: exit.pid,
            exit_code,
            signal,
            duration_ms: u64::try_from(exit.duration.as_millis()).unwrap_or(u64::MAX),
        }))
        .await;
    }
}
