//! The con event schema.
//!
//! Every state change in con is an [`Event`]: a frozen [`Envelope`] (sequence
//! number, identity, time, actor, correlation) around a typed [`Payload`]. Each
//! payload type is one *kind* with a stable numeric id and a version
//! ([`KindSpec`]); the registry [`KINDS`] is the single place that says what a
//! kind is called, which journald `MESSAGE_ID` and priority it has and what its
//! catalog entry explains.
//!
//! Stored bytes are `record ‖ hash`, where `record = FORMAT_V1 ‖ bincode(envelope)`
//! and `hash = SHA-256(prev_hash ‖ record)` ([`chain_hash`]). Old payload versions
//! stay decodable: they are upcast to the current version on read.
//!
//! This crate does no IO.

pub mod codec;
mod envelope;
mod ids;
pub mod json;
mod kinds;
pub mod payloads;
mod text;

pub use codec::{DecodeError, EncodeError, MAX_RECORD_BYTES};
pub use envelope::{
    Actor, Envelope, Event, FORMAT_V1, NewEvent, StoredEvent, chain_hash, decode_stored,
    encode_stored,
};
pub use ids::{BlobRef, Digest, EventId, SessionId};
pub use json::{EventJson, JsonViewError};
pub use kinds::{Authority, KINDS, KindSpec, Payload, Priority, kind_by_id, kind_by_name};
pub use text::escape_control;
