//! The group-commit writer: the only code that appends to the log.
//!
//! One thread owns the write path. It takes every request that is waiting
//! (up to `max_batch`), assigns gap-free seqs, chains and inserts them, flushes
//! sled once, and only then acknowledges the whole batch. Many concurrent
//! appenders therefore share one fsync.

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
    /// Writing or flushing failed; the writer refuses further appends because
    /// durability of anything after this point is unknown.
    #[error("the event log writer failed: {0}")]
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

enum Request {
    Append(Box<NewEvent>, Reply),
    Shutdown,
}

/// The pending acknowledgement of one append.
pub struct Ticket(oneshot::Receiver<Result<Appended, AppendError>>);

impl Ticket {
    /// Blocks until the event is durable (or failed). Not for async contexts.
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

    /// Submits and waits.
    pub fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        self.submit(event).wait()
    }
}

/// Owner of the writer thread.
pub struct GroupCommitWriter {
    tx: mpsc::Sender<Request>,
    thread: Option<JoinHandle<Result<(), AppendError>>>,
}

impl GroupCommitWriter {
    /// Starts the writer thread on `store`.
    pub fn spawn(
        store: Store,
        config: WriterConfig,
        observer: Option<Box<dyn CommitObserver>>,
    ) -> Result<Self, StoreError> {
        let head = store.head()?;
        let (tx, rx) = mpsc::channel();
        let mut state = WriterState {
            store,
            head,
            instance: *uuid::Uuid::new_v4().as_bytes(),
            config,
            observer,
            failed: None,
        };
        let thread = std::thread::Builder::new()
            .name("con-log-writer".into())
            .spawn(move || state.run(&rx))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(Self {
            tx,
            thread: Some(thread),
        })
    }

    /// A new submission handle.
    pub fn appender(&self) -> Appender {
        Appender(self.tx.clone())
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
    /// Random per writer start; half of every event id.
    instance: [u8; 16],
    config: WriterConfig,
    observer: Option<Box<dyn CommitObserver>>,
    failed: Option<AppendError>,
}

type Reply = Option<oneshot::Sender<Result<Appended, AppendError>>>;

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
        let start_head = self.head;
        let mut done = Vec::with_capacity(batch.len());
        let result = (|| -> Result<(), StoreError> {
            for (new, reply) in batch.drain(..) {
                let event = self.write_one(*new)?;
                done.push((event, reply));
            }
            self.store.db.flush()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
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
                // Nothing of this batch is acknowledged. What reached disk is
                // unknown, so the in-memory head is not trusted either: the
                // writer stops, and a restart recovers the head from disk.
                let err = AppendError::Failed(e.to_string());
                self.head = start_head;
                for (_, reply) in done {
                    reply_with(reply, Err(err.clone()));
                }
                for (_, reply) in batch.drain(..) {
                    reply_with(reply, Err(err.clone()));
                }
                self.failed = Some(err);
            }
        }
    }

    /// `instance[..8] ‖ seq`: unique across logs and restarts (random half)
    /// and within a log (seq half), without a random draw per event.
    fn event_id(&self, seq: u64) -> EventId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.instance[..8]);
        id[8..].copy_from_slice(&seq.to_be_bytes());
        EventId(id)
    }

    fn write_one(&mut self, new: NewEvent) -> Result<(Event, Vec<Vec<u8>>), StoreError> {
        for blob in &new.attachments {
            self.store.put_blob(blob)?;
        }
        let seq = self.head.seq + 1;
        let envelope = Envelope {
            seq,
            id: self.event_id(seq),
            ts_unix_nanos: now_nanos(),
            actor: new.actor,
            session: new.session,
            task: new.task,
            causation: new.causation,
            kind: new.payload.spec().id,
            kind_version: new.payload.spec().version,
            payload: new.payload.encode(),
            prev_hash: self.head.hash,
        };
        let record = envelope.encode_record();
        let hash = chain_hash(&self.head.hash, &record);
        self.store
            .log
            .insert(seq_key(seq), encode_stored(&record, &hash))?;
        self.head = Head { seq, hash };
        Ok((
            Event {
                envelope,
                payload: new.payload,
                hash,
            },
            new.attachments,
        ))
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
