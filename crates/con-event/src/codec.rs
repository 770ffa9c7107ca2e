//! The one binary codec used for everything that is stored or hashed:
//! bincode 1.3.3, fixed-width little-endian integers, no trailing bytes.

use bincode::Options;
use serde::{Serialize, de::DeserializeOwned};

/// Largest encoded record (envelope with payload). Events carry references;
/// large contents go to blobs. The same bound on decode keeps hostile or
/// corrupt bytes from making the decoder allocate without limit.
pub const MAX_RECORD_BYTES: u64 = 1024 * 1024;

/// Why a value could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// Larger than the limit for its kind of value.
    #[error("encoded size exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// bincode refused the value (a type that cannot be encoded).
    #[error("cannot encode: {0}")]
    Codec(String),
}

/// Why stored bytes could not be turned back into an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than its fixed parts.
    #[error("record truncated: {0} bytes")]
    Truncated(usize),
    /// The leading format byte is not one this build knows.
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    /// The kind id is not in the registry (never reused, so this is corruption
    /// or a newer writer).
    #[error("unknown event kind id {0}")]
    UnknownKind(u16),
    /// The kind is known but this version of it is not.
    #[error("event kind {kind} has no version {version}")]
    UnknownVersion {
        /// Kind name.
        kind: &'static str,
        /// Version found in the envelope.
        version: u16,
    },
    /// bincode rejected the bytes (including trailing bytes).
    #[error("{what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// bincode's reason.
        reason: String,
    },
}

// Fixed-width little-endian integers, and every byte must be consumed: an
// accidentally appended field must fail loudly instead of decoding as garbage.
fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(limit)
}

/// Encodes a record part with the frozen codec (fixint, little-endian),
/// refusing anything over [`MAX_RECORD_BYTES`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    encode_with_limit(value, MAX_RECORD_BYTES)
}

/// [`encode`] with another size limit (projection state, which can be large).
pub fn encode_with_limit<T: Serialize>(value: &T, limit: u64) -> Result<Vec<u8>, EncodeError> {
    options(limit).serialize(value).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => EncodeError::TooLarge { limit },
        other => EncodeError::Codec(other.to_string()),
    })
}

/// Decodes a record part with the frozen codec; all bytes must be consumed.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    decode_with_limit(what, bytes, MAX_RECORD_BYTES)
}

/// [`decode`] with another size limit.
pub fn decode_with_limit<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    limit: u64,
) -> Result<T, DecodeError> {
    options(limit)
        .deserialize(bytes)
        .map_err(|e| DecodeError::Malformed {
            what,
            reason: e.to_string(),
        })
}
