//! The con daemon: the only process that opens the event log.
//!
//! It listens on a Unix socket; every connection's identity comes from
//! `SO_PEERCRED` ([`identity`]), never from what the client says. Appends go
//! through the store's group-commit writer and are answered only once
//! durable. Committed events are mirrored to journald and wake followers.
//!
//! Lifecycle: [`Daemon::run`] binds, tells systemd it is ready
//! (`sd_notify READY=1`), serves until the shutdown future resolves, then
//! stops accepting, lets in-flight requests finish, writes a
//! `chain.checkpoint` ([`checkpoint`]), commits and acknowledges everything
//! submitted, and returns.

mod arrivals;
mod checkpoint;
mod contract_add;
mod contracts;
pub mod diag;
mod enforce;
mod failed;
mod gateway;
pub mod health;
mod host;
pub mod identity;
mod ledger;
mod orphans;
mod quota;
mod reload;
mod server;
mod supervisor;

pub use checkpoint::CheckpointSettings;
pub use contracts::{ContractSettings, LOAD_CHECK, PARALLEL_CHECKS};
pub use gateway::{GatewayConfig, Route, micro_usd};
pub use host::HostConfig;
pub use quota::{LOG_SIZE_CONTRACT, LogLimits, QUOTA_CONTRACT};
pub use reload::{Loader, Reload};
pub use supervisor::{SupervisedAgent, SupervisorConfig};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use con_event::SessionId;
use con_journal::{JournalMirror, MirrorConfig, MirrorContext, MirrorStatus};
use con_layout::Layout;
use con_projection::{FleetStatus, Ledger, Projection};
use con_store::{
    CommitObserver, CommittedEvent, GroupCommitWriter, LogState, ProjectionError, Store,
    StoreError, WriterConfig,
};
use tokio::net::UnixListener;
use tokio::sync::watch;

/// Where and how the daemon runs ([`DaemonConfig::from_host`] builds it
/// from a host's layout and config).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Where its socket and event log are, and what agents' users and the
    /// operators' (trusted) group are called.
    pub layout: Layout,
    /// `[system] name` (journal `CON_SYSTEM`).
    pub system_name: String,
    /// Configured agent names: only their users are agents.
    pub agents: Vec<String>,
    /// Each configured agent's tier (`halt_workers` halts the workers).
    pub tiers: std::collections::BTreeMap<String, con_config::Tier>,
    /// The agents among them that see the whole fleet (status rows of
    /// every agent, the ledger): `con_config::Config::fleet_viewers`.
    pub fleet_viewers: Vec<String>,
    /// The agent holding the sysadmin role, told about failed tasks
    /// (`con_config::Config::sysadmin`).
    pub sysadmin: Option<String>,
    /// The agents among them that may add contracts (`con contracts add`):
    /// `con_config::Config::contract_authors`.
    pub contract_authors: Vec<String>,
    /// Journal mirror queue length.
    pub mirror_capacity: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// A connection that sends no request for this long is closed, unless
    /// an agent session it recorded events for is still open
    /// (`[infra] client_idle_timeout`).
    pub client_idle_timeout: Duration,
    /// How long tasks may wait in an active agent's inbox, with no run of
    /// it going, before `con status` lists them as a problem
    /// (`[inbox] stalled_after`).
    pub stalled_after: Duration,
    /// Start agent runs from the daemon (no systemd), if set.
    pub supervisor: Option<SupervisorConfig>,
    /// Inboxes whose arrivals are recorded (the outer one and every agent's).
    pub inboxes: Vec<con_inbox::InboxSpec>,
    /// Largest task read whole (`[inbox] max_task_kb`); a larger or sparse
    /// one is recorded by its first bytes only.
    pub max_task_bytes: u64,
    /// Model calls on agents' behalf, if configured.
    pub gateway: Option<GatewayConfig>,
    /// How large the log may grow, and what each agent may add to it.
    pub limits: LogLimits,
    /// How contracts are evaluated.
    pub contracts: ContractSettings,
    /// When `chain.checkpoint` events are written.
    pub checkpoints: CheckpointSettings,
}

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The event log could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Filesystem setup (directories, socket) failed.
    #[error("{path}: {cause}")]
    Setup {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// The inbox watcher could not start.
    #[error("inbox watcher: {0}")]
    Watch(#[from] con_inbox::WatchError),
    /// The configuration cannot be served safely.
    #[error("{0}")]
    Config(String),
    /// The secrets file cannot be used (its content is never quoted).
    #[error("{}: {message}", path.display())]
    Secrets {
        /// The secrets file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The final commit on shutdown failed.
    #[error("shutdown: {0}")]
    Shutdown(String),
}

fn setup_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |cause| DaemonError::Setup {
        path: path.to_owned(),
        cause,
    }
}

/// Creates `dir` (and parents) and sets its mode.
fn ensure_dir(dir: &Path, mode: u32) -> Result<(), DaemonError> {
    std::fs::create_dir_all(dir).map_err(setup_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(setup_err(dir))
}

/// The writer's observer: mirror to journald, then wake followers.
struct DaemonObserver {
    mirror: JournalMirror,
    head: watch::Sender<u64>,
}

impl CommitObserver for DaemonObserver {
    fn committed(&mut self, batch: Vec<CommittedEvent>) {
        let last = batch.last().map(|c| c.event.seq());
        self.mirror.committed(batch);
        if let Some(seq) = last {
            self.head.send_replace(seq);
        }
    }

    fn pending_events(&mut self) -> Vec<con_event::NewEvent> {
        self.mirror.pending_events()
    }
}

/// Shared by every connection.
pub(crate) struct Shared {
    /// The configuration the daemon started with. What a reload changes
    /// (the agent set, model routes, supervision) is read from the live
    /// fields instead: [`Shared::agents`], the gateway, the supervisor.
    pub(crate) config: DaemonConfig,
    /// Configured agent names now (only their users are agents), their
    /// tiers, and those of them that see the fleet. Replaced whole by a
    /// reload, so a reader holds one consistent set.
    agents: std::sync::RwLock<AgentSet>,
    /// Every check's state as the recorded results tell it, seeded from the
    /// log at start: what decides whether a failing result starts an
    /// incident (and escalates) or continues one. Held while a result is
    /// recorded and folded in, so two evaluations cannot both start one.
    pub(crate) check_states: tokio::sync::Mutex<con_contracts::CheckStates>,
    /// Whose each contract content added through the daemon is, seeded
    /// from the log's `contract.added` events at start and added to before
    /// each new file is written (see [`contracts::Authors`]).
    pub(crate) authors: std::sync::RwLock<contracts::Authors>,
    /// Held while a contract is added: the check of what is there and the
    /// write are one step.
    pub(crate) adding: tokio::sync::Mutex<()>,
    /// Held by whoever records a `session.ended` for a run that cannot
    /// (enforcement's kills, the sweep of abandoned sessions) from reading
    /// the open sessions to recording their ends: one of them ends each.
    ending_sessions: tokio::sync::Mutex<()>,
    pub(crate) store: Store,
    pub(crate) appender: con_store::Appender,
    /// Whether the log records now (the writer's state): while it does
    /// not, no run starts, no session opens and arrivals wait.
    pub(crate) log_state: watch::Receiver<LogState>,
    pub(crate) head: watch::Receiver<u64>,
    pub(crate) mirror: MirrorStatus,
    pub(crate) stopping: watch::Receiver<bool>,
    /// Open connections per uid.
    pub(crate) connections: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
    /// The LLM gateway, if configured.
    pub(crate) gateway: Option<gateway::Gateway>,
    /// The fleet status as last read (see [`Shared::fleet_status`]).
    fleet: ProjectionCache<FleetStatus>,
    /// The ledger as last read (see [`Shared::with_ledger`]).
    ledger: ProjectionCache<Ledger>,
    /// Owners of the sessions seen so far (see `server::session_owner`).
    pub(crate) session_owners: std::sync::Mutex<std::collections::HashMap<SessionId, String>>,
    /// Frame bytes (KiB) all connections may hold at once.
    pub(crate) frame_budget: Arc<tokio::sync::Semaphore>,
    /// The log's size and each agent's use of its quotas.
    pub(crate) quotas: quota::Quotas,
    /// The tasks whose arrival is durable (what may be acted on).
    pub(crate) recorded: arrivals::Recorded,
    /// Asks the supervisor for a routing pass of the outer inbox now
    /// (`None` without a supervisor).
    pub(crate) route_requests: Option<tokio::sync::mpsc::Sender<supervisor::RouteRequest>>,
}

/// The configured agents and the fleet viewers among them, swapped
/// together.
#[derive(Clone, Default)]
struct AgentSet {
    names: Arc<Vec<String>>,
    tiers: Arc<std::collections::BTreeMap<String, con_config::Tier>>,
    fleet_viewers: Arc<Vec<String>>,
    sysadmin: Option<String>,
    contract_authors: Arc<Vec<String>>,
}

impl AgentSet {
    fn of(config: &DaemonConfig) -> Self {
        Self {
            names: Arc::new(config.agents.clone()),
            tiers: Arc::new(config.tiers.clone()),
            fleet_viewers: Arc::new(config.fleet_viewers.clone()),
            sysadmin: config.sysadmin.clone(),
            contract_authors: Arc::new(config.contract_authors.clone()),
        }
    }
}

/// A projection kept in memory between reads, and the seq of the last
/// checkpoint the store saved for it: `Store::project` without decoding,
/// re-encoding and saving the whole state on every read (the gateway and
/// every supervisor round read the fleet status). The daemon is the log's
/// only writer, so the cached state stays valid; only the events committed
/// since the last read are folded in.
struct ProjectionCache<P> {
    cached: std::sync::Mutex<Option<(P, u64)>>,
    /// The seq a state has folded through (its own `through_seq`).
    through: fn(&P) -> u64,
}

impl<P: Projection> ProjectionCache<P> {
    fn new(through: fn(&P) -> u64) -> Self {
        Self {
            cached: std::sync::Mutex::new(None),
            through,
        }
    }

    /// Calls `f` with the state through the durable head. While the log
    /// cannot be read (after a failed write sled refuses most reads until
    /// the writer has reopened it), with the state as last read, so that
    /// the status view still says what is going on.
    fn with<R>(&self, store: &Store, f: impl FnOnce(&P) -> R) -> Result<R, ProjectionError> {
        let mut cache = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((state, checkpointed)) = cache.as_mut()
            && (self.through)(state) < *checkpointed + CHECKPOINT_EVERY
        {
            for event in store.events_from((self.through)(state) + 1) {
                match event {
                    Ok(event) => state.apply(&event),
                    Err(e) if unreadable_for_now(&e) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(f(state));
        }
        match store.project::<P>() {
            Ok(state) => {
                let through = (self.through)(&state);
                let out = f(&state);
                *cache = Some((state, through));
                Ok(out)
            }
            Err(ProjectionError::Store(e)) if unreadable_for_now(&e) => match cache.as_ref() {
                Some((state, _)) => Ok(f(state)),
                None => Err(ProjectionError::Store(e)),
            },
            Err(e) => Err(e),
        }
    }
}

/// The projection `P` through the durable head, from its checkpoint when
/// there is one (and saving a new one). If that fails (a checkpoint that
/// cannot be saved on a full disk, a state too large for one), it is
/// folded from the whole log, reading only: a checkpoint is a cache, and
/// what the daemon starts from must not depend on it.
pub(crate) fn project_or_fold<P: Projection>(store: &Store) -> Result<P, StoreError> {
    match store.project::<P>() {
        Ok(state) => Ok(state),
        Err(e) => {
            log::error!("{}: {e}; folding the whole log instead", P::NAME);
            let mut state = P::default();
            for event in store.events_from(1) {
                state.apply(&event?);
            }
            Ok(state)
        }
    }
}

/// Whether `e` is the log being unreadable for a while (a failed write,
/// a reopen in progress) rather than a damaged record.
fn unreadable_for_now(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled(_) | StoreError::Reopening(_))
}

/// Events a cached projection may run past its stored checkpoint before a
/// read goes through the store again (which saves a new one), so a restart
/// folds at most about this many events.
const CHECKPOINT_EVERY: u64 = 1024;

impl Shared {
    /// Whether the log records now.
    pub(crate) fn recording(&self) -> bool {
        self.log_state.borrow().is_recording()
    }

    /// The configured agents now (changed by a reload).
    pub(crate) fn agents(&self) -> Arc<Vec<String>> {
        self.agent_set().names
    }

    /// The configured agents that see the whole fleet now.
    pub(crate) fn fleet_viewers(&self) -> Arc<Vec<String>> {
        self.agent_set().fleet_viewers
    }

    /// The agent holding the sysadmin role now, if one does.
    pub(crate) fn sysadmin(&self) -> Option<String> {
        self.agent_set().sysadmin
    }

    /// The configured agents that may add contracts now.
    pub(crate) fn contract_authors(&self) -> Arc<Vec<String>> {
        self.agent_set().contract_authors
    }

    fn agent_set(&self) -> AgentSet {
        self.agents
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Makes `config`'s agents the configured agents (with their tiers,
    /// the fleet viewers, the sysadmin and the contract authors among them), from the next
    /// connection or request on.
    pub(crate) fn set_agents(&self, config: &DaemonConfig) {
        *self
            .agents
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = AgentSet::of(config);
    }

    /// The configured agents' tiers now (changed by a reload).
    pub(crate) fn tiers(&self) -> Arc<std::collections::BTreeMap<String, con_config::Tier>> {
        self.agent_set().tiers
    }

    /// The fleet status through the durable head.
    pub(crate) async fn fleet_status(self: &Arc<Self>) -> Result<FleetStatus, String> {
        self.with_fleet(FleetStatus::clone).await
    }

    /// `f` of the fleet status through the durable head, without cloning
    /// all of it.
    pub(crate) async fn with_fleet<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&FleetStatus) -> R + Send + 'static,
    ) -> Result<R, String> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || shared.fleet.with(&shared.store, f))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Calls `f` with the ledger through the durable head (blocking: call
    /// it on a blocking thread). The ledger grows with the log, so it is
    /// lent, not cloned.
    pub(crate) fn with_ledger<R>(&self, f: impl FnOnce(&Ledger) -> R) -> Result<R, String> {
        self.ledger.with(&self.store, f).map_err(|e| e.to_string())
    }
}

/// How long a stopping daemon waits for the journal mirror to send what is
/// queued.
const MIRROR_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// A running daemon's handles.
pub struct Daemon;

impl Daemon {
    /// Opens the log, binds the socket and serves until `shutdown` resolves;
    /// with `reload`, re-reads the configuration when asked or when its
    /// files change (see [`Reload`]).
    pub async fn run(
        config: DaemonConfig,
        reload: Option<Reload>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        if config.layout.user_prefix().is_empty() {
            // Every system account would then look like an agent.
            return Err(DaemonError::Config(
                "the agent user prefix must not be empty".into(),
            ));
        }
        // The log directory is root's alone: agents reach the log only
        // through the socket.
        let db = config.layout.event_log();
        ensure_dir(&config.layout.state_dir(), 0o700)?;
        let store = Store::open(&db)?;
        ensure_dir(&db, 0o700)?;
        let (mirror, mirror_status) = JournalMirror::spawn(
            MirrorConfig {
                queue_capacity: config.mirror_capacity,
                context: MirrorContext {
                    log_id: store.log_id()?,
                    system: config.system_name.clone(),
                },
            },
            store.clone(),
        )
        .map_err(setup_err(&db))?;
        let (head_tx, head_rx) = watch::channel(store.head().seq);
        let writer = GroupCommitWriter::spawn(
            store.clone(),
            WriterConfig {
                min_free_bytes: config.limits.min_free_bytes,
                ..WriterConfig::default()
            },
            Some(Box::new(DaemonObserver {
                mirror,
                head: head_tx,
            })),
        )?;

        let gateway = config
            .gateway
            .clone()
            .map(gateway::Gateway::new)
            .transpose()
            .map_err(DaemonError::Config)?;
        let log_bytes = quota::disk_usage(&db).map_err(setup_err(&db))?;
        // Watched before the socket accepts: a client that sees the daemon
        // up and edits the config must get a reload.
        let watching = reload.map(reload::watch);
        let socket = config.layout.socket();
        let listener = bind(&socket)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let contracts::ContractHistory {
            states: check_states,
            authors,
        } = project_or_fold(&store)?;
        let recorded = arrivals::Recorded::default();
        let (route_tx, route_rx) = tokio::sync::mpsc::channel::<supervisor::RouteRequest>(16);
        let shared = Arc::new(Shared {
            config: config.clone(),
            agents: std::sync::RwLock::new(AgentSet::of(&config)),
            check_states: tokio::sync::Mutex::new(check_states),
            authors: std::sync::RwLock::new(authors),
            adding: tokio::sync::Mutex::new(()),
            ending_sessions: tokio::sync::Mutex::new(()),
            store,
            appender: writer.appender(),
            log_state: writer.state(),
            head: head_rx,
            mirror: mirror_status,
            stopping: stop_rx,
            connections: Default::default(),
            gateway,
            fleet: ProjectionCache::new(|f: &FleetStatus| f.through_seq),
            ledger: ProjectionCache::new(|l: &Ledger| l.through_seq),
            session_owners: Default::default(),
            frame_budget: Arc::new(tokio::sync::Semaphore::new(server::FRAME_BUDGET_KIB)),
            quotas: quota::Quotas::new(config.limits.clone(), log_bytes),
            recorded: recorded.clone(),
            route_requests: config.supervisor.is_some().then_some(route_tx),
        });
        // The fleet status is read once now, so that a status view can
        // still be served from memory while the log cannot be read.
        if let Err(e) = shared.fleet_status().await {
            log::error!("reading the fleet status: {e}");
        }
        let measuring = tokio::spawn(quota::measure_log(shared.clone()));
        let ledger_files = tokio::spawn(ledger::write_files(shared.clone()));
        orphans::sweep_at_start(&shared).await;
        let orphans = tokio::spawn(orphans::run(shared.clone()));
        let failed_tasks = tokio::spawn(failed::run(shared.clone()));

        let (wake_tx, wake_rx) = tokio::sync::mpsc::channel::<String>(1024);
        let arrivals = arrivals::Arrivals::start(
            &shared.store,
            shared.appender.clone(),
            shared.log_state.clone(),
            config.inboxes.clone(),
            &config.layout.trusted_group(),
            config.max_task_bytes,
            wake_tx,
            recorded.clone(),
        )?;
        let checkpointing = tokio::spawn(checkpoint::run(shared.clone(), config.checkpoints));
        let scheduler = config
            .contracts
            .schedule
            .then(|| tokio::spawn(contracts::schedule(shared.clone())));
        let arrivals = Arc::new(arrivals);
        let (supervisor_tx, supervisor) = match config.supervisor.clone() {
            Some(sc) => {
                let (tx, rx) = watch::channel(sc.clone());
                let task = tokio::spawn(
                    supervisor::Supervisor::new(shared.clone(), sc, recorded)
                        .run(wake_rx, rx, route_rx),
                );
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let reloading = watching.map(|watching| {
            tokio::spawn(reload::run(
                watching,
                reload::Targets {
                    shared: shared.clone(),
                    arrivals: arrivals.clone(),
                    supervisor: supervisor_tx,
                },
            ))
        });

        // Ready: the socket accepts and the log is open.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(server::serve(shared.clone(), stream));
                    }
                    // EMFILE and friends: keep serving the connections we have.
                    Err(e) => {
                        log::error!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        // Drain: refuse new connections, let requests in flight finish.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        drop(listener);
        let _ = std::fs::remove_file(&socket);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.drain_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        if let Some(scheduler) = scheduler {
            let _ = scheduler.await;
        }
        let _ = measuring.await;
        let _ = ledger_files.await;
        let _ = orphans.await;
        let _ = failed_tasks.await;
        if let Some(reloading) = reloading {
            let _ = reloading.await;
        }
        // Every arrival seen so far is committed before the writer stops.
        // The reload task held the only other handle, and it has ended.
        let arrivals = Arc::try_unwrap(arrivals)
            .map_err(|_| DaemonError::Shutdown("the inbox watcher is still in use".to_owned()))?;
        tokio::task::spawn_blocking(move || arrivals.stop())
            .await
            .map_err(|e| DaemonError::Shutdown(e.to_string()))?;
        // Last, so that it vouches for everything this run wrote.
        if let Ok(mut plan) = checkpointing.await
            && checkpoint::write(&shared, &mut plan).await
        {
            // The next start folds from here.
            checkpoint::save_projections(&shared).await;
        }
        let mirror = shared.mirror.clone();
        drop(shared);
        // Commits and acknowledges everything submitted, then stops.
        tokio::task::spawn_blocking(move || writer.shutdown())
            .await
            .map_err(|e| DaemonError::Shutdown(e.to_string()))?
            .map_err(|e| DaemonError::Shutdown(e.to_string()))?;
        // The writer dropped the mirror with itself: give it a moment to
        // send what is queued. What it does not send is re-sent at the next
        // start.
        tokio::task::spawn_blocking(move || mirror.wait_finished(MIRROR_DRAIN_TIMEOUT))
            .await
            .map_err(|e| DaemonError::Shutdown(e.to_string()))?;
        Ok(())
    }
}

/// Resolves once the daemon starts shutting down.
pub(crate) async fn until_stopping(mut stopping: watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stopping.wait_for(|s| *s).await.map(|_| ());
}

/// Binds the socket: any local user may connect (identity decides what they
/// may do), nobody but root may replace it.
fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = socket.parent() {
        ensure_dir(dir, 0o755)?;
    }
    // A socket left by a killed daemon; a live daemon holds the log lock, so
    // reaching this point means no other daemon serves it.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(setup_err(socket)(e)),
    }
    let listener = UnixListener::bind(socket).map_err(setup_err(socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(setup_err(socket))?;
    Ok(listener)
}
