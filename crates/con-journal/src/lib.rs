//! The journald mirror of the event log, and reading it back.
//!
//! [`JournalMirror`] is a [`CommitObserver`] of the group-commit writer: it
//! receives each committed batch and hands the events' seqs to a dedicated
//! thread through a bounded queue. That thread reads each event back from
//! the store, formats it ([`entry_for`]) and sends it to journald. Nothing on the commit path ever waits for journald: a
//! full queue drops the entry, and any loss (queue full, socket missing,
//! send error) flips the mirror to *degraded*, which is itself recorded in
//! the log (`journal.mirror_degraded`, later `journal.mirror_recovered`).
//!
//! Each event entry carries the stored record and its hash (`CON_RECORD`,
//! `CON_HASH`), so the event is rebuilt from the journal exactly. Each
//! attachment an event references is mirrored once, with the first event
//! that references it: inside that event's entry up to [`BLOB_INLINE_MAX`]
//! bytes, otherwise in part entries of its own sent just before it
//! ([`blob_entries`]). The mirror thread reads the contents from the
//! store's blob tree, so the queue holds no contents and back-filled events
//! carry their attachments too.
//!
//! The mirror is at-least-once across restarts: it records how far it got
//! (a store marker) and, when started, first re-sends what the log committed
//! beyond that point (e.g. entries still queued when the daemon was killed).
//! [`Rebuilder`] de-duplicates on `CON_LOG_ID` + `CON_SEQ`, rebuilds events
//! and attachments from `journalctl -o export` ([`rebuild_from_export`]) or
//! `-o json --all` ([`rebuild_from_json`]) output, and [`verify_chain`]
//! checks the hash chain of the result.

mod catalog;
mod crosscheck;
mod entry;
mod query;
mod read;
mod rebuild;

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use con_event::payloads::{JournalMirrorDegraded, JournalMirrorRecovered};
use con_event::{Event, NewEvent};
use con_store::{CommitObserver, CommittedEvent, FollowedBlobs, Store, StoreError};
use systemd_journal_logger::JournalLog;

pub use catalog::catalog;
pub use crosscheck::{CrossCheck, Finding, FindingKind, LogRecord, cross_check};
pub use entry::{
    BLOB_INLINE_MAX, BLOB_MESSAGE_ID, BLOB_PART_BYTES, JournalEntry, MirrorContext, blob_entries,
    entry_for, field,
};
pub use query::{JournalLocation, Matches, QueryError};
pub use read::{ExportReader, JsonReader, ReadEntry, ReadError, read_export, read_json};
pub use rebuild::{
    LogHost, RebuildError, Rebuilder, Rebuilt, UnknownEvent, rebuild_from_export,
    rebuild_from_json, verify_chain, verify_chain_from,
};

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
    /// Highest seq lost so far: only delivering something newer than it
    /// proves the mirror keeps up again (entries queued before the loss
    /// would otherwise make it flap between degraded and recovered).
    last_lost: u64,
    incidents: Vec<NewEvent>,
    /// The sender thread has sent everything it was given and ended.
    finished: bool,
}

impl Shared {
    fn lost(&mut self, seq: u64, reason: impl FnOnce() -> String) {
        self.dropped += 1;
        self.last_lost = self.last_lost.max(seq);
        if self.degraded.is_none() {
            let reason = reason();
            self.incidents.push(NewEvent::system(JournalMirrorDegraded {
                reason: reason.clone(),
                first_unmirrored_seq: seq,
            }));
            self.degraded = Some((seq, reason));
        }
    }

    fn delivered(&mut self, seq: u64) {
        if seq > self.last_lost && self.degraded.take().is_some() {
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
    /// Seqs of committed events, not the events: a full queue then costs
    /// 8 bytes an entry instead of a decoded event and its allocations
    /// (a queue of 65,536 events was about 28 MiB allocated up front and
    /// tens of MiB more when journald fell behind).
    tx: SyncSender<u64>,
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

impl MirrorStatus {
    /// Waits up to `timeout` for the sender thread to end, which it does
    /// once the mirror (the writer's observer) is dropped and everything
    /// queued is sent: a daemon stopping cleanly gets its last entries (its
    /// shutdown checkpoint) into the journal, and a stuck journald cannot
    /// hold it. Whether it ended.
    pub fn wait_finished(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if lock(&self.0).finished {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl JournalMirror {
    /// Starts the sender thread for `store`'s log. Before anything new, it
    /// re-sends the durable events past the mirror's marker. The thread is
    /// detached: if journald is stuck it may never return, and nothing must
    /// wait for it.
    pub fn spawn(config: MirrorConfig, store: Store) -> std::io::Result<(Self, MirrorStatus)> {
        let (tx, rx) = mpsc::sync_channel::<u64>(config.queue_capacity.max(1));
        let shared = SharedState::default();
        let thread_shared = shared.clone();
        // Fixed now: everything after this reaches the thread through `tx`.
        let backlog_end = store.head().seq;
        std::thread::Builder::new()
            .name("con-journal-mirror".into())
            .spawn(move || {
                let mut sender = Sender::new(config.context, thread_shared.clone(), store);
                sender.backfill(backlog_end);
                sender.run(&rx);
                lock(&thread_shared).finished = true;
            })?;
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
        for CommittedEvent { event, .. } in batch {
            // Only the seq is queued: the event is durable, and the mirror
            // thread reads it (and its contents) back from the store, so the
            // queue's memory is 8 bytes an entry whatever the events hold.
            let seq = event.seq();
            match self.tx.try_send(seq) {
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

/// Store marker holding the last seq the mirror attempted; also the name of
/// the store's set of attachments already mirrored.
pub const MARKER: &str = "journal-mirror";

/// How often the marker is written while entries flow.
const MARKER_INTERVAL: Duration = Duration::from_secs(1);

struct Sender {
    context: MirrorContext,
    shared: SharedState,
    store: Store,
    /// Attachments already in the journal: each is mirrored once, not once
    /// per event that references it.
    mirrored_blobs: Result<FollowedBlobs, StoreError>,
    journal: Option<JournalLog>,
    last_connect: Option<Instant>,
    connect_error: String,
    attempted: u64,
    marker: u64,
    marker_written: Instant,
}

impl Sender {
    fn new(context: MirrorContext, shared: SharedState, store: Store) -> Self {
        Self {
            context,
            shared,
            mirrored_blobs: store.followed_blobs(MARKER),
            store,
            journal: None,
            last_connect: None,
            connect_error: String::new(),
            attempted: 0,
            marker: 0,
            marker_written: Instant::now(),
        }
    }

    /// Re-sends durable events between the marker and `end` (committed before
    /// this mirror started, possibly never mirrored), with the attachments
    /// they reference that are not in the journal yet.
    fn backfill(&mut self, end: u64) {
        let from = match self.store.marker(MARKER) {
            Ok(m) => m + 1,
            Err(e) => {
                lock(&self.shared).lost(1, || format!("cannot read the mirror marker: {e}"));
                return;
            }
        };
        if from > end {
            return;
        }
        let store = self.store.clone();
        for event in store.events_from(from) {
            match event {
                Ok(event) if event.seq() <= end => self.send(&event),
                Ok(_) => break,
                Err(e) => {
                    lock(&self.shared)
                        .lost(from, || format!("cannot read the log to back-fill: {e}"));
                    break;
                }
            }
        }
        self.write_marker();
    }

    fn run(mut self, rx: &mpsc::Receiver<u64>) {
        loop {
            match rx.recv_timeout(MARKER_INTERVAL) {
                Ok(seq) => {
                    match self.store.get(seq) {
                        Ok(Some(event)) => self.send(&event),
                        // Committed, so durable: only a failing store gets here.
                        Ok(None) => {
                            lock(&self.shared).lost(seq, || format!("seq {seq} is not in the log"))
                        }
                        Err(e) => lock(&self.shared)
                            .lost(seq, || format!("cannot read seq {seq} from the log: {e}")),
                    }
                    if self.marker_written.elapsed() >= MARKER_INTERVAL {
                        self.write_marker();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.write_marker(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.write_marker();
    }

    fn send(&mut self, event: &Event) {
        let seq = event.seq();
        // Formatting is skipped while journald is unreachable.
        self.connect();
        let result = match &self.journal {
            Some(journal) => self.send_to(journal, event),
            None => Err(format!("journald is not reachable: {}", self.connect_error)),
        };
        self.attempted = seq;
        let mut shared = lock(&self.shared);
        match result {
            Ok(()) => shared.delivered(seq),
            Err(reason) => shared.lost(seq, || reason),
        }
    }

    /// Sends `event` with the attachments it references that the journal
    /// lacks: small ones inside its entry, large ones in part entries sent
    /// first, so a reader that has an event has its contents.
    fn send_to(&self, journal: &JournalLog, event: &Event) -> Result<(), String> {
        let seq = event.seq();
        let mirrored = self
            .mirrored_blobs
            .as_ref()
            .map_err(|e| format!("cannot open the set of mirrored attachments: {e}"))?;
        let mut refs = event.payload.blob_refs();
        refs.sort_unstable();
        refs.dedup();
        let mut inline = Vec::new();
        for blob in refs {
            let digest = blob.digest;
            if mirrored.contains(&digest).map_err(|e| e.to_string())? {
                continue;
            }
            let content = match self.store.blob(&digest) {
                Ok(Some(content)) => content,
                // Referenced but never attached: the log has no content
                // either, so the journal is as complete as the log.
                Ok(None) => continue,
                Err(e) => return Err(format!("cannot read attachment {digest} of seq {seq}: {e}")),
            };
            if content.len() <= BLOB_INLINE_MAX {
                inline.push((digest, content));
                continue;
            }
            for entry in blob_entries(&digest, &content, event, &self.context) {
                entry
                    .send(journal)
                    .map_err(|e| format!("journald refused an attachment entry: {e}"))?;
            }
            // Recorded only once journald has it: a record made before the
            // send could outlive a crash or a stuck journald and keep the
            // content out of the journal for good. Advisory like the
            // marker: if it is not recorded, the content is only sent again.
            let _ = mirrored.insert(&digest, seq);
        }
        entry_for(event, &inline, &self.context)
            .map_err(|e| format!("cannot encode seq {seq}: {e}"))?
            .send(journal)
            .map_err(|e| format!("journald refused an entry: {e}"))?;
        for (digest, _) in &inline {
            let _ = mirrored.insert(digest, seq);
        }
        Ok(())
    }

    fn write_marker(&mut self) {
        // Advisory: a failure only means more re-sending after a restart.
        if self.attempted > self.marker && self.store.set_marker(MARKER, self.attempted).is_ok() {
            self.marker = self.attempted;
        }
        self.marker_written = Instant::now();
    }

    /// (Re)connects to journald if it is not connected and a retry is due.
    fn connect(&mut self) {
        if self.journal.is_some() {
            return;
        }
        let due = self
            .last_connect
            .is_none_or(|t| t.elapsed() >= RECONNECT_INTERVAL);
        if due {
            self.last_connect = Some(Instant::now());
            match JournalLog::empty() {
                Ok(j) => self.journal = Some(j.with_syslog_identifier("con".into())),
                Err(e) => self.connect_error = e.to_string(),
            }
        }
    }
}
