//! The frozen envelope, the stored record layout and the hash chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::codec::{self, DecodeError, EncodeError};
use crate::ids::{Digest, EventId, SessionId};
use crate::kinds::Payload;

/// Leading byte of every stored record. A new envelope layout gets a new
/// format byte; records of older formats stay readable.
pub const FORMAT_V1: u8 = 1;

const HASH_LEN: usize = 32;

/// Who appended an event, as the kernel identified them (`SO_PEERCRED`, or
/// the daemon's own uid) — never as a payload claims.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// Linux uid of the appending process.
    pub uid: u32,
    /// Agent name when the uid belongs to an agent user.
    pub agent: Option<String>,
}

impl Actor {
    /// The daemon itself (root, no agent).
    pub fn system() -> Self {
        Self {
            uid: 0,
            agent: None,
        }
    }
}

/// The frozen envelope of format 1.
///
/// Never add, remove or reorder fields: bincode is not self-describing, so any
/// change would silently misread old records. Evolve payloads by kind version
/// instead, or introduce a new format byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Gap-free position in the log, starting at 1.
    pub seq: u64,
    /// Unique id of this event.
    pub id: EventId,
    /// Wall-clock time the writer assigned, nanoseconds since the Unix epoch.
    pub ts_unix_nanos: i64,
    /// Kernel-verified author.
    pub actor: Actor,
    /// Session this event belongs to, if any.
    pub session: Option<SessionId>,
    /// Task this event concerns, if any.
    pub task: Option<String>,
    /// Seq of the event that caused this one, if any.
    pub causation: Option<u64>,
    /// Stable numeric kind id ([`crate::KindSpec::id`]).
    pub kind: u16,
    /// Version of the payload layout for this kind.
    pub kind_version: u16,
    /// bincode of the payload struct for (`kind`, `kind_version`).
    pub payload: Vec<u8>,
    /// Hash of the previous record (all zeroes for seq 1).
    pub prev_hash: Digest,
}

impl Envelope {
    /// `FORMAT_V1 ‖ bincode(self)`: the canonical bytes that are hashed.
    pub fn encode_record(&self) -> Result<Vec<u8>, EncodeError> {
        let body = codec::encode(self)?;
        let mut record = Vec::with_capacity(1 + body.len());
        record.push(FORMAT_V1);
        record.extend_from_slice(&body);
        Ok(record)
    }

    /// Inverse of [`Envelope::encode_record`].
    pub fn decode_record(record: &[u8]) -> Result<Self, DecodeError> {
        match record.split_first() {
            None => Err(DecodeError::Truncated(0)),
            Some((&FORMAT_V1, body)) => codec::decode("envelope", body),
            Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
        }
    }
}

/// `SHA-256(prev_hash ‖ record)`: the link of the hash chain.
pub fn chain_hash(prev: &Digest, record: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(prev.0);
    h.update(record);
    Digest(h.finalize().into())
}

/// Stored value layout: `record ‖ hash`.
pub fn encode_stored(record: &[u8], hash: &Digest) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + HASH_LEN);
    out.extend_from_slice(record);
    out.extend_from_slice(&hash.0);
    out
}

/// A stored value split into its record bytes and the hash stored with it.
#[derive(Clone, Copy, Debug)]
pub struct StoredEvent<'a> {
    /// The canonical record bytes.
    pub record: &'a [u8],
    /// The chain hash the writer stored with it.
    pub hash: Digest,
}

/// Splits a stored value; does not decode or check anything else.
pub fn decode_stored(value: &[u8]) -> Result<StoredEvent<'_>, DecodeError> {
    if value.len() < HASH_LEN + 1 {
        return Err(DecodeError::Truncated(value.len()));
    }
    let (record, hash) = value.split_at(value.len() - HASH_LEN);
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(hash);
    Ok(StoredEvent {
        record,
        hash: Digest(h),
    })
}

/// What a writer is asked to append; the writer fills in seq, id, time and
/// the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Kernel-verified author (the writer's caller is responsible for it).
    pub actor: Actor,
    /// Session, if any.
    pub session: Option<SessionId>,
    /// Task, if any.
    pub task: Option<String>,
    /// Causing event's seq, if any.
    pub causation: Option<u64>,
    /// The typed payload; encoded at the kind's current version.
    pub payload: Payload,
    /// Contents referenced by [`crate::BlobRef`]s in the payload. Stored
    /// content-addressed before the event is committed.
    pub attachments: Vec<Vec<u8>>,
}

impl NewEvent {
    /// A system event with no correlation and no attachments.
    pub fn system(payload: impl Into<Payload>) -> Self {
        Self {
            actor: Actor::system(),
            session: None,
            task: None,
            causation: None,
            payload: payload.into(),
            attachments: Vec::new(),
        }
    }
}

/// A decoded, typed event as read back from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The envelope with its raw payload bytes.
    pub envelope: Envelope,
    /// The payload, upcast to the kind's current version.
    pub payload: Payload,
    /// The chain hash stored with the record.
    pub hash: Digest,
}

impl Event {
    /// Decodes a stored value (record ‖ hash). Does not check the chain.
    pub fn from_stored(value: &[u8]) -> Result<Self, DecodeError> {
        let stored = decode_stored(value)?;
        let envelope = Envelope::decode_record(stored.record)?;
        let payload = Payload::decode(envelope.kind, envelope.kind_version, &envelope.payload)?;
        Ok(Self {
            envelope,
            payload,
            hash: stored.hash,
        })
    }

    /// Seq of this event.
    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }
}
