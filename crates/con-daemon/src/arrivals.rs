//! Inbox arrivals: the watcher's events, committed in order, then the
//! supervisor is woken — an agent is started only for a task whose arrival
//! is already durable in the log.

use std::collections::{HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::thread::JoinHandle;

use con_event::{NewEvent, Payload};
use con_inbox::{ArrivalKey, InboxSpec, InboxWatcher, WatcherConfig, arrival_key};
use con_store::{Appender, Store, Ticket};
use tokio::sync::mpsc::Sender;

/// Arrivals waiting for their acknowledgement before the supervisor is told.
const IN_FLIGHT: usize = 512;

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
                present.insert(ArrivalKey {
                    path: path.to_string_lossy().into_owned(),
                    dev: meta.dev(),
                    inode: meta.ino(),
                    ctime_unix_nanos: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                });
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

/// The running watcher and the thread that records its events.
pub(crate) struct Arrivals {
    watcher: InboxWatcher,
    recorder: JoinHandle<()>,
}

impl Arrivals {
    /// Starts watching the inboxes that exist (missing ones are reported and
    /// skipped: provisioning creates them).
    pub(crate) fn start(
        store: &Store,
        appender: Appender,
        inboxes: Vec<InboxSpec>,
        trusted_group: &str,
        wake: Sender<String>,
    ) -> Result<Self, con_inbox::WatchError> {
        let (present, missing): (Vec<_>, Vec<_>) =
            inboxes.into_iter().partition(|i| i.dir.is_dir());
        for inbox in missing {
            eprintln!(
                "con daemon: inbox {} ({}) does not exist; not watched",
                inbox.dir.display(),
                inbox.name
            );
        }
        let recorded = recorded_and_present(store, &present);
        let (tx, rx) = mpsc::sync_channel::<NewEvent>(1024);
        let watcher = InboxWatcher::start_with_errors(
            present,
            WatcherConfig {
                trusted_group: trusted_group.to_owned(),
                ..WatcherConfig::default()
            },
            recorded,
            tx,
            |e| eprintln!("con daemon: inbox watcher: {e}"),
        )?;
        let recorder = std::thread::Builder::new()
            .name("con-arrivals".into())
            .spawn(move || record(&rx, &appender, &wake))
            .map_err(|source| con_inbox::WatchError::Io {
                op: "spawn the arrivals thread",
                path: std::path::PathBuf::new(),
                source,
            })?;
        Ok(Self { watcher, recorder })
    }

    /// Stops watching and waits until every arrival seen so far is committed.
    pub(crate) fn stop(self) {
        drop(self.watcher);
        let _ = self.recorder.join();
    }
}

/// Submits arrivals in order, many in flight; wakes the supervisor for each
/// once it is durable.
fn record(rx: &mpsc::Receiver<NewEvent>, appender: &Appender, wake: &Sender<String>) {
    let mut in_flight: VecDeque<(Ticket, String)> = VecDeque::new();
    let settle = |in_flight: &mut VecDeque<(Ticket, String)>, all: bool| {
        while in_flight.len() > if all { 0 } else { IN_FLIGHT } {
            if let Some((ticket, inbox)) = in_flight.pop_front()
                && ticket.wait().is_ok()
            {
                let _ = wake.try_send(inbox);
            }
        }
    };
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
        let inbox = match &event.payload {
            Payload::InboxArrived(a) => a.inbox.clone(),
            _ => String::new(),
        };
        in_flight.push_back((appender.submit(event), inbox));
        settle(&mut in_flight, false);
    }
    settle(&mut in_flight, true);
}
