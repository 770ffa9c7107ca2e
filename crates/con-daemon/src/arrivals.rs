//! Inbox arrivals: the watcher's events, committed in order, then published
//! as *recorded* — the supervisor acts only on tasks in that set, so nothing
//! is acted on before its arrival is durable in the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use con_event::{Event, NewEvent, Payload};
use con_inbox::{ArrivalKey, InboxSpec, InboxWatcher, Provenance, WatcherConfig, key_of};
use con_projection::Projection;
use con_store::{AppendError, Appender, LogState, Store, Ticket};
use tokio::sync::mpsc::Sender;
use tokio::sync::watch;

/// Arrivals waiting for their acknowledgement before they are published.
const IN_FLIGHT: usize = 512;

/// How often inbox directories are checked for appearing or being replaced.
const REWATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Paths of tasks whose arrival is durable in the log. Entries are removed
/// once the file has left its inbox.
#[derive(Clone, Default)]
pub(crate) struct Recorded(Arc<Mutex<HashSet<PathBuf>>>);

impl Recorded {
    fn insert(&self, path: PathBuf) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path);
    }

    /// Whether the arrival of the task at `path` is recorded.
    pub(crate) fn contains(&self, path: &std::path::Path) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(path)
    }

    /// Forgets tasks that are no longer where they arrived.
    pub(crate) fn prune(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| std::fs::symlink_metadata(p).is_ok());
    }
}

/// Where every file the log recorded last arrived: a checkpointed
/// projection of the log's `inbox.arrived` events (of every inbox, also
/// ones no longer configured: remembering more can only lower trust), so
/// a start folds only what came after the last checkpoint.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ArrivalHistory(pub(crate) Provenance);

impl Projection for ArrivalHistory {
    const NAME: &'static str = "daemon.arrival-history";
    const VERSION: u32 = 1;

    fn apply(&mut self, event: &Event) {
        if let Payload::InboxArrived(a) = &event.payload {
            self.0.remember(a);
        }
    }
}

/// Keys of the tasks present now in `inboxes` whose arrival is the last
/// one the log recorded for their file, and where every file the log
/// recorded last arrived: provenance outlives the daemon because it is the
/// log's.
fn recorded_and_present(store: &Store, inboxes: &[InboxSpec]) -> (HashSet<ArrivalKey>, Provenance) {
    let provenance = match crate::project_or_fold::<ArrivalHistory>(store) {
        Ok(history) => history.0,
        Err(e) => {
            // Arrivals we cannot read are not remembered: their files,
            // should they come back, would be judged by lstat alone.
            log::error!("cannot read the inbox arrivals in the log: {e}");
            Provenance::default()
        }
    };
    let mut recorded = HashSet::new();
    for inbox in inboxes {
        let Ok(entries) = std::fs::read_dir(&inbox.dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = inbox.dir.join(entry.file_name());
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                let key = key_of(&path, &meta);
                if provenance.is_latest_arrival(&key) {
                    recorded.insert(key);
                }
            }
        }
    }
    (recorded, provenance)
}

/// The inboxes to keep watched: changed by a reload, read by the thread
/// that (re)watches them.
type InboxList = Arc<Mutex<Vec<InboxSpec>>>;

/// The running watcher and the threads that record its events and keep
/// every configured inbox watched.
pub(crate) struct Arrivals {
    watcher: Arc<InboxWatcher>,
    inboxes: InboxList,
    recorded: Recorded,
    recorder: JoinHandle<()>,
    rewatch: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Arrivals {
    /// Starts watching. Inboxes that do not exist yet, or that are replaced
    /// later, are (re)watched as soon as they appear; until then nothing in
    /// them is recorded, so nothing in them is acted on.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        store: &Store,
        appender: Appender,
        log_state: watch::Receiver<LogState>,
        inboxes: Vec<InboxSpec>,
        trusted_group: &str,
        max_task_bytes: u64,
        wake: Sender<String>,
        recorded: Recorded,
    ) -> Result<Self, con_inbox::WatchError> {
        let (already, provenance) = recorded_and_present(store, &inboxes);
        for key in &already {
            recorded.insert(PathBuf::from(&key.path));
        }
        let (tx, rx) = mpsc::sync_channel::<NewEvent>(1024);
        let watcher = Arc::new(InboxWatcher::start_with_provenance(
            Vec::new(),
            WatcherConfig {
                trusted_group: trusted_group.to_owned(),
                max_content_bytes: usize::try_from(max_task_bytes).unwrap_or(usize::MAX),
                max_task_bytes,
            },
            already,
            provenance,
            tx,
            |e| log::error!("inbox watcher: {e}"),
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let inboxes: InboxList = Arc::new(Mutex::new(inboxes));
        let rewatch = {
            let watcher = watcher.clone();
            let stop = stop.clone();
            let inboxes = inboxes.clone();
            spawn("con-inbox-rewatch", move || {
                rewatch(&watcher, &inboxes, &stop)
            })?
        };
        let recorder = {
            let recorded = recorded.clone();
            let stop = stop.clone();
            spawn("con-arrivals", move || {
                record(&rx, &appender, &log_state, &stop, &wake, &recorded)
            })?
        };
        Ok(Self {
            watcher,
            inboxes,
            recorded,
            recorder,
            rewatch,
            stop,
        })
    }

    /// Makes `inboxes` the configured set (a reload). A new inbox first
    /// gets what the log knows of it, as the start does for every inbox
    /// (its tasks already recorded are not recorded again, and a file that
    /// arrived before is unverified), and is then watched within a second
    /// by the thread that watches appearing inboxes. A removed inbox is no
    /// longer re-watched; its current watch lasts until its directory is
    /// replaced or removed (an arrival recorded there is never acted on).
    /// Reads the log: call it off the async workers.
    pub(crate) fn set_inboxes(&self, store: &Store, inboxes: Vec<InboxSpec>) {
        let added: Vec<InboxSpec> = {
            let current = self.inboxes.lock().unwrap_or_else(PoisonError::into_inner);
            inboxes
                .iter()
                .filter(|i| !current.iter().any(|c| c.name == i.name && c.dir == i.dir))
                .cloned()
                .collect()
        };
        if !added.is_empty() {
            let (already, provenance) = recorded_and_present(store, &added);
            for key in &already {
                self.recorded.insert(PathBuf::from(&key.path));
            }
            if let Err(e) = self.watcher.remember(already, provenance) {
                log::error!("inbox watcher: {e}");
            }
        }
        // Only now may the re-watching thread add them: the watcher has
        // taken in their history first.
        *self.inboxes.lock().unwrap_or_else(PoisonError::into_inner) = inboxes;
    }

    /// Stops watching and waits until the arrivals handed over so far are
    /// committed (one the watcher holds at that moment is recorded again at
    /// the next start: its key is not in the log yet).
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.rewatch.join();
        drop(self.watcher);
        let _ = self.recorder.join();
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, con_inbox::WatchError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| con_inbox::WatchError::Io {
            op: "spawn a thread",
            path: PathBuf::new(),
            source,
        })
}

/// (Re)adds each inbox whose directory appeared or was replaced.
fn rewatch(watcher: &InboxWatcher, inboxes: &InboxList, stop: &AtomicBool) {
    let mut watched: HashMap<String, (u64, u64)> = HashMap::new();
    let mut reported: HashSet<String> = HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        let current = inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // A removed inbox that comes back is watched (and scanned) again.
        watched.retain(|name, _| current.iter().any(|i| &i.name == name));
        for inbox in &current {
            let identity = std::fs::metadata(&inbox.dir)
                .ok()
                .filter(|m| m.is_dir())
                .map(|m| (m.dev(), m.ino()));
            match identity {
                None => {
                    if reported.insert(inbox.name.clone()) {
                        log::warn!(
                            "inbox {} ({}) does not exist; watching for it",
                            inbox.dir.display(),
                            inbox.name
                        );
                    }
                }
                Some(id) if watched.get(&inbox.name) != Some(&id) => {
                    match watcher.add_inbox(inbox.clone()) {
                        Ok(()) => {
                            watched.insert(inbox.name.clone(), id);
                            reported.remove(&inbox.name);
                        }
                        Err(e) => log::error!("inbox watcher: {e}"),
                    }
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(REWATCH_INTERVAL);
    }
}

/// How often a recorder waiting for the log to record again looks.
const RECORDING_POLL: Duration = Duration::from_millis(100);

/// Submits arrivals in order, many in flight; publishes each as recorded and
/// wakes the supervisor once it is durable. An arrival the log could not
/// record (its disk full) is submitted again once it records again, so its
/// task is taken up without a restart; until then nothing acts on it.
fn record(
    rx: &mpsc::Receiver<NewEvent>,
    appender: &Appender,
    log_state: &watch::Receiver<LogState>,
    stop: &AtomicBool,
    wake: &Sender<String>,
    recorded: &Recorded,
) {
    type InFlight = VecDeque<(Ticket, NewEvent, String, PathBuf)>;
    let settle = |in_flight: &mut InFlight, all: bool| {
        while in_flight.len() > if all { 0 } else { IN_FLIGHT } {
            let Some((mut ticket, event, inbox, path)) = in_flight.pop_front() else {
                break;
            };
            loop {
                match ticket.wait() {
                    Ok(_) => {
                        recorded.insert(path);
                        let _ = wake.try_send(inbox);
                    }
                    Err(AppendError::CannotRecord(_)) => {
                        // Not recorded, so not acted on: wait until the log
                        // records, then try again (in order: those behind
                        // it were refused too, or are retried behind it).
                        while !log_state.borrow().is_recording() {
                            if stop.load(Ordering::SeqCst) {
                                log::warn!(
                                    "could not record the arrival of {} before stopping; the next start scans again",
                                    path.display()
                                );
                                break;
                            }
                            std::thread::sleep(RECORDING_POLL);
                        }
                        if !log_state.borrow().is_recording() {
                            break;
                        }
                        ticket = appender.submit(event.clone());
                        continue;
                    }
                    // Not recorded, so never acted on; a restart scans again.
                    Err(e) => {
                        log::error!("could not record the arrival of {}: {e}", path.display())
                    }
                }
                break;
            }
        }
    };
    let mut in_flight: InFlight = VecDeque::new();
    loop {
        let event = match rx.try_recv() {
            Ok(e) => e,
            Err(mpsc::TryRecvError::Empty) => {
                // Nothing else waiting: make what we have durable first.
                settle(&mut in_flight, true);
                match rx.recv() {
                    Ok(e) => e,
                    Err(_) => break,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        let (inbox, path) = match &event.payload {
            Payload::InboxArrived(a) => (a.inbox.clone(), PathBuf::from(&a.path)),
            _ => (String::new(), PathBuf::new()),
        };
        in_flight.push_back((appender.submit(event.clone()), event, inbox, path));
        settle(&mut in_flight, false);
    }
    settle(&mut in_flight, true);
}

#[cfg(test)]
mod tests {
    use con_event::BlobRef;
    use con_event::payloads::{CheckStatus, ContractAdded, ContractResult, InboxArrived, Trust};
    use con_store::{GroupCommitWriter, WriterConfig};

    use super::*;
    use crate::contracts::ContractHistory;

    fn arrived(path: &str, inode: u64, ctime: i64) -> NewEvent {
        let event = NewEvent::system(InboxArrived {
            inbox: "concierge".into(),
            path: path.into(),
            owner_uid: 0,
            owner_gid: 0,
            mode: 0o100644,
            nlink: 1,
            dev: 1,
            inode,
            ctime_unix_nanos: ctime,
            symlink: false,
            trust: Trust::Verified,
            trust_reason: "owner uid 0".into(),
            content: BlobRef::of(b""),
        });
        NewEvent {
            attachments: vec![Vec::new()],
            ..event
        }
    }

    fn result(check: &str, status: CheckStatus) -> NewEvent {
        NewEvent::system(ContractResult {
            contract: "C-1".into(),
            check: check.into(),
            scope_agent: None,
            status,
            detail: "x".into(),
            duration_ms: 1,
        })
    }

    /// The histories the daemon starts from are read from their checkpoint
    /// plus the events after it, and that is the same as folding the whole
    /// log: through the real store, so that the states also survive their
    /// encoding.
    #[test]
    fn the_start_histories_from_a_checkpoint_match_a_whole_fold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("events")).unwrap();
        let writer =
            GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
        let append = |e: NewEvent| writer.appender().submit(e).wait().unwrap();
        append(arrived("/i/a.task", 7, 100));
        append(result("disk", CheckStatus::Fail));
        let content = b"id: C-2\n".to_vec();
        append(NewEvent {
            attachments: vec![content.clone()],
            ..NewEvent::system(ContractAdded {
                contract: "C-2".into(),
                path: "/srv/con/contracts/C-2.yaml".into(),
                author_uid: 1234,
                author_agent: Some("sysadmin".into()),
                content: BlobRef::of(&content),
                replaced: None,
            })
        });
        let first = store.project::<ArrivalHistory>().unwrap();
        assert!(first.0.is_latest_arrival(&ArrivalKey {
            path: "/i/a.task".into(),
            dev: 1,
            inode: 7,
            ctime_unix_nanos: 100,
        }));
        store.project::<ContractHistory>().unwrap();

        append(arrived("/i/b.task", 7, 200));
        append(result("disk", CheckStatus::Pass));
        append(result("load", CheckStatus::Timeout));
        let from_checkpoint = store.project::<ArrivalHistory>().unwrap();
        assert_eq!(from_checkpoint, store.rebuild::<ArrivalHistory>().unwrap());
        assert_ne!(from_checkpoint, first, "the events after the checkpoint");
        let contracts = store.project::<ContractHistory>().unwrap();
        assert_eq!(contracts, store.rebuild::<ContractHistory>().unwrap());
        assert_eq!(
            contracts.authors.values().copied().collect::<Vec<_>>(),
            [1234]
        );
        let disk = &contracts.states.checks[&("C-1".into(), "disk".into(), None)];
        assert!(
            disk.failing_since.is_none(),
            "resolved after the checkpoint"
        );
        writer.shutdown().unwrap();
    }
}
