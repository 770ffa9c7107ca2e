//! Walking the hash chain.

use std::sync::mpsc;

use con_event::{Digest, Envelope, Payload, chain_hash, decode_stored};
use sled::IVec;

use crate::{Head, Store, StoreError, key_seq, seq_key};

/// Seqs per chunk of the log read ahead by the reader threads.
const CHUNK_SEQS: u64 = 4096;

/// Chunks a reader may have read ahead of the walk.
const READ_AHEAD: usize = 2;

type Item = sled::Result<(IVec, IVec)>;

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
    ///
    /// Reading the records out of sled costs more than checking them, so
    /// reader threads read the log ahead in chunks of consecutive keys
    /// while this thread checks them in key order, exactly as one pass
    /// would (see [`ordered_records`]).
    pub fn verify(&self) -> Result<Result<VerifyReport, ChainBreak>, StoreError> {
        let h = self.h()?;
        std::thread::scope(|scope| walk(ordered_records(&h.log, scope)))
    }
}

/// Every item of the log tree in key order, read by reader threads in
/// chunks of [`CHUNK_SEQS`] keys (chunk `c` by reader `c mod readers`,
/// each at most [`READ_AHEAD`] chunks ahead of the consumer). The first
/// chunk starts at the smallest key and the last is unbounded, so keys
/// of any length are in exactly one chunk and the concatenation is the
/// tree's own order. A log whose last key is not a seq is read by one
/// plain iterator.
fn ordered_records<'s>(
    log: &'s sled::Tree,
    scope: &'s std::thread::Scope<'s, '_>,
) -> Box<dyn Iterator<Item = Item> + 's> {
    let last = match log.last() {
        Ok(Some((key, _))) => key_seq(&key).ok(),
        _ => None,
    };
    let readers = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let (Some(last), true) = (last, readers > 1) else {
        return Box::new(log.iter());
    };
    let chunks = last / CHUNK_SEQS + 1;
    let bounds = move |c: u64| -> (Option<[u8; 8]>, Option<[u8; 8]>) {
        let lo = (c > 0).then(|| seq_key(c * CHUNK_SEQS));
        let hi = (c + 1 < chunks).then(|| seq_key((c + 1) * CHUNK_SEQS));
        (lo, hi)
    };
    let mut inboxes = Vec::new();
    for reader in 0..readers {
        let (tx, rx) = mpsc::sync_channel::<Vec<Item>>(READ_AHEAD);
        inboxes.push(rx);
        scope.spawn(move || {
            let mut c = reader as u64;
            while c < chunks {
                let range = match bounds(c) {
                    (None, None) => log.iter(),
                    (None, Some(hi)) => log.range(..hi),
                    (Some(lo), None) => log.range(lo..),
                    (Some(lo), Some(hi)) => log.range(lo..hi),
                };
                // The consumer stopped (a break was found): stop too.
                if tx.send(range.collect()).is_err() {
                    return;
                }
                c += readers as u64;
            }
        });
    }
    Box::new((0..chunks).flat_map(move |c| {
        // A reader that is gone has sent everything it had.
        inboxes[(c % readers as u64) as usize]
            .recv()
            .unwrap_or_default()
    }))
}

/// Checks the log's items in key order (see [`Store::verify`]).
fn walk(items: impl Iterator<Item = Item>) -> Result<Result<VerifyReport, ChainBreak>, StoreError> {
    let mut good = Head::default();
    for item in items {
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
        if let Err(e) = Payload::decode(envelope.kind, envelope.kind_version, &envelope.payload) {
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
