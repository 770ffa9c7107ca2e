//! The JSON view of an event: the one shape every reader outside the log
//! uses (`con logs --json`, the journal's `CON_PAYLOAD`, replay, dashboards).
//!
//! Field names are stable and documented in `docs/event-json.md`; digests,
//! hashes and ids are lowercase hex; enums use their canonical `as_str`
//! spellings. The view converts back to the exact stored event
//! ([`EventJson::to_event`]), so a copy of the log kept as JSON can still be
//! verified against the hash chain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, EncodeError};
use crate::envelope::{Actor, Envelope, Event, chain_hash};
use crate::ids::{Digest, EventId, SessionId};
use crate::kinds::{Payload, kind_by_name};

/// One event as JSON. Serialize with `serde_json`; [`EventJson::to_event`]
/// turns it back into the stored event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventJson {
    /// Position in the log.
    pub seq: u64,
    /// Event id (32 hex digits).
    pub id: EventId,
    /// Writer's wall-clock time, RFC 3339 UTC with nanoseconds (a
    /// convenience: `ts_unix_nanos` is the recorded value).
    pub time: String,
    /// Writer's wall-clock time, nanoseconds since the Unix epoch.
    pub ts_unix_nanos: i64,
    /// The kernel-verified author: `{"uid": …, "agent": … | null}`.
    pub actor: Actor,
    /// Session id (32 hex digits), if any.
    pub session: Option<SessionId>,
    /// Task id, if any.
    pub task: Option<String>,
    /// Seq of the causing event, if any.
    pub causation: Option<u64>,
    /// Dotted kind name (`tool.result`).
    pub kind: String,
    /// Version the payload was stored at.
    pub kind_version: u16,
    /// Version of the body in `payload` (the kind's current version: older
    /// stored versions are upcast).
    pub payload_version: u16,
    /// Human one-line description (the journal's `MESSAGE`).
    pub message: String,
    /// The payload at `payload_version`.
    pub payload: serde_json::Value,
    /// Hex of the stored payload bytes, present only when the payload was
    /// upcast (`kind_version` < `payload_version`): the upcast body alone
    /// cannot be re-encoded into the bytes that were hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_payload: Option<String>,
    /// Chain hash of this record (64 hex digits).
    pub hash: Digest,
    /// Chain hash of the previous record (zero for seq 1).
    pub prev_hash: Digest,
}

/// Why a JSON view could not be turned back into an event.
#[derive(Debug, thiserror::Error)]
pub enum JsonViewError {
    /// `kind` names no kind this build knows.
    #[error("seq {seq}: unknown event kind {kind:?}")]
    UnknownKind {
        /// Seq of the event.
        seq: u64,
        /// The name found.
        kind: String,
    },
    /// `payload` does not match the kind's current payload type.
    #[error("seq {seq}: payload of {kind}: {cause}")]
    Payload {
        /// Seq of the event.
        seq: u64,
        /// Kind name.
        kind: &'static str,
        /// serde's reason.
        cause: serde_json::Error,
    },
    /// `stored_payload` is not hex.
    #[error("seq {seq}: stored_payload is not hex")]
    StoredPayload {
        /// Seq of the event.
        seq: u64,
    },
    /// The payload could not be encoded.
    #[error("seq {seq}: {cause}")]
    Encode {
        /// Seq of the event.
        seq: u64,
        /// Why.
        cause: EncodeError,
    },
    /// The stored payload bytes do not decode.
    #[error("seq {seq}: {cause}")]
    Decode {
        /// Seq of the event.
        seq: u64,
        /// Why.
        cause: DecodeError,
    },
    /// The rebuilt record does not hash to `hash`: the view was edited, or
    /// describes another record.
    #[error("seq {seq}: content does not match its hash {hash}")]
    HashMismatch {
        /// Seq of the event.
        seq: u64,
        /// The hash the view claims.
        hash: Digest,
    },
}

/// The wall-clock time of a recorded timestamp (times before the epoch,
/// which the writer never assigns, read as the epoch).
pub fn recorded_time(ts_unix_nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ts_unix_nanos).unwrap_or(0))
}

impl EventJson {
    /// The view of `event`.
    pub fn from_event(event: &Event) -> Self {
        let env = &event.envelope;
        let spec = event.payload.spec();
        let upcast = env.kind_version != spec.version;
        Self {
            seq: env.seq,
            id: env.id,
            time: humantime::format_rfc3339_nanos(recorded_time(env.ts_unix_nanos)).to_string(),
            ts_unix_nanos: env.ts_unix_nanos,
            actor: env.actor.clone(),
            session: env.session,
            task: env.task.clone(),
            causation: env.causation,
            kind: spec.name.to_owned(),
            kind_version: env.kind_version,
            payload_version: spec.version,
            message: event.payload.message(),
            // Payload structs hold strings, numbers, options and hex ids
            // only: they always have a JSON form.
            payload: serde_json::to_value(&event.payload).unwrap_or(serde_json::Value::Null),
            stored_payload: upcast.then(|| hex::encode(&env.payload)),
            hash: event.hash,
            prev_hash: env.prev_hash,
        }
    }

    /// The stored event this view describes: same envelope, same payload
    /// bytes, and a record that hashes (with `prev_hash`) to `hash`.
    pub fn to_event(&self) -> Result<Event, JsonViewError> {
        let seq = self.seq;
        let spec = kind_by_name(&self.kind).ok_or_else(|| JsonViewError::UnknownKind {
            seq,
            kind: self.kind.clone(),
        })?;
        let payload_bytes = match &self.stored_payload {
            Some(hex_bytes) => {
                hex::decode(hex_bytes).map_err(|_| JsonViewError::StoredPayload { seq })?
            }
            None => Payload::from_json(spec, self.payload.clone())
                .map_err(|cause| JsonViewError::Payload {
                    seq,
                    kind: spec.name,
                    cause,
                })?
                .encode()
                .map_err(|cause| JsonViewError::Encode { seq, cause })?,
        };
        let envelope = Envelope {
            seq,
            id: self.id,
            ts_unix_nanos: self.ts_unix_nanos,
            actor: self.actor.clone(),
            session: self.session,
            task: self.task.clone(),
            causation: self.causation,
            kind: spec.id,
            kind_version: self.kind_version,
            payload: payload_bytes,
            prev_hash: self.prev_hash,
        };
        let payload = Payload::decode(spec.id, self.kind_version, &envelope.payload)
            .map_err(|cause| JsonViewError::Decode { seq, cause })?;
        let record = envelope
            .encode_record()
            .map_err(|cause| JsonViewError::Encode { seq, cause })?;
        if chain_hash(&self.prev_hash, &record) != self.hash {
            return Err(JsonViewError::HashMismatch {
                seq,
                hash: self.hash,
            });
        }
        Ok(Event {
            envelope,
            payload,
            hash: self.hash,
        })
    }
}
