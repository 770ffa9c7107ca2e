//! The group-commit writer: the only code that appends to the log.
//!
//! One thread owns the write path. It takes every request that is waiting
//! (up to `max_batch`), assigns gap-free seqs, chains and inserts them, flushes
//! sled once, and only then acknowledges the whole batch and publishes the new
//! durable head to readers. Many concurrent appenders therefore share one
//! fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    Append(Box<NewEvent>, Reply),
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
        if let Err(mpsc::SendError(Request::Append(_, Some(tx)))) =
            self.0.send(Request::Append(Box::new(event), Some(tx)))
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
}

impl WriterState {
    fn run(&mut self, rx: &mpsc::Receiver<Request>) -> Result<(), AppendError> {
        let mut batch: Vec<(Box<NewEvent>, Reply)> = Vec::with_capacity(self.config.max_batch);
        loop {
            let mut shutting_down = false;
            match rx.recv_timeout(self.config.idle_poll) {
                Ok(Request::Append(e, r)) => batch.push((e, r)),
                Ok(Request::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    shutting_down = true
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // Take whatever else is already waiting; on shutdown, everything.
            while shutting_down || batch.len() < self.config.max_batch {
                match rx.try_recv() {
                    Ok(Request::Append(e, r)) => batch.push((e, r)),
                    Ok(Request::Shutdown) => shutting_down = true,
                    Err(_) => break,
                }
                if batch.len() >= self.config.max_batch {
                    self.commit(&mut batch);
                }
            }
            self.commit(&mut batch);
            self.commit_observer_events(&mut batch);
            if shutting_down {
                return self.failed.clone().map_or(Ok(()), Err);
            }
        }
    }

    fn commit_observer_events(&mut self, batch: &mut Vec<(Box<NewEvent>, Reply)>) {
        let Some(observer) = self.observer.as_mut() else {
            return;
        };
        batch.extend(
            observer
                .pending_events()
                .into_iter()
                .map(|e| (Box::new(e), None)),
        );
        self.commit(batch);
    }

    fn commit(&mut self, batch: &mut Vec<(Box<NewEvent>, Reply)>) {
        if batch.is_empty() {
            return;
        }
        if let Some(err) = &self.failed {
            for (_, reply) in batch.drain(..) {
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
        for (new, reply) in batch.drain(..) {
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
