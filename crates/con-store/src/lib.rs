//! The con event log: an append-only, hash-chained sequence of events in sled.
//!
//! Layout (sled trees):
//! - `log`: `seq (u64 BE) → record ‖ hash`. The single commit point: an event
//!   exists iff its log entry exists.
//! - `blobs`: `sha256 → bytes`, content-addressed large payloads.
//! - `by_session`: `session id ‖ seq → ()`, `by_agent`: `agent ‖ 0 ‖ seq → ()`.
//!   Derived from `log` after commit, from the `meta.indexed_through`
//!   watermark: on open, before every indexed query, and whenever the owner
//!   calls [`Store::catch_up_indexes`]. Keeping them off the commit path
//!   makes the append one sled insert per event.
//! - `checkpoints`: projection name → (version, through seq, state).
//! - `meta`: the log id and index watermark.
//!
//! Only the [`GroupCommitWriter`] appends. Durability comes from one
//! `flush()` per batch, after which every event of the batch is acknowledged.

mod projections;
mod verify;
mod writer;

use std::path::{Path, PathBuf};

use con_event::{DecodeError, Digest, Event, SessionId};

pub use projections::ProjectionError;
pub use verify::{ChainBreak, VerifyReport};
pub use writer::{
    AppendError, Appended, Appender, CommitObserver, CommittedEvent, GroupCommitWriter, Ticket,
    WriterConfig,
};

const META_LOG_ID: &[u8] = b"log_id";
const META_INDEXED_THROUGH: &[u8] = b"indexed_through";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (normally `con daemon`) holds the database.
    #[error(
        "{0}: the event log is in use by another process (is `con daemon` running?); stop it or work on a copy"
    )]
    Locked(PathBuf),
    /// sled could not open the database.
    #[error("{path}: cannot open the event log: {source}")]
    Open {
        /// Database directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A sled operation failed.
    #[error("event log: {0}")]
    Sled(#[from] sled::Error),
    /// A stored event could not be decoded.
    #[error("event log seq {seq}: {source}")]
    Decode {
        /// Seq of the bad record.
        seq: u64,
        /// What was wrong.
        source: DecodeError,
    },
    /// A key in the log tree is not 8 bytes.
    #[error("event log: malformed key {0:02x?}")]
    BadKey(Vec<u8>),
}

/// The last committed position of the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    /// Last seq (0 for an empty log).
    pub seq: u64,
    /// Its chain hash (zero for an empty log).
    pub hash: Digest,
}

/// An open event log. Cheap to clone (sled handles are shared).
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    blobs: sled::Tree,
    by_session: sled::Tree,
    by_agent: sled::Tree,
    checkpoints: sled::Tree,
    meta: sled::Tree,
    /// Serialises index catch-up so the watermark only moves forward.
    index_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn key_seq(key: &[u8]) -> Result<u64, StoreError> {
    let tail: [u8; 8] = key
        .get(key.len().saturating_sub(8)..)
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| StoreError::BadKey(key.to_vec()))?;
    Ok(u64::from_be_bytes(tail))
}

fn agent_key(agent: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent.len() + 9);
    k.extend_from_slice(agent.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq_key(seq));
    k
}

fn session_key(session: &SessionId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&session.0);
    k[16..].copy_from_slice(&seq_key(seq));
    k
}

impl Store {
    /// Opens (or creates) the log at `path` and brings the derived indexes up
    /// to the log's head.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            // sled wraps the flock failure in an `Other` error with the OS
            // error in its message.
            sled::Error::Io(ref io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                StoreError::Locked(path.to_owned())
            }
            source => StoreError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        let store = Store {
            path: path.to_owned(),
            log: db.open_tree("log")?,
            blobs: db.open_tree("blobs")?,
            by_session: db.open_tree("by_session")?,
            by_agent: db.open_tree("by_agent")?,
            checkpoints: db.open_tree("checkpoints")?,
            meta: db.open_tree("meta")?,
            index_lock: Default::default(),
            db,
        };
        if store.meta.get(META_LOG_ID)?.is_none() {
            store
                .meta
                .insert(META_LOG_ID, uuid::Uuid::new_v4().as_bytes().as_slice())?;
            store.db.flush()?;
        }
        store.catch_up_indexes()?;
        Ok(store)
    }

    /// Directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Random id of this log, fixed at creation; tags journal entries so logs
    /// of several conspiracies (or test runs) on one host stay apart.
    pub fn log_id(&self) -> Result<String, StoreError> {
        Ok(self
            .meta
            .get(META_LOG_ID)?
            .map(|v| hex::encode(&v))
            .unwrap_or_default())
    }

    /// Last committed seq and hash.
    pub fn head(&self) -> Result<Head, StoreError> {
        match self.log.last()? {
            None => Ok(Head::default()),
            Some((k, v)) => {
                let seq = key_seq(&k)?;
                let stored = con_event::decode_stored(&v)
                    .map_err(|source| StoreError::Decode { seq, source })?;
                Ok(Head {
                    seq,
                    hash: stored.hash,
                })
            }
        }
    }

    /// The event at `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.log
            .get(seq_key(seq))?
            .map(|v| Event::from_stored(&v).map_err(|source| StoreError::Decode { seq, source }))
            .transpose()
    }

    /// Events with seq ≥ `from`, in order.
    pub fn events_from(&self, from: u64) -> impl Iterator<Item = Result<Event, StoreError>> + '_ {
        self.log.range(seq_key(from)..).map(|item| {
            let (k, v) = item?;
            let seq = key_seq(&k)?;
            Event::from_stored(&v).map_err(|source| StoreError::Decode { seq, source })
        })
    }

    /// Events of one session, in seq order.
    pub fn session_events(
        &self,
        session: &SessionId,
    ) -> Result<impl Iterator<Item = Result<Event, StoreError>> + '_, StoreError> {
        self.catch_up_indexes()?;
        Ok(self.indexed(self.by_session.scan_prefix(session.0)))
    }

    /// Events by or about one agent, in seq order.
    pub fn agent_events(
        &self,
        agent: &str,
    ) -> Result<impl Iterator<Item = Result<Event, StoreError>> + '_, StoreError> {
        self.catch_up_indexes()?;
        let mut prefix = agent.as_bytes().to_vec();
        prefix.push(0);
        Ok(self.indexed(self.by_agent.scan_prefix(prefix)))
    }

    fn indexed<'a>(
        &'a self,
        keys: sled::Iter,
    ) -> impl Iterator<Item = Result<Event, StoreError>> + 'a {
        keys.filter_map(move |item| {
            let seq = match item
                .map_err(StoreError::from)
                .and_then(|(k, _)| key_seq(&k))
            {
                Ok(seq) => seq,
                Err(e) => return Some(Err(e)),
            };
            self.get(seq).transpose()
        })
    }

    /// Content of a blob.
    pub fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(digest.0)?.map(|v| v.to_vec()))
    }

    /// Stores `bytes` content-addressed (idempotent). Durable with the next
    /// flush, i.e. no later than the event that references it.
    pub(crate) fn put_blob(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let digest = Digest::of(bytes);
        if !self.blobs.contains_key(digest.0)? {
            self.blobs.insert(digest.0, bytes)?;
        }
        Ok(())
    }

    /// Adds the index entries of one event.
    fn index(
        &self,
        event_seq: u64,
        session: Option<&SessionId>,
        agents: [Option<&str>; 2],
    ) -> Result<(), StoreError> {
        if let Some(s) = session {
            self.by_session.insert(session_key(s, event_seq), &[])?;
        }
        let [a, b] = agents;
        if let Some(a) = a {
            self.by_agent.insert(agent_key(a, event_seq), &[])?;
        }
        if let Some(b) = b.filter(|b| Some(*b) != a) {
            self.by_agent.insert(agent_key(b, event_seq), &[])?;
        }
        Ok(())
    }

    fn index_event(&self, event: &Event) -> Result<(), StoreError> {
        self.index(
            event.seq(),
            event.envelope.session.as_ref(),
            [
                event.envelope.actor.agent.as_deref(),
                event.payload.subject_agent(),
            ],
        )
    }

    fn set_indexed_through(&self, seq: u64) -> Result<(), StoreError> {
        self.meta.insert(META_INDEXED_THROUGH, &seq_key(seq))?;
        Ok(())
    }

    /// Derives index entries for every event committed after the watermark.
    /// Idempotent and safe to call concurrently with the writer; a crash
    /// between an event and its index entries only means they are derived
    /// again next time.
    pub fn catch_up_indexes(&self) -> Result<(), StoreError> {
        let _guard = self
            .index_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let through = match self.meta.get(META_INDEXED_THROUGH)? {
            Some(v) => key_seq(&v)?,
            None => 0,
        };
        let head = self.head()?.seq;
        if head <= through {
            return Ok(());
        }
        for event in self.events_from(through + 1) {
            let event = event?;
            if event.seq() > head {
                break;
            }
            self.index_event(&event)?;
        }
        self.set_indexed_through(head)?;
        Ok(())
    }

    /// Flushes everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Raw access to the log tree for tests that corrupt records on purpose.
    #[doc(hidden)]
    pub fn raw_log(&self) -> &sled::Tree {
        &self.log
    }
}
