//! The event log against its journal copy: each record's hash against the
//! journal's, records missing from either side, and the log against the
//! `chain.checkpoint` entries, with each difference named by kind and seq.

use std::collections::{BTreeMap, BTreeSet};

use con_event::{Digest, Envelope, Event, Payload, chain_hash, decode_stored};

/// One record as the log holds it.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// The seq it is stored under (the database key; through the daemon,
    /// the seq the record claims).
    pub key: u64,
    /// The stored bytes, `record ‖ hash`.
    pub stored: Vec<u8>,
}

/// What kind of difference a [`Finding`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FindingKind {
    /// A record whose content no longer matches its hash, or whose hash
    /// was recomputed so that the next record no longer links to it.
    ModifiedEvent,
    /// A seq the journal has and the log lacks, below the log's head.
    DeletedEvent,
    /// A record stored under another seq than its own.
    ReorderedEvents,
    /// The log ends before the journal's records or checkpoints do.
    TruncatedTail,
    /// An attachment whose content no longer hashes to its digest.
    ModifiedBlob,
    /// An attachment the log references and no longer holds, which the
    /// journal has.
    MissingBlob,
    /// From this seq on the log's records differ from the journal's (or
    /// from a checkpoint) while still chaining: hashes recomputed.
    RewrittenTail,
    /// The log differs from the journal's from its first record, or is
    /// another log than the one expected: a replaced database.
    ReplacedDatabase,
    /// A record that broke the chain where the journal has neither side to
    /// tell more.
    BrokenChain,
    /// Records the journal lacks (never mirrored, lost by journald, or not
    /// mirrored yet).
    MissingFromJournal,
}

impl FindingKind {
    /// The spelling in text and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModifiedEvent => "modified_event",
            Self::DeletedEvent => "deleted_event",
            Self::ReorderedEvents => "reordered_events",
            Self::TruncatedTail => "truncated_tail",
            Self::ModifiedBlob => "modified_blob",
            Self::MissingBlob => "missing_blob",
            Self::RewrittenTail => "rewritten_tail",
            Self::ReplacedDatabase => "replaced_database",
            Self::BrokenChain => "broken_chain",
            Self::MissingFromJournal => "missing_from_journal",
        }
    }
}

/// One difference between the log and the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The first seq it concerns.
    pub seq: u64,
    /// Through which seq, for a range (records missing from the journal).
    pub through_seq: u64,
    /// One line saying what differs.
    pub detail: String,
}

/// What [`cross_check`] found.
#[derive(Clone, Debug, Default)]
pub struct CrossCheck {
    /// Records in the log.
    pub log_records: u64,
    /// Records of the log in the journal.
    pub journal_records: u64,
    /// Records whose hash the journal confirms.
    pub matching: u64,
    /// `chain.checkpoint` entries in the journal.
    pub checkpoints: u64,
    /// Of them, those the log agrees with.
    pub checkpoints_matching: u64,
    /// Everything that differs, in seq order.
    pub findings: Vec<Finding>,
}

struct Decoded {
    envelope: Envelope,
    hash: Digest,
    /// The record hashes (with its own `prev_hash`) to its stored hash.
    self_consistent: bool,
}

fn finding(kind: FindingKind, seq: u64, detail: String) -> Finding {
    Finding {
        kind,
        seq,
        through_seq: seq,
        detail,
    }
}

/// Compares `log` (in key order) with `journal` (the same log's events as
/// rebuilt from the journal, each already checked against its own hash, in
/// seq order) and the checkpoints among them. `log_blobs` holds, for each
/// digest the log's events reference, the log's content (`None`: not
/// there); `journal_blobs` the journal's contents.
pub fn cross_check(
    log: &[LogRecord],
    journal: &[Event],
    log_blobs: &BTreeMap<Digest, Option<Vec<u8>>>,
    journal_blobs: &BTreeMap<Digest, Vec<u8>>,
) -> CrossCheck {
    let mut out = CrossCheck {
        log_records: log.len() as u64,
        journal_records: journal.len() as u64,
        ..CrossCheck::default()
    };
    let j: BTreeMap<u64, &Event> = journal.iter().map(|e| (e.seq(), e)).collect();
    let mut decoded: BTreeMap<u64, Decoded> = BTreeMap::new();
    let mut findings = Vec::new();
    for r in log {
        let stored = match decode_stored(&r.stored) {
            Ok(s) => s,
            Err(e) => {
                findings.push(finding(
                    FindingKind::ModifiedEvent,
                    r.key,
                    format!("undecodable record: {e}"),
                ));
                continue;
            }
        };
        let envelope = match Envelope::decode_record(stored.record) {
            Ok(env) => env,
            Err(e) => {
                findings.push(finding(
                    FindingKind::ModifiedEvent,
                    r.key,
                    format!("undecodable envelope: {e}"),
                ));
                continue;
            }
        };
        let self_consistent = chain_hash(&envelope.prev_hash, stored.record) == stored.hash;
        decoded.insert(
            r.key,
            Decoded {
                envelope,
                hash: stored.hash,
                self_consistent,
            },
        );
    }

    // Record by record.
    let mut divergent = Vec::new();
    let mut not_mirrored: Vec<u64> = Vec::new();
    let mut prev: Option<(u64, Digest)> = None;
    for (&key, d) in &decoded {
        let linked = match prev {
            Some((pk, ph)) => pk + 1 == key && d.envelope.prev_hash == ph,
            None => key == 1 && d.envelope.prev_hash == Digest::default(),
        };
        prev = Some((key, d.hash));
        if d.envelope.seq != key {
            let what = match j.get(&d.envelope.seq) {
                Some(e) if e.hash == d.hash => "the journal has it there",
                _ => "not as the journal has it",
            };
            findings.push(finding(
                FindingKind::ReorderedEvents,
                key,
                format!(
                    "seq {key} holds the record of seq {} ({what})",
                    d.envelope.seq
                ),
            ));
            continue;
        }
        if !d.self_consistent {
            let journal = match j.get(&key) {
                Some(e) if e.hash == d.hash => "; the journal has the original",
                Some(_) => "; the journal's copy differs",
                None => "",
            };
            findings.push(finding(
                FindingKind::ModifiedEvent,
                key,
                format!("its content does not match its hash {}{journal}", d.hash),
            ));
            continue;
        }
        match j.get(&key) {
            Some(e) if e.hash == d.hash => out.matching += 1,
            Some(e) => divergent.push((key, e.hash)),
            None => {
                not_mirrored.push(key);
                if !linked && key > 1 && decoded.contains_key(&(key - 1)) {
                    findings.push(finding(
                        FindingKind::BrokenChain,
                        key,
                        format!(
                            "its prev_hash {} is not the hash of seq {}",
                            d.envelope.prev_hash,
                            key - 1
                        ),
                    ));
                }
            }
        }
    }

    // Differences that still chain are a rewrite; others are edits with
    // their own hash recomputed.
    if let Some(&(first, journal_hash)) = divergent.first() {
        let linked_from_first = if first == 1 {
            decoded
                .get(&1)
                .is_some_and(|d| d.envelope.prev_hash == Digest::default())
                && chains_on_from(&decoded, 2)
        } else {
            chains_on_from(&decoded, first)
        };
        let log_hash = decoded.get(&first).map(|d| d.hash).unwrap_or_default();
        if linked_from_first && first == 1 {
            findings.push(finding(
                FindingKind::ReplacedDatabase,
                1,
                format!(
                    "the log's seq 1 is not the journal's ({log_hash}, journal {journal_hash}): \
                     another log under this log id"
                ),
            ));
        } else if linked_from_first {
            findings.push(finding(
                FindingKind::RewrittenTail,
                first,
                format!(
                    "from seq {first} on the log's records differ from the journal's \
                     ({log_hash}, journal {journal_hash}) and their hashes were recomputed \
                     to chain"
                ),
            ));
        } else {
            for (key, journal_hash) in &divergent {
                let log_hash = decoded.get(key).map(|d| d.hash).unwrap_or_default();
                findings.push(finding(
                    FindingKind::ModifiedEvent,
                    *key,
                    format!(
                        "its record differs from the journal's and its hash was recomputed \
                         ({log_hash}, journal {journal_hash})"
                    ),
                ));
            }
        }
    }

    // What the journal has and the log lacks.
    let log_end = decoded.keys().next_back().copied().unwrap_or(0);
    let stored_keys: BTreeSet<u64> = log.iter().map(|r| r.key).collect();
    for &seq in j.keys() {
        if seq <= log_end && !stored_keys.contains(&seq) {
            findings.push(finding(
                FindingKind::DeletedEvent,
                seq,
                format!("seq {seq} is in the journal, not in the log"),
            ));
        }
    }
    let journal_end = j.keys().next_back().copied().unwrap_or(0);
    let mut truncated_to = (journal_end > log_end).then_some(journal_end);

    // The checkpoints.
    let mut last_good_checkpoint = 0;
    let mut rewritten_reported = findings.iter().any(|f| {
        matches!(
            f.kind,
            FindingKind::RewrittenTail | FindingKind::ReplacedDatabase
        )
    });
    for e in journal {
        let Payload::ChainCheckpoint(c) = &e.payload else {
            continue;
        };
        out.checkpoints += 1;
        match decoded.get(&c.through_seq) {
            Some(d) if d.hash == c.head && d.envelope.seq == c.through_seq => {
                out.checkpoints_matching += 1;
                last_good_checkpoint = last_good_checkpoint.max(c.through_seq);
            }
            Some(d) if !rewritten_reported => {
                rewritten_reported = true;
                let kind = if last_good_checkpoint == 0 && c.through_seq == 1 {
                    FindingKind::ReplacedDatabase
                } else {
                    FindingKind::RewrittenTail
                };
                findings.push(finding(
                    kind,
                    last_good_checkpoint + 1,
                    format!(
                        "the log's hash at seq {} is {}, the checkpoint at seq {} says {}: \
                         rewritten after seq {last_good_checkpoint}",
                        c.through_seq,
                        d.hash,
                        e.seq(),
                        c.head
                    ),
                ));
            }
            Some(_) => {}
            None if c.through_seq > log_end => {
                truncated_to = truncated_to.max(Some(c.through_seq));
            }
            None => {}
        }
    }
    if let Some(to) = truncated_to {
        findings.push(finding(
            FindingKind::TruncatedTail,
            log_end + 1,
            format!(
                "the log ends at seq {log_end}; the journal has records or checkpoints \
                 through seq {to}"
            ),
        ));
    }

    // Attachments.
    let mut first_ref: BTreeMap<Digest, u64> = BTreeMap::new();
    for (&key, d) in &decoded {
        if !d.self_consistent {
            continue;
        }
        let env = &d.envelope;
        if let Ok(payload) = Payload::decode(env.kind, env.kind_version, &env.payload) {
            for r in payload.blob_refs() {
                first_ref.entry(r.digest).or_insert(key);
            }
        }
    }
    for (digest, seq) in first_ref {
        let in_journal = journal_blobs.contains_key(&digest);
        match log_blobs.get(&digest) {
            Some(Some(content)) => {
                let computed = Digest::of(content);
                if computed != digest {
                    let journal = if in_journal {
                        "; the journal has the original"
                    } else {
                        ""
                    };
                    findings.push(finding(
                        FindingKind::ModifiedBlob,
                        seq,
                        format!(
                            "attachment sha256:{digest} (first referenced at seq {seq}) \
                             hashes to {computed}{journal}"
                        ),
                    ));
                }
            }
            Some(None) if in_journal => findings.push(finding(
                FindingKind::MissingBlob,
                seq,
                format!(
                    "attachment sha256:{digest} (first referenced at seq {seq}) is not in \
                     the log; the journal has it"
                ),
            )),
            _ => {}
        }
    }

    // Records the journal lacks, as ranges.
    for (start, end) in ranges(&not_mirrored) {
        findings.push(Finding {
            kind: FindingKind::MissingFromJournal,
            seq: start,
            through_seq: end,
            detail: if start == end {
                format!("seq {start} is not in the journal")
            } else {
                format!("seqs {start}–{end} are not in the journal")
            },
        });
    }
    findings.sort_by_key(|f| (f.seq, f.kind));
    out.findings = findings;
    out
}

/// Whether every record from `first` on links to the one before it.
fn chains_on_from(decoded: &BTreeMap<u64, Decoded>, first: u64) -> bool {
    let mut prev = match decoded.get(&(first - 1)) {
        Some(p) => (first - 1, p.hash),
        None => return false,
    };
    for (&k, d) in decoded.range(first..) {
        if prev.0 + 1 != k || d.envelope.prev_hash != prev.1 {
            return false;
        }
        prev = (k, d.hash);
    }
    true
}

/// Consecutive runs of `seqs` (sorted).
fn ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == s => *end = s,
            _ => out.push((s, s)),
        }
    }
    out
}
