//! Identifiers and digests that appear in events.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Serde for fixed-size byte ids: lowercase hex in human-readable formats
/// (the JSON view, journal fields), and exactly what `[u8; N]` serializes to
/// in binary ones, so the frozen bincode of stored records is unchanged.
macro_rules! hex_or_bytes_serde {
    ($name:ident, $len:literal) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&hex::encode(self.0))
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    let mut out = [0u8; $len];
                    hex::decode_to_slice(text.as_bytes(), &mut out).map_err(|_| {
                        serde::de::Error::custom(format!(
                            concat!(
                                "expected ",
                                stringify!($len),
                                " bytes as {} lowercase hex digits, got {:?}"
                            ),
                            $len * 2,
                            text
                        ))
                    })?;
                    Ok(Self(out))
                } else {
                    <[u8; $len]>::deserialize(d).map(Self)
                }
            }
        }
    };
}

/// A SHA-256 digest. Displayed (and written in JSON) as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

hex_or_bytes_serde!(Digest, 32);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// A reference to a content-addressed blob: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the content; also the blob's key in the store.
    pub digest: Digest,
    /// Length of the content in bytes.
    pub len: u64,
}

impl BlobRef {
    /// The reference for `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            digest: Digest::of(bytes),
            len: bytes.len() as u64,
        }
    }
}

impl fmt::Debug for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobRef({}, {} bytes)", self.digest.to_hex(), self.len)
    }
}

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; 16]);

        hex_or_bytes_serde!($name, 16);

        impl $name {
            /// Parses 32 hex digits, with or without UUID hyphens.
            pub fn from_hex(s: &str) -> Option<Self> {
                let compact: String = s.chars().filter(|c| *c != '-').collect();
                let mut out = [0u8; 16];
                hex::decode_to_slice(compact, &mut out).ok()?;
                Some(Self(out))
            }

            /// 32 lowercase hex digits (journald's 128-bit id format).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }
    };
}

id128!(
    /// Globally unique id of one event, assigned by the writer: a random
    /// per-writer-start half and the seq.
    EventId
);
id128!(
    /// Id of one agent session (one task processed by one run).
    SessionId
);
