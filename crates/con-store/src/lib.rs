//! The con event log: an append-only, hash-chained sequence of events in sled.
//!
//! Layout (sled trees):
//! - `log`: `seq (u64 BE) → record ‖ hash`. The single commit point: an event
//!   exists iff its log entry exists.
//! - `blobs`: `sha256 → bytes`, content-addressed large payloads.
//! - `by_session`: `session id ‖ seq → ()`, `by_agent`: `agent ‖ 0 ‖ seq → ()`,
//!   `by_blob`: `sha256 ‖ seq → ()` (which events reference a blob).
//!   Derived from `log` after commit, up to a watermark (seq + hash) in
//!   `meta`: on open, before every indexed query, and whenever the owner calls
//!   [`Store::catch_up_indexes`]. Keeping them off the commit path makes the
//!   append one sled write per event. A watermark that no longer matches the
//!   log (a restored or truncated log) makes the indexes rebuild from seq 1.
//! - `checkpoints`: projection name → (version, through seq, its hash, state).
//! - `meta`: the log id and the index watermark.
//! - `followed_blobs/<follower>`: digests a follower has passed on
//!   ([`FollowedBlobs`]).
//!
//! Only the [`GroupCommitWriter`] appends, one per store, after the last record
//! read strictly: a log whose last record cannot be read is refused for
//! appending, never taken as empty. Durability comes from one `flush()` per
//! batch, after which every event of the batch is acknowledged and becomes
//! visible to readers (the *durable head*).

mod backup;
mod followed_blobs;
mod projections;
mod unfinished_snapshots;
mod verify;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use con_event::{DecodeError, Digest, Event, SessionId};

pub use followed_blobs::FollowedBlobs;
pub use projections::ProjectionError;
pub use verify::{ChainBreak, VerifyReport};
pub use writer::{
    AppendError, Appended, Appender, CommitObserver, CommittedEvent, GroupCommitWriter, LogState,
    NotRecording, Ticket, WriterConfig, WriterStats,
};

const META_LOG_ID: &[u8] = b"log_id";
/// sled page cache size (sled's own accounting: the heap it takes was
/// measured at about 1.6× this). 16 MiB instead of 64 MiB took the
/// daemon's RSS after 1,000,000 small events from 139 to 61 MiB, and left
/// a session's replay through the daemon and a whole-log `con verify` as
/// fast (see BENCHMARKS.md): appends touch the log's last pages, followers
/// and projections read what was just written, and history reads are
/// scans that no cache of this order holds anyway.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
const META_INDEXED_THROUGH: &[u8] = b"indexed_through";
/// Which set of index trees the watermark covers; a build that adds an
/// index bumps it, and an older database's indexes are rebuilt on open.
const META_INDEX_LAYOUT: &[u8] = b"index_layout";
const INDEX_LAYOUT: u32 = 2;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (normally `con daemon`) holds the database.
    #[error(
        "{0}: the event log is in use by another process (is `con daemon` running?); stop it or work on a copy"
    )]
    Locked(PathBuf),
    /// sled could not open the database.
    #[error("{path}: cannot open the event log: {cause}")]
    Open {
        /// Database directory.
        path: PathBuf,
        /// sled's error.
        cause: sled::Error,
    },
    /// A sled operation failed.
    #[error("event log: {0}")]
    Sled(sled::Error),
    /// A stored event could not be decoded.
    #[error("event log seq {seq}: {cause}")]
    Decode {
        /// Seq of the bad record.
        seq: u64,
        /// What was wrong.
        cause: DecodeError,
    },
    /// A key in the log tree is not 8 bytes.
    #[error("event log: malformed key {0:02x?}")]
    BadKey(Vec<u8>),
    /// The last record of the log cannot be read, so the next seq is not
    /// known: appending from a guessed head would overwrite history.
    #[error(
        "{path}: the last record of the event log{} cannot be read: {cause}; refusing to append (run `con verify`)",
        seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
    )]
    UnreadableHead {
        /// Database directory.
        path: PathBuf,
        /// Seq of the last record, when its key could be read.
        seq: Option<u64>,
        /// What is wrong with it.
        cause: HeadDamage,
    },
    /// The writer was about to store a seq that the log already holds.
    #[error("event log: seq {0} already exists; refusing to overwrite it (run `con verify`)")]
    SeqTaken(u64),
    /// A writer is already running on this store.
    #[error("event log: a writer is already running on this store")]
    WriterActive,
    /// A backup could not be made.
    #[error("backup: {0}")]
    Backup(String),
    /// The writer thread could not be started.
    #[error("event log: cannot start the writer thread: {0}")]
    Thread(std::io::Error),
    /// The database is closed for a moment: the writer is reopening it
    /// after a write failure (see [`GroupCommitWriter`]).
    #[error("{0}: the event log is being reopened after a write failure; try again")]
    Reopening(PathBuf),
}

/// Why the last record of the log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadDamage {
    /// sled could not read it.
    #[error("{0}")]
    Sled(sled::Error),
    /// Its key is not a seq.
    #[error("key {} is {} bytes, not 8", hex::encode(.0), .0.len())]
    Key(Vec<u8>),
    /// Its value cannot hold a record and its hash.
    #[error("value is {0} bytes, shorter than a record")]
    Short(usize),
    /// Its record does not decode (e.g. an unknown format byte).
    #[error("{0}")]
    Decode(DecodeError),
    /// Its envelope names another seq than its key.
    #[error("its envelope claims seq {0}")]
    SeqMismatch(u64),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

/// A stored record: its seq and its bytes (`record ‖ hash`).
pub type Record = (u64, Vec<u8>);

fn decode_record(record: Result<Record, StoreError>) -> Result<Event, StoreError> {
    let (seq, bytes) = record?;
    Event::from_stored(&bytes).map_err(|cause| StoreError::Decode { seq, cause })
}

/// A position of the chain: a seq and that record's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    /// Last seq (0 for an empty log).
    pub seq: u64,
    /// Its chain hash (zero for an empty log).
    pub hash: Digest,
}

impl Head {
    fn to_bytes(self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..].copy_from_slice(&self.hash.0);
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        let seq = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let hash = Digest(b.get(8..40)?.try_into().ok()?);
        Some(Head { seq, hash })
    }
}

/// The sled handles of one opening of the database. Replaced whole when the
/// writer reopens the database after a write failure: sled refuses every
/// write for the rest of an instance's life once one has failed.
struct Handles {
    db: sled::Db,
    log: sled::Tree,
    blobs: sled::Tree,
    by_session: sled::Tree,
    by_agent: sled::Tree,
    by_blob: sled::Tree,
    checkpoints: sled::Tree,
    meta: sled::Tree,
}

/// An open event log. Cheap to clone: clones share one database, also
/// across a reopen.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    /// `None` only while the writer reopens the database.
    handles: Arc<RwLock<Option<Arc<Handles>>>>,
    /// Last flushed (acknowledged) position; readers see nothing beyond it.
    durable: Arc<Mutex<Head>>,
    /// Set while a writer runs: two writers would hand out the same seqs.
    writer_active: Arc<AtomicBool>,
    /// Serialises index catch-up so the watermark only moves forward.
    index_lock: Arc<Mutex<()>>,
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn key_seq(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::BadKey(key.to_vec()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn index_key_seq(key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .map_or(Err(StoreError::BadKey(key.to_vec())), |at| {
            key_seq(&key[at..])
        })
}

fn agent_key(agent: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent.len() + 9);
    k.extend_from_slice(agent.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq_key(seq));
    k
}

fn blob_key(digest: &Digest, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&digest.0);
    k[32..].copy_from_slice(&seq_key(seq));
    k
}

fn session_key(session: &SessionId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&session.0);
    k[16..].copy_from_slice(&seq_key(seq));
    k
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Guarded values are plain data updated in one assignment: a panic
    // elsewhere cannot leave them torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Opens (or creates) the log at `path` for appending and brings the
    /// derived indexes up to the log's head. Refuses, before writing
    /// anything, a log whose last record cannot be read
    /// ([`StoreError::UnreadableHead`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self::open_sled(path)?;
        store.set_durable(store.last_record()?);
        let h = store.h()?;
        if h.meta.get(META_LOG_ID)?.is_none() {
            h.meta
                .insert(META_LOG_ID, uuid::Uuid::new_v4().as_bytes().as_slice())?;
            h.db.flush()?;
        }
        drop(h);
        store.catch_up_indexes()?;
        Ok(store)
    }

    /// Opens an existing log for inspection (`con verify`, forensics on a
    /// copy): nothing is derived or written, so a damaged log stays as it was
    /// found and opening it cannot fail on the damage. If the last record
    /// cannot be read the head is 0 (readers see nothing; [`Store::verify`]
    /// walks the physical records regardless) and a writer refuses to start.
    pub fn open_for_inspection(path: &Path) -> Result<Self, StoreError> {
        let store = Self::open_sled(path)?;
        if let Ok(head) = store.last_record() {
            store.set_durable(head);
        }
        Ok(store)
    }

    fn open_sled(path: &Path) -> Result<Self, StoreError> {
        Ok(Store {
            path: path.to_owned(),
            handles: Arc::new(RwLock::new(Some(Arc::new(Self::open_handles(path)?)))),
            durable: Arc::default(),
            writer_active: Arc::default(),
            index_lock: Arc::default(),
        })
    }

    fn open_handles(path: &Path) -> Result<Handles, StoreError> {
        match unfinished_snapshots::sweep(path) {
            Ok(unfinished_snapshots::Sweep::Locked) => {
                return Err(StoreError::Locked(path.to_owned()));
            }
            Ok(unfinished_snapshots::Sweep::Swept) => {}
            Err(cause) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    cause: sled::Error::Io(cause),
                });
            }
        }
        let db = sled::Config::new()
            .path(path)
            // Durability comes from the writer's flush per batch; sled's own
            // periodic flush would only compete with it for the disk.
            .flush_every_ms(None)
            // sled's default page cache is 1 GiB; the log is mostly appended
            // and read back sequentially (see CACHE_BYTES).
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                // sled wraps the flock failure in an `Other` error with the OS
                // error in its message.
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StoreError::Locked(path.to_owned())
                }
                cause => StoreError::Open {
                    path: path.to_owned(),
                    cause,
                },
            })?;
        Ok(Handles {
            log: db.open_tree("log")?,
            blobs: db.open_tree("blobs")?,
            by_session: db.open_tree("by_session")?,
            by_agent: db.open_tree("by_agent")?,
            by_blob: db.open_tree("by_blob")?,
            checkpoints: db.open_tree("checkpoints")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// The current sled handles, or [`StoreError::Reopening`].
    fn h(&self) -> Result<Arc<Handles>, StoreError> {
        self.handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Reopening(self.path.clone()))
    }

    /// Closes this opening of the database and opens it again: what the
    /// writer does to continue after a write failed (sled refuses every
    /// write of an instance after one failed; measured on a full disk).
    /// Every clone of this store uses the new opening from then on; until
    /// it is open, reads fail with [`StoreError::Reopening`]. The old
    /// handles are released on a thread of their own: sled flushes when its
    /// last handle goes, and after a failed write of a value file that
    /// flush never returns (measured). If readers still hold the old
    /// opening (an iteration in progress), its lock is waited for like any
    /// just-closed database's, and then this fails as
    /// [`StoreError::Locked`]; the caller tries again later.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let old = self
            .handles
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            release_elsewhere(old);
        }
        let handles = Self::open_handles(&self.path)?;
        *self.handles.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(handles));
        Ok(())
    }

    /// The last record physically in the log, read strictly: the position
    /// the next append continues from. A record that cannot be read is an
    /// error, never an empty log: a writer starting from a guessed head
    /// would hand out seqs that exist and overwrite history.
    pub(crate) fn last_record(&self) -> Result<Head, StoreError> {
        let unreadable = |seq, cause| StoreError::UnreadableHead {
            path: self.path.clone(),
            seq,
            cause,
        };
        let Some((key, value)) = self
            .h()?
            .log
            .last()
            .map_err(|e| unreadable(None, HeadDamage::Sled(e)))?
        else {
            return Ok(Head::default());
        };
        let seq = key_seq(&key).map_err(|_| unreadable(None, HeadDamage::Key(key.to_vec())))?;
        let stored = con_event::decode_stored(&value).map_err(|e| {
            unreadable(
                Some(seq),
                match e {
                    DecodeError::Truncated(len) => HeadDamage::Short(len),
                    other => HeadDamage::Decode(other),
                },
            )
        })?;
        let envelope = con_event::Envelope::decode_record(stored.record)
            .map_err(|e| unreadable(Some(seq), HeadDamage::Decode(e)))?;
        if envelope.seq != seq {
            return Err(unreadable(Some(seq), HeadDamage::SeqMismatch(envelope.seq)));
        }
        Ok(Head {
            seq,
            hash: stored.hash,
        })
    }

    /// Directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Random id of this log, fixed at creation; tags journal entries so logs
    /// of several conspiracies (or test runs) on one host stay apart.
    pub fn log_id(&self) -> Result<String, StoreError> {
        Ok(self
            .h()?
            .meta
            .get(META_LOG_ID)?
            .map(|v| hex::encode(&v))
            .unwrap_or_default())
    }

    /// Last durable (acknowledged) seq and hash.
    pub fn head(&self) -> Head {
        *lock(&self.durable)
    }

    pub(crate) fn set_durable(&self, head: Head) {
        *lock(&self.durable) = head;
    }

    /// The event at `seq`, if it is durable.
    pub fn get(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        self.raw(seq)?
            .map(|bytes| decode_record(Ok((seq, bytes))))
            .transpose()
    }

    /// Durable stored records (`record ‖ hash`) with seq ≥ `from`, in order.
    /// The primitive the event iterators decode; callers that forward records
    /// unchanged (the daemon answering a query) read each one only once.
    pub fn records_from(&self, from: u64) -> impl Iterator<Item = Result<Record, StoreError>> + '_ {
        let head = self.head().seq;
        let (range, closed) = match self.h() {
            Ok(h) => (Some(h.log.range(seq_key(from)..=seq_key(head))), None),
            Err(e) => (None, Some(Err(e))),
        };
        range
            .into_iter()
            .flatten()
            .map(|item| {
                let (k, v) = item?;
                Ok((key_seq(&k)?, v.to_vec()))
            })
            .chain(closed)
    }

    /// Durable records of one session with seq ≥ `from`, in seq order.
    pub fn session_records(
        &self,
        session: &SessionId,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<Record, StoreError>> + '_, StoreError> {
        self.catch_up_indexes()?;
        let prefix = session.0;
        Ok(self.indexed(
            self.h()?
                .by_session
                .range(session_key(session, from)..)
                .take_while(move |item| {
                    item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                }),
        ))
    }

    /// Durable records by or about one agent with seq ≥ `from`, in seq order.
    pub fn agent_records(
        &self,
        agent: &str,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<Record, StoreError>> + '_, StoreError> {
        self.catch_up_indexes()?;
        let mut prefix = agent.as_bytes().to_vec();
        prefix.push(0);
        Ok(self.indexed(
            self.h()?
                .by_agent
                .range(agent_key(agent, from)..)
                .take_while(move |item| {
                    item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                }),
        ))
    }

    /// Durable records by or about one agent, newest first: for questions
    /// about an agent's latest state (its last arrival of a task).
    pub fn agent_records_newest_first(
        &self,
        agent: &str,
    ) -> Result<impl Iterator<Item = Result<Record, StoreError>> + '_, StoreError> {
        self.catch_up_indexes()?;
        Ok(self.indexed(
            self.h()?
                .by_agent
                .range(agent_key(agent, 0)..=agent_key(agent, u64::MAX))
                .rev(),
        ))
    }

    /// The position the derived indexes reach, if they describe this log
    /// (the current layout, and the record at the watermark is still the
    /// one they were derived through); `None` if they must be rebuilt.
    /// Reads only.
    fn valid_index_watermark(&self) -> Result<Option<Head>, StoreError> {
        let h = self.h()?;
        let layout = h
            .meta
            .get(META_INDEX_LAYOUT)?
            .and_then(|v| Some(u32::from_be_bytes(v.as_ref().try_into().ok()?)));
        let through = h
            .meta
            .get(META_INDEXED_THROUGH)?
            .and_then(|v| Head::from_bytes(&v))
            .unwrap_or_default();
        if layout != Some(INDEX_LAYOUT) || !self.still_matches(through)? {
            return Ok(None);
        }
        Ok(Some(through))
    }

    /// Durable records of one session with seq in `from..=until`, in seq
    /// order, without deriving or writing anything (for a store opened for
    /// inspection): from the `by_session` index as far as it reaches, then
    /// from a scan of the log past it. A log whose indexes do not describe
    /// it is scanned whole.
    pub fn session_records_read_only(
        &self,
        session: &SessionId,
        from: u64,
        until: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let prefix = session.0;
        self.read_only(
            &self.h()?.by_session,
            &prefix,
            &session_key(session, from),
            from..=until,
            |event| event.envelope.session.as_ref() == Some(session),
        )
    }

    /// Durable records by or about one agent with seq in `from..=until`,
    /// in seq order, without deriving or writing anything: as
    /// [`Store::session_records_read_only`], with the `by_agent` index.
    pub fn agent_records_read_only(
        &self,
        agent: &str,
        from: u64,
        until: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let mut prefix = agent.as_bytes().to_vec();
        prefix.push(0);
        self.read_only(
            &self.h()?.by_agent,
            &prefix,
            &agent_key(agent, from),
            from..=until,
            |event| {
                event.envelope.actor.agent.as_deref() == Some(agent)
                    || event.payload.subject_agent() == Some(agent)
            },
        )
    }

    /// The records in `seqs` an index lists from `start` (keys with
    /// `prefix`), then those of the log past the index's watermark that
    /// `belongs` accepts.
    fn read_only(
        &self,
        index: &sled::Tree,
        prefix: &[u8],
        start: &[u8],
        seqs: std::ops::RangeInclusive<u64>,
        belongs: impl Fn(&Event) -> bool,
    ) -> Result<Vec<Record>, StoreError> {
        let (from, until) = (*seqs.start(), (*seqs.end()).min(self.head().seq));
        let through = match self.valid_index_watermark()? {
            Some(through) => through.seq.min(until),
            None => 0,
        };
        let mut out = Vec::new();
        if through >= from {
            for item in index.range(start..) {
                let (key, _) = item?;
                if !key.starts_with(prefix) {
                    break;
                }
                let seq = index_key_seq(&key)?;
                if seq > through {
                    break;
                }
                if let Some(bytes) = self.raw(seq)? {
                    out.push((seq, bytes));
                }
            }
        }
        for record in self.records_from(from.max(through + 1)) {
            let (seq, bytes) = record?;
            if seq > until {
                break;
            }
            let event =
                Event::from_stored(&bytes).map_err(|cause| StoreError::Decode { seq, cause })?;
            if belongs(&event) {
                out.push((seq, bytes));
            }
        }
        Ok(out)
    }

    /// Durable records whose payload references the blob `digest`, in seq
    /// order: who may read a blob follows from who may read these.
    pub fn blob_referrers(
        &self,
        digest: &Digest,
    ) -> Result<impl Iterator<Item = Result<Record, StoreError>> + '_, StoreError> {
        self.catch_up_indexes()?;
        let prefix = digest.0;
        Ok(self.indexed(
            self.h()?
                .by_blob
                .range(blob_key(digest, 0)..)
                .take_while(move |item| {
                    item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                }),
        ))
    }

    /// Every record physically in the log, under the seq it is stored at,
    /// whatever the head says: for checks that must see a damaged log as
    /// it is (a record past the head, a gap, a record under another seq).
    pub fn stored_records(&self) -> impl Iterator<Item = Result<Record, StoreError>> + '_ {
        let (all, closed) = match self.h() {
            Ok(h) => (Some(h.log.iter()), None),
            Err(e) => (None, Some(Err(e))),
        };
        all.into_iter()
            .flatten()
            .map(|item| {
                let (k, v) = item?;
                Ok((key_seq(&k)?, v.to_vec()))
            })
            .chain(closed)
    }

    /// Durable events with seq ≥ `from`, in order.
    pub fn events_from(&self, from: u64) -> impl Iterator<Item = Result<Event, StoreError>> + '_ {
        self.records_from(from).map(decode_record)
    }

    /// Events of one session with seq ≥ `from`, in seq order.
    pub fn session_events(
        &self,
        session: &SessionId,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<Event, StoreError>> + '_, StoreError> {
        Ok(self.session_records(session, from)?.map(decode_record))
    }

    /// Events by or about one agent with seq ≥ `from`, in seq order.
    pub fn agent_events(
        &self,
        agent: &str,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<Event, StoreError>> + '_, StoreError> {
        Ok(self.agent_records(agent, from)?.map(decode_record))
    }

    /// The stored bytes (`record ‖ hash`) of a durable event.
    pub fn raw(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if seq > self.head().seq {
            return Ok(None);
        }
        Ok(self.h()?.log.get(seq_key(seq))?.map(|v| v.to_vec()))
    }

    fn indexed(
        &self,
        keys: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 'static,
    ) -> impl Iterator<Item = Result<Record, StoreError>> + '_ {
        keys.filter_map(move |item| {
            let seq = match item
                .map_err(StoreError::from)
                .and_then(|(k, _)| index_key_seq(&k))
            {
                Ok(seq) => seq,
                Err(e) => return Some(Err(e)),
            };
            self.raw(seq)
                .map(|raw| raw.map(|bytes| (seq, bytes)))
                .transpose()
        })
    }

    /// Content of a blob.
    pub fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.h()?.blobs.get(digest.0)?.map(|v| v.to_vec()))
    }

    /// Stores `bytes` content-addressed (idempotent). Durable with the next
    /// flush, i.e. no later than the event that references it.
    pub(crate) fn put_blob(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let digest = Digest::of(bytes);
        let h = self.h()?;
        if !h.blobs.contains_key(digest.0)? {
            h.blobs.insert(digest.0, bytes)?;
        }
        Ok(())
    }

    fn index_event(h: &Handles, event: &Event) -> Result<(), StoreError> {
        let seq = event.seq();
        if let Some(s) = &event.envelope.session {
            h.by_session.insert(session_key(s, seq), &[])?;
        }
        let actor = event.envelope.actor.agent.as_deref();
        let subject = event.payload.subject_agent();
        if let Some(a) = actor {
            h.by_agent.insert(agent_key(a, seq), &[])?;
        }
        if let Some(s) = subject.filter(|s| Some(*s) != actor) {
            h.by_agent.insert(agent_key(s, seq), &[])?;
        }
        for blob in event.payload.blob_refs() {
            h.by_blob.insert(blob_key(&blob.digest, seq), &[])?;
        }
        Ok(())
    }

    /// The stored hash of `seq`, if that record exists and is readable.
    fn hash_at(&self, seq: u64) -> Result<Option<Digest>, StoreError> {
        Ok(self
            .h()?
            .log
            .get(seq_key(seq))?
            .and_then(|v| con_event::decode_stored(&v).ok().map(|s| s.hash)))
    }

    /// Removes every record after `seq` and flushes: the writer's cut back
    /// to the durable head after a failed batch (those records were never
    /// acknowledged nor visible).
    pub(crate) fn remove_after(&self, seq: u64) -> Result<(), StoreError> {
        let h = self.h()?;
        let Some(next) = seq.checked_add(1) else {
            return Ok(());
        };
        for item in h.log.range(seq_key(next)..) {
            let (key, _) = item?;
            h.log.remove(key)?;
        }
        h.db.flush()?;
        Ok(())
    }

    /// Whether `position` still describes this log (same record at that seq).
    fn still_matches(&self, position: Head) -> Result<bool, StoreError> {
        if position.seq == 0 {
            return Ok(true);
        }
        Ok(position.seq <= self.head().seq && self.hash_at(position.seq)? == Some(position.hash))
    }

    /// Derives index entries for every durable event after the watermark.
    /// Idempotent and safe to call concurrently with the writer; a crash
    /// between an event and its index entries only means they are derived
    /// again next time.
    pub fn catch_up_indexes(&self) -> Result<(), StoreError> {
        let _guard = lock(&self.index_lock);
        let h = self.h()?;
        let through = match self.valid_index_watermark()? {
            Some(through) => through,
            None => {
                // The log was replaced or cut back under the indexes, or
                // they were built by a build that kept fewer of them.
                h.by_session.clear()?;
                h.by_agent.clear()?;
                h.by_blob.clear()?;
                h.meta
                    .insert(META_INDEX_LAYOUT, INDEX_LAYOUT.to_be_bytes().as_slice())?;
                Head::default()
            }
        };
        let head = self.head();
        if head.seq <= through.seq {
            return Ok(());
        }
        for event in self.events_from(through.seq + 1) {
            Self::index_event(&h, &event?)?;
        }
        h.meta
            .insert(META_INDEXED_THROUGH, head.to_bytes().as_slice())?;
        Ok(())
    }

    /// A follower's named position (e.g. how far the journal mirror got).
    /// Followers are at-least-once: a marker is advisory and may lag.
    pub fn marker(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .h()?
            .meta
            .get(format!("marker/{name}"))?
            .and_then(|v| key_seq(&v).ok())
            .unwrap_or(0))
    }

    /// Records a follower's position; durable with the writer's next flush.
    pub fn set_marker(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        self.h()?
            .meta
            .insert(format!("marker/{name}"), seq_key(seq).as_slice())?;
        Ok(())
    }

    /// Flushes everything written so far to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.h()?.db.flush()?;
        Ok(())
    }

    /// Raw access to the log tree for tests that corrupt records on purpose.
    /// Panics while the store is being reopened.
    #[doc(hidden)]
    #[allow(clippy::expect_used)]
    pub fn raw_log(&self) -> sled::Tree {
        self.h().expect("the store is open").log.clone()
    }

    /// Raw access to the blob tree for tests that corrupt contents on purpose.
    /// Panics while the store is being reopened.
    #[doc(hidden)]
    #[allow(clippy::expect_used)]
    pub fn raw_blobs(&self) -> sled::Tree {
        self.h().expect("the store is open").blobs.clone()
    }
}

/// Drops `old` on a thread of its own (see [`Store::reopen`]); if no
/// thread can be started it is leaked rather than risk blocking here.
fn release_elsewhere(old: Arc<Handles>) {
    let slot = Arc::new(Mutex::new(Some(old)));
    let theirs = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("con-log-release".into())
        .spawn(move || drop(lock(&theirs).take()));
    if spawned.is_err()
        && let Some(old) = lock(&slot).take()
    {
        std::mem::forget(old);
    }
}
