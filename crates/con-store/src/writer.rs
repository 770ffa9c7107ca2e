//! The group-commit writer: the only code that appends to the log.
//!
//! One thread owns the write path. It takes every request that is waiting
//! (up to `max_batch`), assigns gap-free seqs, chains and inserts them, flushes
//! sled once, and only then acknowledges the whole batch and publishes the new
//! durable head to readers. Many concurrent appenders therefore share one
//! fsync.
//!
//! When the log cannot record (its file system is nearly full, or a write
//! failed), the writer answers every append with
//! [`AppendError::CannotRecord`] — nothing of those events is stored — and
//! retries by itself with back-off. Before each batch it checks the free
//! space and refuses once less than [`WriterConfig::min_free_bytes`] would
//! be left, so in the common case sled never meets a full disk. If a sled
//! write or flush fails anyway, that batch is not acknowledged, the head
//! goes back to the last durable record, and sled is not asked to flush
//! again (measured with sled 0.34.7: after a failed write sled refuses every
//! later write and most reads of that opening; after a failed write of a
//! value file its flush never returns). Once space is back the writer
//! reopens the database ([`Store::reopen`]), removes the records of the
//! failed batch that reached the disk (never acknowledged, never visible),
//! so the log again ends at the last acknowledged event and an append that
//! was refused is truly absent, records `log.degraded` and `log.recovered`,
//! and records again. Its state is published as a [`LogState`].
//!
//! Appenders that wait for each acknowledgement before their next append
//! (every socket client does) come back a round trip after it. Taking only
//! what is waiting at that moment splits them into groups that alternate,
//! each flushing on its own: with 8 socket clients, batches of about 4.
//! So before flushing, the writer briefly waits for the appenders it
//! expects: those it just acknowledged plus those that were already waiting
//! then (see [`WriterState::linger`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use con_event::payloads::{LogDegraded, LogRecovered};
use con_event::{Digest, Envelope, Event, EventId, NewEvent, chain_hash, encode_stored};
use tokio::sync::{oneshot, watch};

use crate::{Head, Store, StoreError, seq_key};

/// Where an appended event ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
    /// Its chain hash.
    pub hash: Digest,
}

/// Why an append was not acknowledged. Cloneable: one failed flush fails a
/// whole batch.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    /// The writer has shut down (or was never reachable).
    #[error("the event log writer has stopped")]
    Stopped,
    /// This event cannot be stored (e.g. too large: contents belong in
    /// attachments). Nothing was written; other events are unaffected.
    #[error("event rejected: {0}")]
    Rejected(String),
    /// The log cannot record now: its file system is (nearly) full, or a
    /// write failed. Nothing of this event is stored (a write that reached
    /// the disk is removed before the log records again); the writer
    /// retries by itself. One line: `the event log at … cannot record: no
    /// space left on device (0.4 MiB free)`.
    #[error("{0}")]
    CannotRecord(String),
    /// The log is in a state the writer cannot continue from (a seq it was
    /// about to store exists, sled reports corruption, or the durable head
    /// is gone after a reopen). Whether this batch reached the disk is
    /// unknown; the writer refuses every further append, and a restart
    /// recovers the log's true head from disk.
    #[error("the event log writer failed (outcome of this append unknown): {0}")]
    Failed(String),
}

/// Whether the log records, as the writer last found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogState {
    /// Appends are recorded.
    Recording,
    /// Appends are refused with [`AppendError::CannotRecord`] until the
    /// writer finds it can record again.
    NotRecording(NotRecording),
    /// The writer has failed for good ([`AppendError::Failed`]) or stopped:
    /// only a restart records again.
    Failed(String),
}

/// Why and since when the log does not record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotRecording {
    /// When it stopped recording, nanoseconds since the Unix epoch.
    pub since_unix_nanos: i64,
    /// The refusal appenders get (one line).
    pub reason: String,
}

impl LogState {
    /// Whether appends are recorded now.
    pub fn is_recording(&self) -> bool {
        matches!(self, LogState::Recording)
    }
}

/// An event that has been durably committed, handed to the observer.
#[derive(Clone, Debug)]
pub struct CommittedEvent {
    /// The event as stored.
    pub event: Event,
    /// Blob contents it references, as submitted.
    pub attachments: Vec<Vec<u8>>,
}

/// Told about every committed batch, on the writer thread, after the batch is
/// durable and acknowledged. Must not block (e.g. hand off to a bounded queue).
pub trait CommitObserver: Send {
    /// Called once per batch, in seq order.
    fn committed(&mut self, batch: Vec<CommittedEvent>);

    /// Events the observer wants recorded about itself (e.g. a degraded
    /// journal mirror). Polled after every batch and when the writer is idle;
    /// they are committed like any other event, with nobody waiting.
    fn pending_events(&mut self) -> Vec<NewEvent> {
        Vec::new()
    }
}

/// Writer tuning.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    /// Most events committed with one flush.
    pub max_batch: usize,
    /// How often an idle writer polls its observer for events of its own
    /// (and checks the free space).
    pub idle_poll: Duration,
    /// Free bytes the writer leaves on the log's file system: an event
    /// whose bytes (counted twice: sled writes about that much) would leave
    /// less is refused, and with less than a MiB above it the log stops
    /// recording until there are two. 0 turns the check off (then only
    /// sled's own write errors stop it; tests of that path).
    pub min_free_bytes: u64,
    /// First wait before trying to record again; doubled up to
    /// `retry_max`.
    pub retry_min: Duration,
    /// Longest wait between tries.
    pub retry_max: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            idle_poll: Duration::from_millis(250),
            min_free_bytes: 8 * MIB,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// The cause of a refusal for want of space, whether sled met the full
/// disk or con refused before it did.
const NO_SPACE: &str = "no space left on device";

/// With less room than this above `min_free_bytes`, the log stops
/// recording; it records again from [`RESUME_ROOM`]. The gap keeps a log
/// near the threshold from flapping (each transition is two events).
const STOP_ROOM: u64 = MIB;
const RESUME_ROOM: u64 = 2 * MIB;

/// sled stores a value larger than about a quarter of its 512 KiB segments
/// in a file of its own. If writing that file fails, sled leaves an IO
/// buffer claimed for good: its next flush, and dropping the database,
/// never return (measured with 0.34.7 on a full tmpfs), so the database
/// cannot be reopened in this process. Such values are written only with
/// room for them, whatever `min_free_bytes` says.
const VALUE_FILE_BYTES: usize = 64 * 1024;

/// Free bytes on the file system of `path` (for unprivileged users, like
/// `df`; root may use a little more), or `None` if it cannot be read.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_available().saturating_mul(s.fragment_size()))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Counters of the writer since it started.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Events committed.
    pub events: AtomicU64,
    /// Flushes (one per committed batch).
    pub flushes: AtomicU64,
}

type Reply = Option<oneshot::Sender<Result<Appended, AppendError>>>;

enum Request {
    /// An event, where to answer, and when it was submitted.
    Append(Box<NewEvent>, Reply, Instant),
    Shutdown,
}

/// The pending acknowledgement of one append.
pub struct Ticket(oneshot::Receiver<Result<Appended, AppendError>>);

impl Ticket {
    /// Blocks until the event is durable (or failed). Panics if called from
    /// inside an async runtime: use [`Ticket::wait_async`] there.
    pub fn wait(self) -> Result<Appended, AppendError> {
        self.0.blocking_recv().unwrap_or(Err(AppendError::Stopped))
    }

    /// Waits asynchronously until the event is durable (or failed).
    pub async fn wait_async(self) -> Result<Appended, AppendError> {
        self.0.await.unwrap_or(Err(AppendError::Stopped))
    }
}

/// A handle for submitting events. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct Appender(mpsc::Sender<Request>);

impl Appender {
    /// Queues `event`; the ticket resolves once it is durable.
    pub fn submit(&self, event: NewEvent) -> Ticket {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Request::Append(_, Some(tx), _))) =
            self.0
                .send(Request::Append(Box::new(event), Some(tx), Instant::now()))
        {
            let _ = tx.send(Err(AppendError::Stopped));
        }
        Ticket(rx)
    }

    /// Submits and waits (blocking; see [`Ticket::wait`]).
    pub fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        self.submit(event).wait()
    }
}

/// Owner of the writer thread.
pub struct GroupCommitWriter {
    tx: mpsc::Sender<Request>,
    thread: Option<JoinHandle<Result<(), AppendError>>>,
    stats: Arc<WriterStats>,
    state: watch::Receiver<LogState>,
}

impl GroupCommitWriter {
    /// Starts the writer thread on `store`. Fails if another writer runs on
    /// the same store (two writers would hand out the same seqs) or if the
    /// last record of the log cannot be read
    /// ([`StoreError::UnreadableHead`]).
    pub fn spawn(
        store: Store,
        config: WriterConfig,
        observer: Option<Box<dyn CommitObserver>>,
    ) -> Result<Self, StoreError> {
        if store.writer_active.swap(true, Ordering::SeqCst) {
            return Err(StoreError::WriterActive);
        }
        // Read from the tree, not the durable head: a store opened for
        // inspection, or one whose previous writer failed after inserting,
        // may hold records past it, and their seqs are taken.
        let head = match store.last_record() {
            Ok(head) => head,
            Err(e) => {
                store.writer_active.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(WriterStats::default());
        let mut instance = [0u8; 8];
        instance.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
        let (state_tx, state_rx) = watch::channel(LogState::Recording);
        let mut state = WriterState {
            store: store.clone(),
            head,
            instance,
            config,
            observer,
            failed: None,
            outage: None,
            state: state_tx,
            stats: stats.clone(),
            last: None,
        };
        let thread = std::thread::Builder::new()
            .name("con-log-writer".into())
            .spawn(move || {
                let result = state.run(&rx);
                state.store.writer_active.store(false, Ordering::SeqCst);
                result
            })
            .map_err(|e| {
                store.writer_active.store(false, Ordering::SeqCst);
                StoreError::Thread(e)
            })?;
        Ok(Self {
            tx,
            thread: Some(thread),
            stats,
            state: state_rx,
        })
    }

    /// Whether the log records, kept current by the writer (transitions
    /// only).
    pub fn state(&self) -> watch::Receiver<LogState> {
        self.state.clone()
    }

    /// A new submission handle.
    pub fn appender(&self) -> Appender {
        Appender(self.tx.clone())
    }

    /// Counters since start.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Commits everything already submitted, then stops the thread. Later
    /// submissions fail with [`AppendError::Stopped`].
    pub fn shutdown(mut self) -> Result<(), AppendError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), AppendError> {
        let _ = self.tx.send(Request::Shutdown);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(AppendError::Failed("writer thread panicked".into()))),
            None => Ok(()),
        }
    }
}

impl Drop for GroupCommitWriter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

struct WriterState {
    store: Store,
    /// The last record written: the durable head, or past it while a batch
    /// is being written.
    head: Head,
    /// Random per writer start; the first half of every event id.
    instance: [u8; 8],
    config: WriterConfig,
    observer: Option<Box<dyn CommitObserver>>,
    /// Set for good: only a restart continues.
    failed: Option<AppendError>,
    /// Set while the log cannot record.
    outage: Option<Outage>,
    state: watch::Sender<LogState>,
    stats: Arc<WriterStats>,
    /// The last flushed batch, for [`WriterState::linger`].
    last: Option<LastFlush>,
}

/// A period in which the log cannot record.
struct Outage {
    since_unix_nanos: i64,
    since: Instant,
    /// What appenders are told, without the free space (added per refusal).
    cause: String,
    /// The refusal when it began, as recorded in `log.degraded`.
    reason: String,
    free_at_start: u64,
    /// A sled write or flush failed: that opening of the database is done
    /// for, and the batch's records may be on disk.
    reopen: bool,
    /// The database was reopened during this outage.
    reopened: bool,
    /// Appends refused so far.
    refused: u64,
    next_try: Instant,
    backoff: Duration,
}

impl Outage {
    /// Schedules the next try after a failed one: the wait doubles, up to
    /// `max`.
    fn back_off(&mut self, max: Duration) {
        self.backoff = (self.backoff * 2).min(max);
        self.next_try = Instant::now() + self.backoff;
    }
}

/// Why a batch stopped before its end.
enum Stop {
    /// Writing this event would leave less than `min_free_bytes` free.
    NoRoom { free: u64 },
    /// sled failed.
    Store(StoreError),
}

/// What the writer remembers of its last flush.
#[derive(Clone, Copy, Debug)]
struct LastFlush {
    /// Events acknowledged by it.
    events: usize,
    /// When the flush began and ended (the acknowledgements went out right
    /// after the end).
    began: Instant,
    ended: Instant,
}

/// The longest the writer waits for expected appenders before a flush.
const MAX_LINGER: Duration = Duration::from_millis(1);

/// How many events the next batch should hold before its flush, and until
/// when to wait for them (see [`WriterState::linger`]); `None` when it
/// holds them already. `submitted` are the submission times of the events
/// waiting now.
fn linger_plan(
    last: &LastFlush,
    submitted: &[Instant],
    max_batch: usize,
) -> Option<(usize, Instant)> {
    if submitted.is_empty() {
        return None;
    }
    // Submitted before the last flush ended: not among those it
    // acknowledged, who come back on top of them.
    let waiting_then = submitted.iter().filter(|at| **at < last.ended).count();
    let expected = (last.events + waiting_then).min(max_batch);
    if expected <= submitted.len() {
        return None;
    }
    let flush = last.ended.saturating_duration_since(last.began);
    Some((expected, last.ended + flush.min(MAX_LINGER)))
}

/// A batch waiting to be written: events, where to answer, and when each
/// was submitted.
type Batch = Vec<(Box<NewEvent>, Reply, Instant)>;

impl WriterState {
    fn run(&mut self, rx: &mpsc::Receiver<Request>) -> Result<(), AppendError> {
        let mut batch: Batch = Vec::with_capacity(self.config.max_batch);
        loop {
            let mut shutting_down = false;
            let mut idle = false;
            match rx.recv_timeout(self.wait()) {
                Ok(Request::Append(e, r, at)) => batch.push((e, r, at)),
                Ok(Request::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    shutting_down = true
                }
                Err(mpsc::RecvTimeoutError::Timeout) => idle = true,
            }
            self.maintain(idle);
            // Take whatever else is already waiting; on shutdown, everything.
            while shutting_down || batch.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(Request::Append(e, r, at)) => batch.push((e, r, at)),
                    Ok(Request::Shutdown) => shutting_down = true,
                    Err(_) => break,
                }
                if batch.len() >= self.config.max_batch {
                    self.commit(&mut batch);
                }
            }
            if !shutting_down && self.linger(rx, &mut batch) {
                // Asked to stop while waiting: everything submitted before
                // is committed, as above.
                shutting_down = true;
                while let Ok(request) = rx.try_recv() {
                    if let Request::Append(e, r, at) = request {
                        batch.push((e, r, at));
                    }
                    if batch.len() >= self.config.max_batch {
                        self.commit(&mut batch);
                    }
                }
            }
            self.commit(&mut batch);
            self.commit_observer_events(&mut batch);
            if shutting_down {
                if let Some(failed) = self.failed.clone() {
                    return Err(failed);
                }
                return match &self.outage {
                    Some(o) => Err(AppendError::CannotRecord(self.refusal(&o.cause))),
                    None => Ok(()),
                };
            }
        }
    }

    /// How long to wait for requests: until the next try when the log
    /// cannot record, else the idle poll.
    fn wait(&self) -> Duration {
        match &self.outage {
            Some(o) if self.failed.is_none() => o
                .next_try
                .saturating_duration_since(Instant::now())
                .min(self.config.idle_poll),
            _ => self.config.idle_poll,
        }
    }

    /// Between batches: tries to record again when it is time, and, when
    /// idle, notices a file system that filled up without appends.
    fn maintain(&mut self, idle: bool) {
        if self.failed.is_some() {
            return;
        }
        match &self.outage {
            Some(o) if Instant::now() >= o.next_try => self.try_to_record_again(),
            Some(_) => {}
            None if idle && self.config.min_free_bytes > 0 => {
                if let Some(free) = free_bytes(self.store.path())
                    && free < self.config.min_free_bytes.saturating_add(STOP_ROOM)
                {
                    self.stop_recording(NO_SPACE.to_owned(), free, false);
                }
            }
            None => {}
        }
    }

    /// What an appender is told: the cause and the free space now.
    fn refusal(&self, cause: &str) -> String {
        let path = self.store.path().display();
        let free = free_bytes(self.store.path());
        match (free, self.config.min_free_bytes) {
            (Some(free), 0) => {
                format!(
                    "the event log at {path} cannot record: {cause} ({} free)",
                    mib(free)
                )
            }
            (Some(free), keep) => format!(
                "the event log at {path} cannot record: {cause} ({} free, {} kept free)",
                mib(free),
                mib(keep)
            ),
            (None, _) => format!("the event log at {path} cannot record: {cause}"),
        }
    }

    /// Starts an outage (or, if one is under way, takes a new failure into
    /// it: the database then needs reopening).
    fn stop_recording(&mut self, cause: String, free: u64, reopen: bool) {
        // What was written past the durable head is not acknowledged: the
        // next append continues from the durable head once the records
        // past it are removed (see `try_to_record_again`).
        self.head = self.store.head();
        if let Some(o) = self.outage.as_mut() {
            o.reopen |= reopen;
            o.cause = cause;
            o.back_off(self.config.retry_max);
            return;
        }
        let reason = self.refusal(&cause);
        let since_unix_nanos = now_nanos();
        log::error!("{reason}; retrying");
        self.outage = Some(Outage {
            since_unix_nanos,
            since: Instant::now(),
            cause,
            reason: reason.clone(),
            free_at_start: free,
            reopen,
            reopened: false,
            refused: 0,
            next_try: Instant::now() + self.config.retry_min,
            backoff: self.config.retry_min,
        });
        self.state
            .send_replace(LogState::NotRecording(NotRecording {
                since_unix_nanos,
                reason,
            }));
    }

    fn fail_for_good(&mut self, err: AppendError) {
        log::error!("{err}");
        self.state.send_replace(LogState::Failed(err.to_string()));
        self.failed = Some(err);
    }

    /// One try to leave an outage: enough space, then (after a failed
    /// write) reopen and cut the log back to the durable head, then record
    /// the outage. Any failure schedules the next try.
    fn try_to_record_again(&mut self) {
        let Some(outage) = self.outage.as_mut() else {
            return;
        };
        let free = free_bytes(self.store.path());
        let room_needed = if self.config.min_free_bytes == 0 {
            RESUME_ROOM
        } else {
            self.config.min_free_bytes.saturating_add(RESUME_ROOM)
        };
        if free.is_some_and(|f| f < room_needed) {
            outage.back_off(self.config.retry_max);
            return;
        }
        if outage.reopen {
            match self.reopen_at_durable_head() {
                Ok(()) => {
                    if let Some(o) = self.outage.as_mut() {
                        o.reopen = false;
                        o.reopened = true;
                    }
                }
                Err(Retry::Later(e)) => {
                    let cause = reopen_failure(&e);
                    let reason = self.refusal(&cause);
                    if let Some(o) = self.outage.as_mut() {
                        if o.cause != cause {
                            log::error!("{reason}; retrying");
                            self.state
                                .send_replace(LogState::NotRecording(NotRecording {
                                    since_unix_nanos: o.since_unix_nanos,
                                    reason,
                                }));
                        }
                        o.cause = cause;
                        o.back_off(self.config.retry_max);
                    }
                    return;
                }
                Err(Retry::Never(e)) => {
                    self.fail_for_good(AppendError::Failed(e));
                    return;
                }
            }
        }
        let Some(outage) = self.outage.as_ref() else {
            return;
        };
        let path = self.store.path().display().to_string();
        let took = outage.since.elapsed();
        let degraded = NewEvent::system(LogDegraded {
            path: path.clone(),
            since_unix_nanos: outage.since_unix_nanos,
            reason: outage.reason.clone(),
            free_bytes: outage.free_at_start,
        });
        let recovered = NewEvent {
            causation: Some(self.head.seq + 1),
            ..NewEvent::system(LogRecovered {
                path,
                since_unix_nanos: outage.since_unix_nanos,
                duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                refused: outage.refused,
                reopened: outage.reopened,
                free_bytes: free.unwrap_or(0),
            })
        };
        let (refused, reopened) = (outage.refused, outage.reopened);
        // Written while the outage lasts: if this fails, the same outage
        // goes on (same start, same count).
        let mut batch: Batch = vec![
            (Box::new(degraded), None, Instant::now()),
            (Box::new(recovered), None, Instant::now()),
        ];
        if self.write_batch(&mut batch) {
            self.outage = None;
            log::warn!(
                "the event log at {} records again after {:.1} s ({refused} append(s) refused{})",
                self.store.path().display(),
                took.as_secs_f64(),
                if reopened {
                    "; the database was reopened"
                } else {
                    ""
                }
            );
            self.state.send_replace(LogState::Recording);
        }
    }

    /// Waits, before a flush, for the appenders the last one suggests are
    /// about to submit: the ones it acknowledged (if they append in a loop,
    /// they come back a round trip later) plus the ones that were already
    /// waiting when it ended (submitted before its end, so not among them).
    /// The wait ends as soon as that many are in the batch, and after at
    /// most the last flush's duration (never more than [`MAX_LINGER`]):
    /// appenders that do not come back cost at most one flush's latency,
    /// and a lone appender (last batch of one, nobody waiting) none.
    /// Whether a shutdown request arrived meanwhile.
    fn linger(&mut self, rx: &mpsc::Receiver<Request>, batch: &mut Batch) -> bool {
        let Some(last) = &self.last else {
            return false;
        };
        let submitted: Vec<Instant> = batch.iter().map(|(_, _, at)| *at).collect();
        let Some((expected, deadline)) = linger_plan(last, &submitted, self.config.max_batch)
        else {
            return false;
        };
        while batch.len() < expected {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match rx.recv_timeout(left) {
                Ok(Request::Append(e, r, at)) => batch.push((e, r, at)),
                Ok(Request::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        false
    }

    fn commit_observer_events(&mut self, batch: &mut Batch) {
        let Some(observer) = self.observer.as_mut() else {
            return;
        };
        batch.extend(
            observer
                .pending_events()
                .into_iter()
                .map(|e| (Box::new(e), None, Instant::now())),
        );
        self.commit(batch);
    }

    fn commit(&mut self, batch: &mut Batch) {
        if batch.is_empty() {
            return;
        }
        if let Some(err) = &self.failed {
            for (_, reply, _) in batch.drain(..) {
                reply_with(reply, Err(err.clone()));
            }
            return;
        }
        if self.outage.is_some() {
            self.answer_refused(batch.drain(..).map(|(_, reply, _)| reply));
            return;
        }
        self.write_batch(batch);
    }

    /// Writes and flushes `batch`, acknowledges what is durable and answers
    /// the rest. False if the log stopped recording (or failed) on the way.
    fn write_batch(&mut self, batch: &mut Batch) -> bool {
        let mut done = Vec::with_capacity(batch.len());
        // Replies of the event that could not be written and of those after
        // it: they are answered with the refusal, not dropped (which would
        // read as "writer stopped").
        let mut unwritten = Vec::new();
        let mut stop = None;
        // Room for this batch: free space above `min_free_bytes`.
        let mut room = match (self.config.min_free_bytes, free_bytes(self.store.path())) {
            (0, _) | (_, None) => None,
            (keep, Some(free)) => Some((free, free.saturating_sub(keep))),
        };
        let began = Instant::now();
        for (new, reply, _) in batch.drain(..) {
            if stop.is_some() {
                unwritten.push(reply);
                continue;
            }
            match self.write_one(*new, &mut room) {
                Ok(Ok(event)) => done.push((event, reply)),
                Ok(Err(rejected)) => reply_with(reply, Err(rejected)),
                Err(e) => {
                    stop = Some(e);
                    unwritten.push(reply);
                }
            }
        }
        // After a failed write sled's flush may never return (a value file
        // that could not be written leaves its IO buffer claimed): flush
        // only when every write succeeded.
        let flushed = match &stop {
            Some(Stop::Store(_)) => None,
            _ if done.is_empty() => Some(Ok(())),
            _ => Some(
                self.store
                    .h()
                    .and_then(|h| h.db.flush().map(drop).map_err(StoreError::from)),
            ),
        };
        match flushed {
            Some(Ok(())) => {
                self.last = Some(LastFlush {
                    events: done.len(),
                    began,
                    ended: Instant::now(),
                });
                self.store.set_durable(self.head);
                if !done.is_empty() {
                    self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .events
                        .fetch_add(done.len() as u64, Ordering::Relaxed);
                }
                let mut committed = Vec::with_capacity(done.len());
                for ((event, attachments), reply) in done {
                    reply_with(
                        reply,
                        Ok(Appended {
                            seq: event.seq(),
                            hash: event.hash,
                        }),
                    );
                    committed.push(CommittedEvent { event, attachments });
                }
                if !committed.is_empty()
                    && let Some(observer) = self.observer.as_mut()
                {
                    observer.committed(committed);
                }
                match stop {
                    Some(Stop::NoRoom { free }) => {
                        self.stop_recording(NO_SPACE.to_owned(), free, false);
                        self.answer_refused(unwritten);
                        false
                    }
                    _ => true,
                }
            }
            Some(Err(e)) => {
                self.store_failed(e, done.into_iter().map(|(_, r)| r).chain(unwritten));
                false
            }
            None => {
                let Some(Stop::Store(e)) = stop else {
                    return false;
                };
                self.store_failed(e, done.into_iter().map(|(_, r)| r).chain(unwritten));
                false
            }
        }
    }

    /// Answers `replies` with the current refusal, counting them.
    fn answer_refused(&mut self, replies: impl IntoIterator<Item = Reply>) {
        let Some(outage) = self.outage.as_mut() else {
            return;
        };
        let replies: Vec<Reply> = replies.into_iter().collect();
        outage.refused += replies.len() as u64;
        let cause = outage.cause.clone();
        let err = AppendError::CannotRecord(self.refusal(&cause));
        for reply in replies {
            reply_with(reply, Err(err.clone()));
        }
    }

    /// A sled write or flush failed: nothing of the batch is acknowledged.
    /// An IO error (a full disk above all) stops recording until the
    /// database can be reopened; anything else stops the writer for good.
    fn store_failed(&mut self, e: StoreError, replies: impl IntoIterator<Item = Reply>) {
        match e {
            StoreError::Sled(sled::Error::Io(io)) => {
                let cause = if is_no_space(&io) {
                    NO_SPACE.to_owned()
                } else {
                    format!("write failed: {io}")
                };
                let free = free_bytes(self.store.path()).unwrap_or(0);
                self.stop_recording(cause, free, true);
                self.answer_refused(replies);
            }
            StoreError::Reopening(_) => {
                // The database is closed (a reopen that has not succeeded
                // yet): nothing was written.
                let free = free_bytes(self.store.path()).unwrap_or(0);
                self.stop_recording("the database is closed".to_owned(), free, true);
                self.answer_refused(replies);
            }
            other => {
                let err = AppendError::Failed(other.to_string());
                for reply in replies {
                    reply_with(reply, Err(err.clone()));
                }
                self.fail_for_good(err);
            }
        }
    }

    /// Reopens the database and cuts the log back to the durable head: the
    /// records past it belong to a batch that was never acknowledged.
    fn reopen_at_durable_head(&mut self) -> Result<(), Retry> {
        self.store.reopen().map_err(Retry::Later)?;
        let durable = self.store.head();
        // Every acknowledged event must have survived: it was flushed.
        let found = self.store.hash_at(durable.seq).map_err(Retry::Later)?;
        if durable.seq > 0 && found != Some(durable.hash) {
            return Err(Retry::Never(format!(
                "{}: after reopening, the acknowledged seq {} is {}; refusing to append (run `con verify`)",
                self.store.path().display(),
                durable.seq,
                if found.is_some() {
                    "a different record"
                } else {
                    "missing"
                }
            )));
        }
        self.store.remove_after(durable.seq).map_err(Retry::Later)?;
        self.head = durable;
        Ok(())
    }

    /// `instance ‖ seq`: unique across logs and restarts (random half) and
    /// within a log (seq half), without a random draw per event.
    fn event_id(&self, seq: u64) -> EventId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.instance);
        id[8..].copy_from_slice(&seq.to_be_bytes());
        EventId(id)
    }

    /// Writes one event (not yet durable). The outer error is a store
    /// failure (fatal for the writer); the inner one rejects only this event.
    #[allow(clippy::type_complexity)]
    fn write_one(
        &mut self,
        new: NewEvent,
        room: &mut Option<(u64, u64)>,
    ) -> Result<Result<(Event, Vec<Vec<u8>>), AppendError>, Stop> {
        let seq = self.head.seq + 1;
        let kind = new.payload.spec();
        let payload = match new.payload.encode() {
            Ok(p) => p,
            Err(e) => {
                return Ok(Err(AppendError::Rejected(format!(
                    "{} payload: {e}",
                    kind.name
                ))));
            }
        };
        let envelope = Envelope {
            seq,
            id: self.event_id(seq),
            ts_unix_nanos: now_nanos(),
            actor: new.actor,
            session: new.session,
            task: new.task,
            causation: new.causation,
            kind: kind.id,
            kind_version: kind.version,
            payload,
            prev_hash: self.head.hash,
        };
        let record = match envelope.encode_record() {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(AppendError::Rejected(format!(
                    "{} record: {e}",
                    kind.name
                ))));
            }
        };
        // sled writes about twice what it is given (measured).
        let bytes = (record.len() as u64)
            .saturating_add(new.attachments.iter().map(|a| a.len() as u64).sum())
            .saturating_mul(2);
        let largest = new
            .attachments
            .iter()
            .map(Vec::len)
            .chain([record.len()])
            .max()
            .unwrap_or(0);
        if room.is_none()
            && largest > VALUE_FILE_BYTES
            && let Some(free) = free_bytes(self.store.path())
            && free < bytes.saturating_add(STOP_ROOM)
        {
            // Even without a threshold of our own: sled cannot be reopened
            // in this process after it failed to write a value file.
            return Err(Stop::NoRoom { free });
        }
        if let Some((free, left)) = room.as_mut() {
            if bytes > *left {
                if *left < STOP_ROOM {
                    return Err(Stop::NoRoom { free: *free });
                }
                // Smaller events still fit: only this one is refused.
                return Ok(Err(AppendError::CannotRecord(format!(
                    "the event log at {} cannot record this event: it needs about {} and {} are free ({} kept free)",
                    self.store.path().display(),
                    mib(bytes),
                    mib(*free),
                    mib(self.config.min_free_bytes)
                ))));
            }
            *left -= bytes;
        }
        let store_err = |e: StoreError| Stop::Store(e);
        for blob in &new.attachments {
            self.store.put_blob(blob).map_err(store_err)?;
        }
        let hash = chain_hash(&self.head.hash, &record);
        // Insert only if the seq is free: whatever made the head wrong, an
        // existing record is never replaced.
        self.store
            .h()
            .map_err(store_err)?
            .log
            .compare_and_swap(
                seq_key(seq),
                None::<&[u8]>,
                Some(encode_stored(&record, &hash)),
            )
            .map_err(|e| store_err(e.into()))?
            .map_err(|_| store_err(StoreError::SeqTaken(seq)))?;
        self.head = Head { seq, hash };
        Ok(Ok((
            Event {
                envelope,
                payload: new.payload,
                hash,
            },
            new.attachments,
        )))
    }
}

/// Whether `io` says the file system is full. sled wraps some of its IO
/// errors in a custom error that keeps the kind but not the OS code.
fn is_no_space(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::StorageFull
        || io.raw_os_error() == Some(nix::libc::ENOSPC)
        || io.to_string().contains("No space left on device")
}

/// What appenders are told while a reopen fails.
fn reopen_failure(e: &StoreError) -> String {
    match e {
        StoreError::Open {
            cause: sled::Error::Io(io),
            ..
        }
        | StoreError::Sled(sled::Error::Io(io))
            if is_no_space(io) =>
        {
            NO_SPACE.to_owned()
        }
        StoreError::Locked(_) => "the database cannot be reopened: its previous opening has not released it yet (if this lasts, restart the daemon)".to_owned(),
        other => format!("the database cannot be reopened: {other}"),
    }
}

/// Whether a failed reopen is worth another try.
enum Retry {
    Later(StoreError),
    Never(String),
}

fn reply_with(reply: Reply, result: Result<Appended, AppendError>) {
    if let Some(tx) = reply {
        // The submitter may have given up waiting; the event stands anyway.
        let _ = tx.send(result);
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(events: usize, took_us: u64) -> (LastFlush, Instant) {
        let began = Instant::now();
        let ended = began + Duration::from_micros(took_us);
        (
            LastFlush {
                events,
                began,
                ended,
            },
            ended,
        )
    }

    #[test]
    fn a_lone_appender_is_never_kept_waiting() {
        let (last, ended) = flush(1, 200);
        let after = ended + Duration::from_micros(50);
        assert_eq!(linger_plan(&last, &[after], 4096), None);
        assert_eq!(linger_plan(&last, &[], 4096), None);
    }

    #[test]
    fn two_alternating_groups_wait_for_each_other() {
        // 4 acknowledged by the last flush, 4 others waited through it.
        let (last, ended) = flush(4, 200);
        let during = ended - Duration::from_micros(100);
        let plan = linger_plan(&last, &[during; 4], 4096);
        assert_eq!(plan, Some((8, ended + Duration::from_micros(200))));
    }

    #[test]
    fn a_merged_group_waits_for_its_members_only() {
        let (last, ended) = flush(8, 200);
        let back = ended + Duration::from_micros(30);
        assert_eq!(
            linger_plan(&last, &[back], 4096),
            Some((8, ended + Duration::from_micros(200)))
        );
        assert_eq!(linger_plan(&last, &[back; 8], 4096), None);
    }

    #[test]
    fn the_wait_is_bounded() {
        // A slow flush: at most MAX_LINGER; never more than a batch.
        let (last, ended) = flush(8000, 50_000);
        let during = ended - Duration::from_micros(1);
        assert_eq!(
            linger_plan(&last, &[during], 4096),
            Some((4096, ended + MAX_LINGER))
        );
    }
}
