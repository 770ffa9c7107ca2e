//! Reloading the configuration while the daemon runs: on SIGHUP (what
//! `systemctl reload` sends) and when `con.toml` or the secrets file
//! changes.
//!
//! A reload reads the files through the same [`HostConfig::load`] as the
//! start. A file that does not load (invalid config, secrets file others can
//! read, an agent's user among the trusted model servers) is refused with one
//! line on stderr and changes nothing, so nothing is recorded. A file that
//! loads is recorded as `config.reloaded` first and then served: the agent
//! set identity uses, the gateway's routes, keys and budgets, the
//! supervisor's agents and schedules, and the inboxes watched. What the
//! process was started with (layout, socket, log, `[system] name`, log
//! limits, task size limit, who starts runs) waits for a restart; the event
//! names such settings when the file changed them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use con_event::NewEvent;
use con_event::payloads::ConfigReloaded;
use con_event::payloads::Kind;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::arrivals::Arrivals;
use crate::{DaemonError, HostConfig, Shared, SupervisorConfig};

/// How long the files must be quiet after a change before they are read:
/// an editor or `con commission` writes in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Reads the host's files the way the start did.
pub type Loader = dyn Fn() -> Result<HostConfig, DaemonError> + Send + Sync;

/// How a running daemon re-reads its configuration.
pub struct Reload {
    /// The configuration the daemon starts with (what the first reload
    /// compares with).
    pub current: HostConfig,
    /// Reads the files again; the same function that built `current`.
    pub load: Arc<Loader>,
    /// Files whose change triggers a reload: `con.toml` and the secrets
    /// file. Their directories are watched, so a file replaced by rename
    /// (as con and editors write) is seen.
    pub files: Vec<PathBuf>,
    /// One message per reload asked for from outside (SIGHUP). Installed
    /// by the caller before the daemon reports ready, so a SIGHUP right
    /// after start reloads instead of killing.
    pub requests: mpsc::Receiver<()>,
}

/// What a reload swaps.
pub(crate) struct Targets {
    pub(crate) shared: Arc<Shared>,
    pub(crate) arrivals: Arc<Arrivals>,
    pub(crate) supervisor: Option<watch::Sender<SupervisorConfig>>,
}

/// Reloads being served: the files are watched from here on.
pub(crate) struct Watching {
    reload: Reload,
    watcher: Option<notify::RecommendedWatcher>,
    changed: mpsc::Receiver<()>,
    seen: Vec<Option<con_event::Digest>>,
}

/// Starts watching the files, before the daemon reports ready, so that an
/// edit right after start is not missed. A config that changed between the
/// start's read and the watch is reloaded at once.
pub(crate) fn watch(reload: Reload) -> Watching {
    let (changed_tx, changed) = mpsc::channel::<()>(16);
    let watcher = watch_files(&reload.files, changed_tx.clone());
    let now = read_digests(&reload.files);
    // What the running config was read from: the config's digest is of the
    // very bytes parsed; the secrets file as it is now.
    let mut seen = now.clone();
    if let Some(first) = seen.first_mut() {
        *first = Some(reload.current.config_digest);
    }
    if seen != now {
        let _ = changed_tx.try_send(());
    }
    Watching {
        reload,
        watcher,
        changed,
        seen,
    }
}

/// Serves reloads until the daemon stops.
pub(crate) async fn run(watching: Watching, targets: Targets) {
    let Watching {
        mut reload,
        watcher,
        mut changed,
        mut seen,
    } = watching;
    // Kept alive for as long as reloads are served.
    let _watcher = watcher;
    // Restart-only settings are compared with what the process started
    // with, not with the last reload.
    let started = reload.current.restart_only.clone();
    let stop = crate::until_stopping(targets.shared.stopping.clone());
    tokio::pin!(stop);
    loop {
        let trigger = tokio::select! {
            () = &mut stop => return,
            Some(()) = reload.requests.recv() => "signal",
            Some(()) = changed.recv() => {
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changed.recv()).await {}
                let now = file_digests(&reload.files).await;
                // Touched, or written back unchanged: nothing to reload
                // (nor to refuse again).
                if now == seen {
                    continue;
                }
                "file"
            }
        };
        seen = file_digests(&reload.files).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        apply(&mut reload, &targets, &started, trigger).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// Loads, records and swaps in one reload; refuses it with one line.
async fn apply(
    reload: &mut Reload,
    targets: &Targets,
    started: &[(&'static str, String)],
    trigger: &str,
) {
    let load = reload.load.clone();
    let next = match tokio::task::spawn_blocking(move || load()).await {
        Ok(Ok(next)) => next,
        Ok(Err(e)) => {
            eprintln!("con daemon: reload refused, the running configuration stays: {e}");
            return;
        }
        Err(e) => {
            eprintln!("con daemon: reload refused, the running configuration stays: {e}");
            return;
        }
    };
    let event = changes(&reload.current, &next, started, trigger);
    let message = event.message();
    // Recorded before it is acted on: no record, no reload.
    if let Err(e) = targets
        .shared
        .appender
        .submit(NewEvent::system(event))
        .wait_async()
        .await
    {
        eprintln!("con daemon: reload not applied, it could not be recorded: {e}");
        return;
    }
    let daemon = &next.daemon;
    // Inboxes first: a new agent's tasks are recorded (and so may be acted
    // on) only once its inbox's history is known to the watcher.
    let arrivals = targets.arrivals.clone();
    let store = targets.shared.store.clone();
    let inboxes = daemon.inboxes.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || arrivals.set_inboxes(&store, inboxes)).await
    {
        eprintln!("con daemon: reload: inbox watcher: {e}");
    }
    targets.shared.set_agents(
        daemon.agents.clone(),
        daemon.tiers.clone(),
        daemon.fleet_viewers.clone(),
        daemon.contract_authors.clone(),
    );
    if let Some(gateway) = &targets.shared.gateway {
        gateway.replace(daemon.gateway.clone().unwrap_or_default());
    }
    if let (Some(tx), Some(config)) = (&targets.supervisor, &daemon.supervisor) {
        tx.send_replace(config.clone());
    }
    eprintln!("con daemon: {message}");
    for problem in daemon.gateway.iter().flat_map(|g| g.problems()) {
        eprintln!("con daemon: {problem}");
    }
    reload.current = next;
}

/// The record of going from `before` to `after`.
fn changes(
    before: &HostConfig,
    after: &HostConfig,
    started: &[(&'static str, String)],
    trigger: &str,
) -> ConfigReloaded {
    let old: BTreeSet<&String> = before.agents.keys().collect();
    let new: BTreeSet<&String> = after.agents.keys().collect();
    ConfigReloaded {
        trigger: trigger.to_owned(),
        config_digest: after.config_digest,
        agents_added: new.difference(&old).map(|n| (*n).clone()).collect(),
        agents_removed: old.difference(&new).map(|n| (*n).clone()).collect(),
        agents_changed: after
            .agents
            .iter()
            .filter(|(name, agent)| before.agents.get(*name).is_some_and(|b| b != *agent))
            .map(|(name, _)| name.clone())
            .collect(),
        keys_changed: before.secrets_digest != after.secrets_digest,
        restart_needed: after
            .restart_only
            .iter()
            .filter(|setting| !started.contains(setting))
            .map(|(name, _)| (*name).to_owned())
            .collect(),
    }
}

/// Watches the directories of `files` and says when one of them changes.
/// Without a watch (inotify limits), SIGHUP still reloads.
fn watch_files(files: &[PathBuf], changed: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let names: Vec<(PathBuf, std::ffi::OsString)> = files
        .iter()
        .filter_map(|f| Some((f.parent()?.to_owned(), f.file_name()?.to_owned())))
        .collect();
    let wanted = names.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // Reads (the daemon's own among them) change nothing.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => false,
            Ok(event) => event.paths.iter().any(|p| {
                wanted
                    .iter()
                    .any(|(dir, name)| p.parent() == Some(dir) && p.file_name() == Some(name))
            }),
            // Lost events: look at the files again.
            Err(_) => true,
        };
        if relevant {
            // Full means a reload is pending anyway.
            let _ = changed.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("con daemon: not watching the config for changes (SIGHUP reloads): {e}");
            return None;
        }
    };
    let dirs: BTreeSet<&Path> = names.iter().map(|(dir, _)| dir.as_path()).collect();
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            eprintln!(
                "con daemon: not watching {} for config changes (SIGHUP reloads): {e}",
                dir.display()
            );
        }
    }
    Some(watcher)
}

/// The files' contents as digests (`None` for one that cannot be read), to
/// tell a real change from a touch.
async fn file_digests(files: &[PathBuf]) -> Vec<Option<con_event::Digest>> {
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || read_digests(&files))
        .await
        .unwrap_or_default()
}

fn read_digests(files: &[PathBuf]) -> Vec<Option<con_event::Digest>> {
    files
        .iter()
        .map(|f| std::fs::read(f).ok().map(|b| con_event::Digest::of(&b)))
        .collect()
}
