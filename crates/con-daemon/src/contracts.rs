//! Evaluating contracts: the contract files in the contracts directory and
//! con's built-in checks ([`crate::health`]). The daemon is the one place
//! that records their results (`contract.result` is its kind alone), when
//! asked (`con healthcheck`, `con contracts check`) and, when it supervises
//! runs itself, on each contract's `frequency`.
//!
//! Checks run in parallel on blocking threads, each in its own process
//! group with its own deadline (`con_contracts::run_check`). A contract file
//! that cannot be used is one failing result of its own (`load`), and every
//! other contract still runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use con_contracts::{
    Action, CheckResult, CheckStates, ContractType, Loaded, LoadedContract, OnFail,
};
use con_event::payloads::{CheckStatus, ContractResult};
use con_event::{Actor, Event, NewEvent, Payload};
use con_layout::Layout;
use con_projection::Projection;
use con_protocol::{CheckRun, RunContracts};

use crate::Shared;

/// The check name of a contract file that could not be used.
pub const LOAD_CHECK: &str = "load";

/// Checks run at once, unless the daemon is told otherwise.
pub const PARALLEL_CHECKS: usize = 4;

/// How often the scheduler looks for due contracts.
const SCHEDULER_TICK: Duration = Duration::from_secs(1);

/// What contract evaluation needs from the host.
#[derive(Clone, Debug, Default)]
pub struct ContractSettings {
    /// The environment every check starts with (paths, user prefix,
    /// thresholds); see [`ContractSettings::from_host`].
    pub env: Vec<(String, String)>,
    /// Evaluate on each contract's frequency (when the daemon supervises
    /// runs itself; under systemd a timer runs `con healthcheck`).
    pub schedule: bool,
    /// How often the built-in checks run when scheduling.
    pub builtin_interval: Duration,
    /// Checks run at once ([`PARALLEL_CHECKS`]; 0 counts as 1).
    pub parallel: usize,
}

impl ContractSettings {
    /// Settings for `layout` and `config`'s agents and `[contracts.system]`.
    pub fn from_host(layout: &Layout, config: &con_config::Config, schedule: bool) -> Self {
        let sys = &config.contracts.system;
        let path = |p: std::path::PathBuf| p.display().to_string();
        let agents: Vec<&str> = config.agents.iter().map(|a| a.name.as_str()).collect();
        let env = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ),
            ("LANG", "C.UTF-8".to_owned()),
            ("HOME", "/root".to_owned()),
            ("CON_ROOT", path(layout.root().to_path_buf())),
            ("CON_USER_PREFIX", layout.user_prefix().to_owned()),
            ("CON_CONFIG", path(layout.config_file().to_path_buf())),
            ("CON_ETC_DIR", path(layout.etc_dir())),
            ("CON_ENV_FILE", path(layout.env_file())),
            ("CON_SRV_DIR", path(layout.srv_dir())),
            ("CON_AGENTS_DIR", path(layout.agents_dir())),
            ("CON_CONTRACTS_DIR", path(layout.contracts_dir())),
            ("CON_HOME_BASE", path(layout.home_base())),
            ("CON_STATE_DIR", path(layout.state_dir())),
            ("CON_AGENTS", agents.join(" ")),
            ("CON_DISK_MIN_FREE_PCT", sys.disk_min_free_pct.to_string()),
            ("CON_MEM_MIN_FREE_PCT", sys.mem_min_free_pct.to_string()),
            ("CON_MAX_LOAD_PER_CPU", sys.max_load_per_cpu.to_string()),
            ("CON_MAX_SESSION_MIN", sys.max_session_min.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self {
            env,
            schedule,
            builtin_interval: Duration::from_secs(sys.healthcheck_interval_secs),
            parallel: PARALLEL_CHECKS,
        }
    }
}

/// A result, with the `on_fail` it is decided by: its contract file's
/// check's, or for a built-in check [`builtin_on_fail`]'s; none for a
/// result no check asks anything of (a broken file, a skipped scope).
type Evaluated = (CheckResult, Option<OnFail>);

/// The agent a failing built-in check is escalated to, when configured:
/// the one the shipped library's contracts escalate to.
const BUILTIN_ESCALATE: &str = "sysadmin";

/// What a failing built-in check (con's own health) asks for, as the
/// shipped library's checks do: an alert on every failing result, and the
/// `sysadmin` agent, if one is configured, told once when the check starts
/// failing. The same [`record`] decides and enforces it, whoever asked for
/// the evaluation (the scheduler, `con healthcheck`, `con contracts
/// check`, `RunChecks`).
fn builtin_on_fail(agents: &[String]) -> OnFail {
    OnFail {
        action: Action::Alert,
        escalate: agents
            .iter()
            .any(|a| a == BUILTIN_ESCALATE)
            .then(|| BUILTIN_ESCALATE.to_owned()),
        message: None,
    }
}

/// Which checks an evaluation runs, besides what its `RunContracts` asks.
#[derive(Clone, Copy)]
enum Due<'a> {
    /// Everything asked for (a request).
    Asked,
    /// The scheduler's due contract ids, and the built-ins and broken files
    /// when they hold [`BUILTIN`].
    Scheduled(&'a [String]),
    /// The built-in checks alone (`RunChecks`).
    BuiltinsOnly,
}

/// An id asked for that no contract has.
#[derive(Debug)]
pub(crate) struct UnknownContract(pub String);

/// One unit of work: a check of a loaded contract, or a result already
/// known (a broken file, a skipped scope, a built-in check) with the
/// `on_fail` it is decided by.
enum Work {
    Check(Arc<LoadedContract>, usize),
    Known(CheckResult, Option<OnFail>),
}

/// Evaluates what `which` asks for and records every result, in a stable
/// order (built-ins, then files in name order, checks in file order).
pub(crate) async fn evaluate(
    shared: &Arc<Shared>,
    which: RunContracts,
) -> Result<Vec<CheckRun>, Result<UnknownContract, String>> {
    let worker = shared.clone();
    let results = tokio::task::spawn_blocking(move || run_selected(&worker, &which, Due::Asked))
        .await
        .map_err(|e| Err(e.to_string()))??;
    record(shared, results).await.map_err(Err)
}

/// Runs con's built-in checks alone and records them through the same
/// [`record`] as every other evaluation (`RunChecks`).
pub(crate) async fn evaluate_builtins(shared: &Arc<Shared>) -> Result<Vec<CheckRun>, String> {
    let worker = shared.clone();
    let results = tokio::task::spawn_blocking(move || {
        run_selected(&worker, &RunContracts::default(), Due::BuiltinsOnly)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| match e {
        Ok(UnknownContract(id)) => format!("no contract {id:?}"),
        Err(e) => e,
    })?;
    record(shared, results).await
}

/// Whose each content added through the daemon is (`contract.added`): a
/// root-owned contract file with one of these digests runs as its author.
/// Keyed by content, not by name, so renaming a file does not change whose
/// it is; the latest add of a content wins.
pub(crate) type Authors = HashMap<con_event::Digest, u32>;

/// What the daemon starts with from the log's contract history: every
/// check's state from its `contract.result` events (so an incident that
/// began before a restart does not escalate again) and the authors of added
/// contracts from its `contract.added` events. A checkpointed projection:
/// a start folds only what came after the last checkpoint, not the whole
/// log (minutes of results a day add up over months).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ContractHistory {
    pub(crate) states: CheckStates,
    pub(crate) authors: Authors,
}

impl Projection for ContractHistory {
    const NAME: &'static str = "daemon.contract-history";
    const VERSION: u32 = 1;

    fn apply(&mut self, event: &Event) {
        match &event.payload {
            Payload::ContractResult(r) => {
                self.states.observe(
                    (r.contract.clone(), r.check.clone(), r.scope_agent.clone()),
                    r.status,
                    event.seq(),
                    event.envelope.ts_unix_nanos,
                    &r.detail,
                );
            }
            Payload::ContractAdded(a) => {
                self.authors.insert(a.content.digest, a.author_uid);
            }
            _ => {}
        }
    }
}

/// What a recorded result asks the daemon to do.
struct Asked {
    contract: String,
    scope_agent: Option<String>,
    result_seq: u64,
    reason: String,
    decision: con_contracts::Decision,
}

/// Appends each result and folds it into the check states; then carries out
/// what the failing ones ask for (each enforcement caused by its result).
/// Answers with what was recorded.
async fn record(shared: &Arc<Shared>, results: Vec<Evaluated>) -> Result<Vec<CheckRun>, String> {
    let mut runs = Vec::with_capacity(results.len());
    let mut asked = Vec::new();
    // Held until every result is folded in: a concurrent evaluation of the
    // same check sees this one's transition, so an incident starts once.
    let mut states = shared.check_states.lock().await;
    for (r, on_fail) in results {
        let duration_ms = u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX);
        let payload = ContractResult {
            contract: r.contract.clone(),
            check: r.check.clone(),
            scope_agent: r.scope_agent.clone(),
            status: r.status,
            detail: r.output.clone(),
            duration_ms,
        };
        let appended = shared
            .appender
            .submit(NewEvent::system(payload))
            .wait_async()
            .await
            .map_err(|e| format!("recording contract.result: {e}"))?;
        let transition = states.observe(
            (r.contract.clone(), r.check.clone(), r.scope_agent.clone()),
            r.status,
            appended.seq,
            crate::gateway::now_unix_nanos(),
            &r.output,
        );
        if let Some(on_fail) = &on_fail {
            let decision = con_contracts::decide_on_fail(Some(on_fail), transition);
            if decision.action.is_some() || decision.escalate.is_some() {
                let message = on_fail.message.clone();
                asked.push(Asked {
                    contract: r.contract.clone(),
                    scope_agent: r.scope_agent.clone(),
                    result_seq: appended.seq,
                    reason: format!(
                        "check {} {}: {}",
                        r.check,
                        r.status.as_str(),
                        message.unwrap_or_else(|| r.output.clone())
                    ),
                    decision,
                });
            }
        }
        runs.push(CheckRun {
            contract: r.contract,
            check: r.check,
            scope_agent: r.scope_agent,
            status: r.status,
            detail: r.output,
            duration_ms,
            seq: appended.seq,
        });
    }
    drop(states);
    for a in asked {
        let cause = crate::enforce::Cause {
            actor: Actor::system(),
            contract: a.contract,
            causation: Some(a.result_seq),
            reason: a.reason,
            escalation: None,
        };
        // Each enforcement is recorded (or, unrecordable, not carried
        // out) on its own; one failing does not stop the others.
        if let Some(action) = a.decision.action {
            let target = match action {
                con_contracts::Action::HaltAgents | con_contracts::Action::HaltWorkers => None,
                _ => a.scope_agent.clone(),
            };
            if let Err(e) = crate::enforce::enforce(shared, &cause, action.as_str(), target).await {
                log::error!("enforcement of {}: {e}", cause.contract);
            }
        }
        if let Some(to) = a.decision.escalate
            && let Err(e) = crate::enforce::enforce(shared, &cause, "escalate", Some(to)).await
        {
            log::error!("escalation of {}: {e}", cause.contract);
        }
    }
    Ok(runs)
}

/// Loads, selects and runs (blocking); `due` narrows the selection.
fn run_selected(
    shared: &Shared,
    which: &RunContracts,
    due: Due<'_>,
) -> Result<Vec<Evaluated>, Result<UnknownContract, String>> {
    let layout = &shared.config.layout;
    let loaded = load(shared);
    let builtins = crate::health::builtin_checks(layout, &shared.mirror.health());
    let wanted = |id: &str| {
        (which.ids.is_empty() || which.ids.iter().any(|w| w == id))
            && match due {
                Due::Asked => true,
                Due::Scheduled(d) => d.iter().any(|w| w == id),
                Due::BuiltinsOnly => false,
            }
    };
    if let Some(unknown) = which.ids.iter().find(|id| {
        !builtins.iter().any(|b| b.contract == id.as_str())
            && !loaded.contracts.iter().any(|c| &c.contract.id == *id)
            && !loaded
                .broken
                .iter()
                .any(|b| b.contract.as_deref() == Some(id.as_str()))
    }) {
        return Err(Ok(UnknownContract(unknown.clone())));
    }

    let mut work: Vec<Work> = Vec::new();
    let builtins_due = match due {
        Due::Asked | Due::BuiltinsOnly => true,
        Due::Scheduled(d) => d.iter().any(|w| w == BUILTIN),
    };
    let on_fail = builtin_on_fail(&shared.agents());
    for b in builtins {
        if builtins_due && (which.ids.is_empty() || which.ids.iter().any(|w| w == b.contract)) {
            work.push(Work::Known(
                CheckResult {
                    contract: b.contract.to_owned(),
                    check: b.check.to_owned(),
                    scope_agent: None,
                    status: b.status,
                    output: b.detail,
                    duration: b.duration,
                },
                Some(on_fail.clone()),
            ));
        }
    }
    let settings = &shared.config.contracts;
    if matches!(due, Due::BuiltinsOnly) {
        return Ok(run_parallel(work, &settings.env, settings.parallel));
    }
    for broken in &loaded.broken {
        let id = broken.contract.clone().unwrap_or_else(|| {
            broken
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        // On a schedule, a broken file is reported with the built-ins
        // rather than on every contract's tick.
        if builtins_due && (which.ids.is_empty() || which.ids.contains(&id)) {
            work.push(Work::Known(
                CheckResult {
                    contract: id,
                    check: LOAD_CHECK.into(),
                    scope_agent: None,
                    status: CheckStatus::Error,
                    output: broken.to_string(),
                    duration: Duration::ZERO,
                },
                None,
            ));
        }
    }
    for c in loaded.contracts {
        if !wanted(&c.contract.id)
            || (which.detective_only && c.contract.kind != ContractType::Detective)
        {
            continue;
        }
        let c = Arc::new(c);
        if let Some(agent) = c.contract.scope.agent()
            && !shared.agents().iter().any(|a| a == agent)
        {
            for check in &c.contract.checks {
                work.push(Work::Known(
                    CheckResult {
                        contract: c.contract.id.clone(),
                        check: check.name.clone(),
                        scope_agent: Some(agent.to_owned()),
                        status: CheckStatus::Skipped,
                        output: format!("agent {agent} is not configured"),
                        duration: Duration::ZERO,
                    },
                    None,
                ));
            }
            continue;
        }
        for i in 0..c.contract.checks.len() {
            work.push(Work::Check(c.clone(), i));
        }
    }
    Ok(run_parallel(work, &settings.env, settings.parallel))
}

/// The contracts directory, or its listing failure as a broken "file".
/// Names, sizes and modification times of the entries of `dir`, sorted
/// (empty when it cannot be read).
fn listing(dir: &std::path::Path) -> Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let meta = e.metadata().ok();
            (
                e.file_name(),
                meta.as_ref().map_or(0, std::fs::Metadata::len),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    out.sort();
    out
}

/// The contracts directory, each root-owned file whose content was added
/// through the daemon set to run as its author.
pub(crate) fn load(shared: &Shared) -> Loaded {
    let mut loaded = load_dir(&shared.config.layout);
    let authors = shared
        .authors
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for c in &mut loaded.contracts {
        if c.owner == 0
            && let Some(&author) = authors.get(&c.digest)
        {
            c.owner = author;
        }
    }
    loaded
}

fn load_dir(layout: &Layout) -> Loaded {
    let dir = layout.contracts_dir();
    con_contracts::load_dir(&dir).unwrap_or_else(|e| Loaded {
        contracts: Vec::new(),
        broken: vec![con_contracts::ContractError {
            file: dir,
            contract: None,
            field: String::new(),
            message: e.to_string(),
        }],
    })
}

/// Runs the checks on up to `parallel` threads; results keep the order of
/// `work`, each with the `on_fail` it is decided by.
fn run_parallel(work: Vec<Work>, env: &[(String, String)], parallel: usize) -> Vec<Evaluated> {
    let n = work.len();
    let slots: Vec<Mutex<Option<Evaluated>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let queue = Mutex::new(work.into_iter().enumerate());
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, n.max(1)) {
            s.spawn(|| {
                loop {
                    let next = queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next();
                    let Some((i, item)) = next else { break };
                    let result = match item {
                        Work::Known(r, on_fail) => (r, on_fail),
                        Work::Check(c, k) => {
                            let check = &c.contract.checks[k];
                            (
                                con_contracts::run_check(&c, check, env),
                                check.on_fail.clone(),
                            )
                        }
                    };
                    if let Some(slot) = slots.get(i) {
                        *slot
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .filter_map(|m| {
            m.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
        .collect()
}

/// Stands for the built-in checks among due ids.
const BUILTIN: &str = "\0builtin";

/// Evaluates each detective contract on its frequency, and the built-in
/// checks on `[contracts.system] healthcheck_interval`, until the daemon
/// stops. A contract is first due one period after it is first seen, so a
/// daemon's start does not trigger every check at once.
pub(crate) async fn schedule(shared: Arc<Shared>) {
    let mut next: HashMap<String, Instant> = HashMap::new();
    next.insert(
        BUILTIN.to_owned(),
        Instant::now() + shared.config.contracts.builtin_interval,
    );
    let stopping = crate::until_stopping(shared.stopping.clone());
    tokio::pin!(stopping);
    // The detective contracts' frequencies, parsed again only when the
    // directory's listing (names, sizes, times) changes: a tick is a stat
    // of each file, not a parse of each.
    let mut seen: Option<Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)>> = None;
    let mut every: Vec<(String, Duration)> = Vec::new();
    loop {
        tokio::select! {
            () = &mut stopping => return,
            () = tokio::time::sleep(SCHEDULER_TICK) => {}
        }
        let layout = shared.config.layout.clone();
        let listing = tokio::task::spawn_blocking(move || listing(&layout.contracts_dir()))
            .await
            .ok();
        if listing != seen {
            let worker = shared.clone();
            let Ok(loaded) = tokio::task::spawn_blocking(move || load(&worker)).await else {
                continue;
            };
            every = loaded
                .contracts
                .iter()
                .filter_map(|c| match (c.contract.frequency, c.contract.kind) {
                    (Some(f), ContractType::Detective) => Some((c.contract.id.clone(), f)),
                    _ => None,
                })
                .collect();
            seen = listing;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        if next.get(BUILTIN).is_some_and(|t| *t <= now) {
            due.push(BUILTIN.to_owned());
            next.insert(
                BUILTIN.to_owned(),
                now + shared.config.contracts.builtin_interval,
            );
        }
        for (id, period) in &every {
            let at = next.entry(id.clone()).or_insert(now + *period);
            if *at <= now {
                due.push(id.clone());
                *at = now + *period;
            }
        }
        if due.is_empty() {
            continue;
        }
        let worker = shared.clone();
        let which = RunContracts {
            ids: Vec::new(),
            detective_only: true,
        };
        let results = tokio::task::spawn_blocking(move || {
            run_selected(&worker, &which, Due::Scheduled(&due))
        })
        .await;
        if let Ok(Ok(results)) = results
            && let Err(e) = record(&shared, results).await
        {
            log::error!("contracts: {e}");
        }
    }
}
