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
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use con_config::{CronSchedule, Mode};
use con_event::NewEvent;
use con_event::payloads::{AgentCondition, RunExited, RunStarted, TaskRouted};
use con_projection::FleetStatus;
use nix::unistd::User;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::Shared;

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
    /// Arguments before `run <agent>` (e.g. `--root`, `--user-prefix`).
    pub run_args: Vec<String>,
    /// Agents.
    pub agents: Vec<SupervisedAgent>,
    /// The outer inbox.
    pub outer_inbox: PathBuf,
    /// Agent that receives outer-inbox tasks (the concierge), if any.
    pub router: Option<String>,
    /// How often inboxes are re-checked without a wake-up.
    pub tick: Duration,
}

/// Longest back-off after failing runs.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run that fails faster than this counts towards back-off.
const QUICK_FAILURE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct AgentRuns {
    running: u32,
    failures: u32,
    not_before: Option<Instant>,
    warned_missing_user: bool,
}

struct Exit {
    agent: String,
    pid: u32,
    status: std::io::Result<std::process::ExitStatus>,
    duration: Duration,
}

/// A task not announced by a wake-up is acted on only once it is this old:
/// by then the watcher has recorded its arrival (acting first would break
/// "recorded before acted on"); this path only catches missed wake-ups.
const UNANNOUNCED_MIN_AGE: Duration = Duration::from_secs(2);

/// `*.task` entries of `dir` at least `min_age` old, sorted by name
/// (oldest first).
fn tasks_in(dir: &Path, min_age: Duration) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut tasks: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "task"))
        .filter(|p| {
            min_age.is_zero()
                || std::fs::symlink_metadata(p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= min_age))
        })
        .collect();
    tasks.sort();
    tasks
}

fn min_age(woken: &HashSet<String>, inbox: &str) -> Duration {
    if woken.contains(inbox) {
        Duration::ZERO
    } else {
        UNANNOUNCED_MIN_AGE
    }
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    config: SupervisorConfig,
    runs: HashMap<String, AgentRuns>,
    exits: JoinSet<Exit>,
    last_cron_minute: Option<i64>,
}

impl Supervisor {
    pub(crate) fn new(shared: Arc<Shared>, config: SupervisorConfig) -> Self {
        Self {
            shared,
            config,
            runs: HashMap::new(),
            exits: JoinSet::new(),
            last_cron_minute: None,
        }
    }

    /// Runs until the daemon stops. `wake` carries the name of an inbox that
    /// just received a task.
    pub(crate) async fn run(mut self, mut wake: mpsc::Receiver<String>) {
        let stop = crate::until_stopping(self.shared.stopping.clone());
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => self.round(&HashSet::new(), true).await,
                Some(inbox) = wake.recv() => {
                    // Coalesce a burst of arrivals into one round.
                    let mut woken = HashSet::from([inbox]);
                    while let Ok(inbox) = wake.try_recv() {
                        woken.insert(inbox);
                    }
                    self.round(&woken, false).await;
                }
                Some(exit) = self.exits.join_next(), if !self.exits.is_empty() => {
                    if let Ok(exit) = exit {
                        self.exited(exit).await;
                    }
                    self.round(&HashSet::new(), false).await;
                }
            }
        }
    }

    async fn record(&self, event: NewEvent) {
        // A failing log stops the daemon's writer; nothing more to do here.
        let _ = self.shared.appender.submit(event).wait_async().await;
    }

    async fn round(&mut self, woken: &HashSet<String>, from_tick: bool) {
        self.route_outer_inbox(min_age(woken, "outer")).await;
        let conditions = match self.shared.store.project::<FleetStatus>() {
            Ok(f) => f,
            Err(_) => return,
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
            let runs = self.runs.entry(agent.name.clone()).or_default();
            if runs.running >= agent.max_sessions
                || runs.not_before.is_some_and(|t| Instant::now() < t)
            {
                continue;
            }
            let trigger = match agent.mode {
                Mode::Continuous if runs.running == 0 => Some("continuous"),
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
                (!tasks_in(&agent.inbox, min_age(woken, &agent.name)).is_empty()).then_some("inbox")
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

    async fn route_outer_inbox(&self, min_age: Duration) {
        let Some(router) = self.config.router.clone() else {
            return;
        };
        let Some(target) = self.config.agents.iter().find(|a| a.name == router) else {
            return;
        };
        for task in tasks_in(&self.config.outer_inbox, min_age) {
            let Some(name) = task.file_name() else {
                continue;
            };
            let dest = target.inbox.join(name);
            if dest.exists() {
                continue;
            }
            // rename keeps the inode, so the owner (the provenance) travels
            // with the task.
            if std::fs::rename(&task, &dest).is_ok() {
                self.record(NewEvent {
                    task: name
                        .to_str()
                        .and_then(|n| n.strip_suffix(".task"))
                        .map(str::to_owned),
                    ..NewEvent::system(TaskRouted {
                        from: "outer".into(),
                        to: router.clone(),
                        path: dest.display().to_string(),
                    })
                })
                .await;
            }
        }
    }

    async fn start(&mut self, agent: &str, trigger: &str) {
        let user_name = format!("{}{agent}", self.shared.config.user_prefix);
        let Ok(Some(user)) = User::from_name(&user_name) else {
            let runs = self.runs.entry(agent.to_owned()).or_default();
            if !runs.warned_missing_user {
                runs.warned_missing_user = true;
                eprintln!("con daemon: cannot start {agent}: no user {user_name}");
            }
            return;
        };
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.arg(format!("--reuid={}", user.uid))
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
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("con daemon: cannot start {agent}: {e}");
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        self.runs.entry(agent.to_owned()).or_default().running += 1;
        self.record(NewEvent::system(RunStarted {
            agent: agent.to_owned(),
            pid,
            trigger: trigger.to_owned(),
        }))
        .await;
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
        runs.running = runs.running.saturating_sub(1);
        if exit_code == Some(0) {
            runs.failures = 0;
            runs.not_before = None;
        } else if exit.duration < QUICK_FAILURE {
            runs.failures += 1;
            let backoff = Duration::from_secs(1 << runs.failures.min(6)).min(MAX_BACKOFF);
            runs.not_before = Some(Instant::now() + backoff);
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
