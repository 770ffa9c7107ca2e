//! The group-commit writer: the only code that appends to the log.
//!
//! One thread owns the write path. It takes every request that is waiting
//! (up to `max_batch`), assigns gap-free seqs, chains and inserts them, flushes
//! sled once, and only then acknowledges the whole batch and publishes the new
//! durable head to readers. Many concurrent appenders therefore share one
//! fsync.
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

use con_event::{Digest, Envelope, Event, EventId, NewEvent, chain_hash, encode_stored};
use tokio::sync::oneshot;

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
    /// Writing or flushing failed. Whether this batch reached the disk is
    /// unknown; the writer refuses every further append, and a restart
    /// recovers the log's true head from disk.
    #[error("the event log writer failed (outcome of this append unknown): {0}")]
    Failed(String),
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
    /// How often an idle writer polls its observer for events of its own.
    pub idle_poll: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            idle_poll: Duration::from_millis(250),
        }
    }
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
        let mut state = WriterState {
            store: store.clone(),
            head,
            instance,
            config,
            observer,
            failed: None,
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
        })
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
    head: Head,
    /// Random per writer start; the first half of every event id.
    instance: [u8; 8],
    config: WriterConfig,
    observer: Option<Box<dyn CommitObserver>>,
    failed: Option<AppendError>,
    stats: Arc<WriterStats>,
    /// The last flushed batch, for [`WriterState::linger`].
    last: Option<LastFlush>,
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
            match rx.recv_timeout(self.config.idle_poll) {
                Ok(Request::Append(e, r, at)) => batch.push((e, r, at)),
                Ok(Request::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    shutting_down = true
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
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
                return self.failed.clone().map_or(Ok(()), Err);
            }
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
        let mut done = Vec::with_capacity(batch.len());
        // Replies of the event whose write failed and of those after it: they
        // are answered with the failure, not dropped (which would read as
        // "writer stopped").
        let mut unwritten = Vec::new();
        let mut failure = None;
        let began = Instant::now();
        for (new, reply, _) in batch.drain(..) {
            if failure.is_some() {
                unwritten.push(reply);
                continue;
            }
            match self.write_one(*new) {
                Ok(Ok(event)) => done.push((event, reply)),
                Ok(Err(rejected)) => reply_with(reply, Err(rejected)),
                Err(e) => {
                    failure = Some(e);
                    unwritten.push(reply);
                }
            }
        }
        let result = match failure {
            Some(e) => Err(e),
            None => self.store.db.flush().map(drop).map_err(StoreError::from),
        };
        match result {
            Ok(()) => {
                self.last = Some(LastFlush {
                    events: done.len(),
                    began,
                    ended: Instant::now(),
                });
                self.store.set_durable(self.head);
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .events
                    .fetch_add(done.len() as u64, Ordering::Relaxed);
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
                if let Some(observer) = self.observer.as_mut() {
                    observer.committed(committed);
                }
            }
            Err(e) => {
                // Nothing of this batch is acknowledged, and nothing after it
                // will be: what reached the disk is unknown, so only a restart
                // (which reads the head back from disk) can continue safely.
                let err = AppendError::Failed(e.to_string());
                for reply in done.into_iter().map(|(_, reply)| reply).chain(unwritten) {
                    reply_with(reply, Err(err.clone()));
                }
                self.failed = Some(err);
            }
        }
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
    ) -> Result<Result<(Event, Vec<Vec<u8>>), AppendError>, StoreError> {
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
        for blob in &new.attachments {
            self.store.put_blob(blob)?;
        }
        let hash = chain_hash(&self.head.hash, &record);
        // Insert only if the seq is free: whatever made the head wrong, an
        // existing record is never replaced.
        self.store
            .log
            .compare_and_swap(
                seq_key(seq),
                None::<&[u8]>,
                Some(encode_stored(&record, &hash)),
            )?
            .map_err(|_| StoreError::SeqTaken(seq))?;
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
