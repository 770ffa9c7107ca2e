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
}

impl Store {
    /// Walks the whole log from seq 1 and checks, for every record: no gap,
    /// it decodes, its envelope seq matches its key, its `prev_hash` is the
    /// previous record's hash, and its stored hash is `SHA-256(prev ‖ record)`.
    /// Returns the first break.
    pub fn verify(&self) -> Result<Result<VerifyReport, ChainBreak>, StoreError> {
        let mut prev = Digest::default();
        let mut expected = 1u64;
        for item in self.log.iter() {
            let (k, v) = item?;
            let seq = key_seq(&k)?;
            let fail = |reason: String| Ok(Err(ChainBreak { seq, reason }));
            if seq != expected {
                return Ok(Err(ChainBreak {
                    seq: expected,
                    reason: format!("missing (the next stored seq is {seq})"),
                }));
            }
            let stored = match decode_stored(&v) {
                Ok(s) => s,
                Err(e) => return fail(format!("undecodable record: {e}")),
            };
            let envelope = match Envelope::decode_record(stored.record) {
                Ok(e) => e,
                Err(e) => return fail(format!("undecodable envelope: {e}")),
            };
            if envelope.seq != seq {
                return fail(format!("record claims seq {}", envelope.seq));
            }
            if envelope.prev_hash != prev {
                return fail(format!(
                    "prev_hash {} is not the hash of seq {} ({prev})",
                    envelope.prev_hash,
                    seq - 1
                ));
            }
            let computed = chain_hash(&prev, stored.record);
            if computed != stored.hash {
                return fail(format!(
                    "content does not match its hash (stored {}, computed {computed})",
                    stored.hash
                ));
            }
            if let Err(e) = Payload::decode(envelope.kind, envelope.kind_version, &envelope.payload)
            {
                return fail(format!("undecodable payload: {e}"));
            }
            prev = computed;
            expected += 1;
        }
        Ok(Ok(VerifyReport {
            events: expected - 1,
            head: Head {
                seq: expected - 1,
                hash: prev,
            },
        }))
    }
}
