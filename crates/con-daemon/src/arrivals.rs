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

use con_event::{NewEvent, Payload};
use con_inbox::{ArrivalKey, InboxSpec, InboxWatcher, WatcherConfig, arrival_key, key_of};
use con_store::{Appender, Store, Ticket};
use tokio::sync::mpsc::Sender;

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

/// Keys of the tasks present now whose arrival is already in the log.
fn recorded_and_present(store: &Store, inboxes: &[InboxSpec]) -> HashSet<ArrivalKey> {
    let mut present = HashSet::new();
    for inbox in inboxes {
        let Ok(entries) = std::fs::read_dir(&inbox.dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = inbox.dir.join(entry.file_name());
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                present.insert(key_of(&path, &meta));
            }
        }
    }
    let mut recorded = HashSet::new();
    for inbox in inboxes {
        let Ok(events) = store.agent_events(&inbox.name, 1) else {
            continue;
        };
        for event in events.flatten() {
            if let Payload::InboxArrived(a) = &event.payload {
                let key = arrival_key(a);
                if present.contains(&key) {
                    recorded.insert(key);
                }
            }
        }
    }
    recorded
}

/// The running watcher and the threads that record its events and keep
/// every configured inbox watched.
pub(crate) struct Arrivals {
    watcher: Arc<InboxWatcher>,
    recorder: JoinHandle<()>,
    rewatch: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Arrivals {
    /// Starts watching. Inboxes that do not exist yet, or that are replaced
    /// later, are (re)watched as soon as they appear; until then nothing in
    /// them is recorded, so nothing in them is acted on.
    pub(crate) fn start(
        store: &Store,
        appender: Appender,
        inboxes: Vec<InboxSpec>,
        trusted_group: &str,
        wake: Sender<String>,
        recorded: Recorded,
    ) -> Result<Self, con_inbox::WatchError> {
        let already = recorded_and_present(store, &inboxes);
        for key in &already {
            recorded.insert(PathBuf::from(&key.path));
        }
        let (tx, rx) = mpsc::sync_channel::<NewEvent>(1024);
        let watcher = Arc::new(InboxWatcher::start_with_errors(
            Vec::new(),
            WatcherConfig {
                trusted_group: trusted_group.to_owned(),
                ..WatcherConfig::default()
            },
            already,
            tx,
            |e| eprintln!("con daemon: inbox watcher: {e}"),
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let rewatch = {
            let watcher = watcher.clone();
            let stop = stop.clone();
            spawn("con-inbox-rewatch", move || {
                rewatch(&watcher, &inboxes, &stop)
            })?
        };
        let recorder = spawn("con-arrivals", move || {
            record(&rx, &appender, &wake, &recorded)
        })?;
        Ok(Self {
            watcher,
            recorder,
            rewatch,
            stop,
        })
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
fn rewatch(watcher: &InboxWatcher, inboxes: &[InboxSpec], stop: &AtomicBool) {
    let mut watched: HashMap<String, (u64, u64)> = HashMap::new();
    let mut reported: HashSet<String> = HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        for inbox in inboxes {
            let identity = std::fs::metadata(&inbox.dir)
                .ok()
                .filter(|m| m.is_dir())
                .map(|m| (m.dev(), m.ino()));
            match identity {
                None => {
                    if reported.insert(inbox.name.clone()) {
                        eprintln!(
                            "con daemon: inbox {} ({}) does not exist; watching for it",
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
                        Err(e) => eprintln!("con daemon: inbox watcher: {e}"),
                    }
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(REWATCH_INTERVAL);
    }
}

/// Inodes seen arriving, and in which inbox: a file that arrives in one
/// agent's inbox after arriving in another's was moved there by `rename()`,
/// which keeps its owner — so an agent that may task others could forward
/// an operator's (verified) task as if the operator had sent it there.
#[derive(Default)]
struct Provenance {
    seen: HashMap<(u64, u64), String>,
}

/// Inodes remembered at most (about 60 MB); beyond that the oldest
/// knowledge is dropped wholesale and forwarding is caught again from the
/// next arrival on.
const PROVENANCE_CAPACITY: usize = 1_000_000;

impl Provenance {
    /// Downgrades a verified arrival whose inode last arrived in another
    /// agent's inbox. Moves out of the outer inbox are the daemon's own
    /// routing (agents cannot touch the outer inbox) and keep their trust.
    fn check(&mut self, arrival: &mut con_event::payloads::InboxArrived) {
        let key = (arrival.dev, arrival.inode);
        if let Some(before) = self.seen.get(&key)
            && *before != arrival.inbox
            && before != con_inbox::OUTER_INBOX
            && arrival.trust == con_event::payloads::Trust::Verified
        {
            arrival.trust = con_event::payloads::Trust::Unverified;
            arrival.trust_reason = format!(
                "moved here from inbox {before} by rename (its owner, uid {}, was kept, not proven)",
                arrival.owner_uid
            );
        }
        if self.seen.len() >= PROVENANCE_CAPACITY {
            self.seen.clear();
        }
        self.seen.insert(key, arrival.inbox.clone());
    }
}

/// Submits arrivals in order, many in flight; publishes each as recorded and
/// wakes the supervisor once it is durable.
fn record(
    rx: &mpsc::Receiver<NewEvent>,
    appender: &Appender,
    wake: &Sender<String>,
    recorded: &Recorded,
) {
    let mut in_flight: VecDeque<(Ticket, String, PathBuf)> = VecDeque::new();
    let mut provenance = Provenance::default();
    let settle = |in_flight: &mut VecDeque<(Ticket, String, PathBuf)>, all: bool| {
        while in_flight.len() > if all { 0 } else { IN_FLIGHT } {
            if let Some((ticket, inbox, path)) = in_flight.pop_front() {
                match ticket.wait() {
                    Ok(_) => {
                        recorded.insert(path);
                        let _ = wake.try_send(inbox);
                    }
                    // Not recorded, so never acted on; a restart scans again.
                    Err(e) => eprintln!(
                        "con daemon: could not record the arrival of {}: {e}",
                        path.display()
                    ),
                }
            }
        }
    };
    loop {
        let mut event = match rx.try_recv() {
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
        let (inbox, path) = match &mut event.payload {
            Payload::InboxArrived(a) => {
                provenance.check(a);
                (a.inbox.clone(), PathBuf::from(&a.path))
            }
            _ => (String::new(), PathBuf::new()),
        };
        in_flight.push_back((appender.submit(event), inbox, path));
        settle(&mut in_flight, false);
    }
    settle(&mut in_flight, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use con_event::BlobRef;
    use con_event::payloads::{InboxArrived, Trust};

    fn arrival(inbox: &str, inode: u64, trust: Trust) -> InboxArrived {
        InboxArrived {
            inbox: inbox.into(),
            path: format!("/srv/con/agents/{inbox}/inbox/t.task"),
            owner_uid: 0,
            owner_gid: 0,
            mode: 0o100644,
            nlink: 1,
            dev: 1,
            inode,
            ctime_unix_nanos: 0,
            symlink: false,
            trust,
            trust_reason: "owner uid 0".into(),
            content: BlobRef::of(b"x"),
        }
    }

    #[test]
    fn a_verified_task_forwarded_between_agent_inboxes_is_unverified() {
        let mut p = Provenance::default();
        let mut first = arrival("concierge", 7, Trust::Verified);
        p.check(&mut first);
        assert_eq!(first.trust, Trust::Verified);
        let mut forwarded = arrival("sysadmin", 7, Trust::Verified);
        p.check(&mut forwarded);
        assert_eq!(forwarded.trust, Trust::Unverified);
        assert!(
            forwarded
                .trust_reason
                .contains("moved here from inbox concierge")
        );
        // Routing out of the outer inbox is the daemon's own and keeps trust.
        let mut outer = arrival("outer", 8, Trust::Verified);
        p.check(&mut outer);
        let mut routed = arrival("concierge", 8, Trust::Verified);
        p.check(&mut routed);
        assert_eq!(routed.trust, Trust::Verified);
        // A new file (another inode) is judged on its own.
        let mut fresh = arrival("sysadmin", 9, Trust::Verified);
        p.check(&mut fresh);
        assert_eq!(fresh.trust, Trust::Verified);
    }
}
