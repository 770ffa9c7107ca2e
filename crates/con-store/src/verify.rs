//! Walking the hash chain.

use con_event::{Digest, Envelope, Payload, chain_hash, decode_stored};

use crate::{Head, Store, StoreError, key_seq};

/// A valid chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of events checked.
    pub events: u64,
    /// Last seq and its hash.
    pub head: Head,
}

/// The first place the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    /// First bad seq.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
    /// The last good position before it.
    pub last_good: Head,
}

impl Store {
    /// Walks every record physically in the log from seq 1 and checks: no gap,
    /// a well-formed key, it decodes, its envelope seq matches its key, its
    /// `prev_hash` is the previous record's hash, its stored hash is
    /// `SHA-256(prev ‖ record)`, and its payload decodes. Returns the first
    /// break. Only a failure to read the database at all is an `Err`.
    pub fn verify(&self) -> Result<Result<VerifyReport, ChainBreak>, StoreError> {
        let mut good = Head::default();
        for item in self.h()?.log.iter() {
            let (k, v) = item?;
            let expected = good.seq + 1;
            let fail = |seq: u64, reason: String| {
                Ok(Err(ChainBreak {
                    seq,
                    reason,
                    last_good: good,
                }))
            };
            let Ok(seq) = key_seq(&k) else {
                return fail(
                    expected,
                    format!(
                        "malformed key {} ({} bytes, not 8) where seq {expected} belongs",
                        hex::encode(&k),
                        k.len()
                    ),
                );
            };
            if seq != expected {
                return fail(expected, format!("missing (the next stored seq is {seq})"));
            }
            let stored = match decode_stored(&v) {
                Ok(s) => s,
                Err(e) => return fail(seq, format!("undecodable record: {e}")),
            };
            let envelope = match Envelope::decode_record(stored.record) {
                Ok(e) => e,
                Err(e) => return fail(seq, format!("undecodable envelope: {e}")),
            };
            if envelope.seq != seq {
                return fail(seq, format!("record claims seq {}", envelope.seq));
            }
            if envelope.prev_hash != good.hash {
                return fail(
                    seq,
                    format!(
                        "prev_hash {} is not the hash of seq {} ({})",
                        envelope.prev_hash, good.seq, good.hash
                    ),
                );
            }
            let computed: Digest = chain_hash(&good.hash, stored.record);
            if computed != stored.hash {
                return fail(
                    seq,
                    format!(
                        "content does not match its hash (stored {}, computed {computed})",
                        stored.hash
                    ),
                );
            }
            if let Err(e) = Payload::decode(envelope.kind, envelope.kind_version, &envelope.payload)
            {
                return fail(seq, format!("undecodable payload: {e}"));
            }
            good = Head {
                seq,
                hash: computed,
            };
        }
        Ok(Ok(VerifyReport {
            events: good.seq,
            head: good,
        }))
    }
}
