//! The journald mirror of the event log.
//!
//! [`JournalMirror`] is a [`CommitObserver`] of the group-commit writer: it
//! receives each committed batch and hands the events to a dedicated thread
//! through a bounded queue. That thread formats ([`entry_for`]) and sends
//! them to journald. Nothing on the commit path ever waits for journald: a
//! full queue drops the entry, and any loss (queue full, socket missing,
//! send error) flips the mirror to *degraded*, which is itself recorded in
//! the log (`journal.mirror_degraded`, later `journal.mirror_recovered`).

mod catalog;
mod entry;

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use con_event::NewEvent;
use con_event::payloads::{JournalMirrorDegraded, JournalMirrorRecovered};
use con_store::{CommitObserver, CommittedEvent};
use systemd_journal_logger::JournalLog;

pub use catalog::catalog;
pub use entry::{JournalEntry, MirrorContext, entry_for};

/// Mirror tuning.
#[derive(Clone, Debug)]
pub struct MirrorConfig {
    /// Events that may wait for journald before new ones are dropped.
    pub queue_capacity: usize,
    /// Fields added to every entry.
    pub context: MirrorContext,
}

/// Whether journald currently receives every event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorHealth {
    /// Every event so far reached journald (or is queued for it).
    Healthy,
    /// Entries are being lost.
    Degraded {
        /// First seq that may be missing from the journal.
        first_unmirrored_seq: u64,
        /// Why.
        reason: String,
        /// Entries lost so far.
        dropped: u64,
    },
}

#[derive(Default)]
struct Shared {
    degraded: Option<(u64, String)>,
    dropped: u64,
    incidents: Vec<NewEvent>,
}

impl Shared {
    fn lost(&mut self, seq: u64, reason: impl FnOnce() -> String) {
        self.dropped += 1;
        if self.degraded.is_none() {
            let reason = reason();
            self.incidents.push(NewEvent::system(JournalMirrorDegraded {
                reason: reason.clone(),
                first_unmirrored_seq: seq,
            }));
            self.degraded = Some((seq, reason));
        }
    }

    fn delivered(&mut self) {
        if self.degraded.take().is_some() {
            self.incidents
                .push(NewEvent::system(JournalMirrorRecovered {
                    dropped: self.dropped,
                }));
            self.dropped = 0;
        }
    }
}

type SharedState = Arc<Mutex<Shared>>;

fn lock(shared: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    // The state is a few counters: a panic elsewhere cannot leave it torn.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer-side half of the mirror. Install it as the writer's observer.
pub struct JournalMirror {
    tx: SyncSender<CommittedEvent>,
    shared: SharedState,
}

/// A read-only view of the mirror's health, for status and contracts.
#[derive(Clone)]
pub struct MirrorStatus(SharedState);

impl MirrorStatus {
    /// Current health.
    pub fn health(&self) -> MirrorHealth {
        let s = lock(&self.0);
        match &s.degraded {
            None => MirrorHealth::Healthy,
            Some((seq, reason)) => MirrorHealth::Degraded {
                first_unmirrored_seq: *seq,
                reason: reason.clone(),
                dropped: s.dropped,
            },
        }
    }
}

impl JournalMirror {
    /// Starts the sender thread. The thread is detached: if journald is stuck
    /// it may never return, and nothing must wait for it.
    pub fn spawn(config: MirrorConfig) -> std::io::Result<(Self, MirrorStatus)> {
        let (tx, rx) = mpsc::sync_channel::<CommittedEvent>(config.queue_capacity.max(1));
        let shared = SharedState::default();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("con-journal-mirror".into())
            .spawn(move || Sender::new(config.context, thread_shared).run(&rx))?;
        Ok((
            Self {
                tx,
                shared: shared.clone(),
            },
            MirrorStatus(shared),
        ))
    }
}

impl CommitObserver for JournalMirror {
    fn committed(&mut self, batch: Vec<CommittedEvent>) {
        for event in batch {
            let seq = event.event.seq();
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => lock(&self.shared).lost(seq, || {
                    "mirror queue full: journald is not keeping up or is stuck".into()
                }),
                Err(TrySendError::Disconnected(_)) => {
                    lock(&self.shared).lost(seq, || "mirror thread is gone".into())
                }
            }
        }
    }

    fn pending_events(&mut self) -> Vec<NewEvent> {
        std::mem::take(&mut lock(&self.shared).incidents)
    }
}

/// Retry connecting to journald at most this often while it is absent.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

struct Sender {
    context: MirrorContext,
    shared: SharedState,
    journal: Option<JournalLog>,
    last_connect: Option<Instant>,
    connect_error: String,
}

impl Sender {
    fn new(context: MirrorContext, shared: SharedState) -> Self {
        Self {
            context,
            shared,
            journal: None,
            last_connect: None,
            connect_error: String::new(),
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<CommittedEvent>) {
        while let Ok(committed) = rx.recv() {
            let seq = committed.event.seq();
            let entry = entry_for(&committed.event, &committed.attachments, &self.context);
            let result = match self.connected() {
                Some(journal) => entry
                    .send(journal)
                    .map_err(|e| format!("journald refused an entry: {e}")),
                None => Err(format!("journald is not reachable: {}", self.connect_error)),
            };
            let mut shared = lock(&self.shared);
            match result {
                Ok(()) => shared.delivered(),
                Err(reason) => shared.lost(seq, || reason),
            }
        }
    }

    fn connected(&mut self) -> Option<&JournalLog> {
        let due = self
            .last_connect
            .is_none_or(|t| t.elapsed() >= RECONNECT_INTERVAL);
        if self.journal.is_none() && due {
            self.last_connect = Some(Instant::now());
            match JournalLog::empty() {
                Ok(j) => self.journal = Some(j.with_syslog_identifier("con".into())),
                Err(e) => self.connect_error = e.to_string(),
            }
        }
        self.journal.as_ref()
    }
}
