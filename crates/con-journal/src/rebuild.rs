//! Rebuilding events and attachments from journal entries alone.

use std::collections::{BTreeMap, btree_map::Entry};
use std::io::BufRead;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use con_event::{DecodeError, Digest, Envelope, Event, Payload, chain_hash};
use con_store::{ChainBreak, Head, VerifyReport};

use crate::entry::{BLOB_MESSAGE_ID, field};
use crate::read::{ReadEntry, ReadError, read_export, read_json};

/// Why journal entries could not be rebuilt into events and attachments.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The input could not be read as journal entries.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A con entry whose field is missing or wrong.
    #[error("journal {at}: field {field}: {reason}")]
    Field {
        /// `cursor …` or `entry N`.
        at: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Two entries claim the same position with different contents.
    #[error("journal {at}: {reason}")]
    Conflict {
        /// `cursor …` or `entry N` of the later entry.
        at: String,
        /// What it contradicts.
        reason: String,
    },
    /// An attachment whose parts are all there but do not add up to its
    /// digest.
    #[error("attachment sha256:{digest}: {reason}")]
    Blob {
        /// The digest its entries claim.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
}

/// What a journal held: events per log and attachment contents.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Events per `CON_LOG_ID` (empty string for entries without one), one
    /// per seq, in seq order. Each one's record hashes to its `CON_HASH`.
    pub logs: BTreeMap<String, Vec<Event>>,
    /// Attachment contents by digest; each one hashes to its digest.
    pub blobs: BTreeMap<Digest, Vec<u8>>,
    /// Attachments of which only some parts were in the input (e.g. a time
    /// window that cut through them): digest, parts present, parts in all.
    pub incomplete_blobs: Vec<(Digest, u64, u64)>,
    /// Entries that repeated an event or attachment part already read (the
    /// mirror is at-least-once).
    pub repeats: u64,
    /// Entries that were not con records (other programs, or con entries
    /// written before entries carried `CON_RECORD`).
    pub other_entries: u64,
    /// Where each log's entries were written (keyed like
    /// [`Rebuilt::logs`]), as its entry of the lowest seq read says.
    pub hosts: BTreeMap<String, LogHost>,
    /// Events whose record is intact (it hashes to its `CON_HASH`) but whose
    /// kind or kind version this build does not know: written by a newer
    /// con. They are not in [`Rebuilt::logs`]; a reader that needs every
    /// event (a chain check) must refuse when one of its log is here.
    pub unknown: Vec<UnknownEvent>,
}

/// An intact event of a kind or version this build cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownEvent {
    /// Its `CON_LOG_ID`.
    pub log_id: String,
    /// Its seq.
    pub seq: u64,
    /// Why it cannot be read (the kind id, or the kind and its version).
    pub reason: String,
}

impl Rebuilt {
    /// The unknown events of `log_id`, as one line for a diagnostic, if
    /// there are any: how many, and the first.
    pub fn unknown_in(&self, log_id: &str) -> Option<String> {
        let mut of_log = self.unknown.iter().filter(|u| u.log_id == log_id);
        let first = of_log.next()?;
        let more = of_log.count();
        Some(format!(
            "{} event(s) of log {log_id} are of a kind or version this con does not know \
             (written by a newer con?), first seq {}: {}",
            more + 1,
            first.seq,
            first.reason
        ))
    }
}

/// Where a log's journal entries come from: the fields that tell hosts
/// apart in a journal holding several (a central `systemd-journal-remote`
/// directory, or one host's journal with several con instances).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogHost {
    /// `CON_SYSTEM`: `[system] name` of the con instance.
    pub system: Option<String>,
    /// `_HOSTNAME`: the machine's host name, as journald recorded it.
    pub hostname: Option<String>,
    /// `_MACHINE_ID`: the machine's id, as journald recorded it.
    pub machine_id: Option<String>,
}

impl LogHost {
    /// The fields of `entry` that say where it was written (values that
    /// are not UTF-8 are left out).
    pub fn of(entry: &ReadEntry) -> Self {
        let text = |name: &str| {
            entry
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Self {
            system: text("CON_SYSTEM"),
            hostname: text("_HOSTNAME"),
            machine_id: text("_MACHINE_ID"),
        }
    }

    /// One name for people: the con instance's name, else the host name,
    /// else the machine id; `-` if the entries carried none of them.
    pub fn name(&self) -> &str {
        self.system
            .as_deref()
            .or(self.hostname.as_deref())
            .or(self.machine_id.as_deref())
            .unwrap_or("-")
    }
}

impl Rebuilt {
    /// Digests the events of `log_id` reference that are not in
    /// [`Rebuilt::blobs`].
    pub fn missing_blobs(&self, log_id: &str) -> Vec<Digest> {
        let mut missing: Vec<Digest> = self
            .logs
            .get(log_id)
            .into_iter()
            .flatten()
            .flat_map(|e| e.payload.blob_refs())
            .map(|r| r.digest)
            .filter(|d| !self.blobs.contains_key(d))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }
}

/// One event as read, with where it came from (for conflict messages).
struct Read {
    event: Event,
    at: String,
}

#[derive(Default)]
struct PartialBlob {
    len: u64,
    parts: u64,
    have: BTreeMap<u64, Vec<u8>>,
    at: String,
}

/// Accumulates journal entries and rebuilds events and attachments from
/// them. Feed it every entry (any order, repeats allowed, non-con entries
/// ignored), then call [`Rebuilder::finish`].
///
/// An event is rebuilt from `CON_RECORD` (the stored record, base64) and
/// `CON_HASH`: the record must decode, hash with its own `prev_hash` to
/// `CON_HASH`, and carry the seq in `CON_SEQ`. Repeats are recognised by
/// `CON_LOG_ID` + `CON_SEQ`; a repeat with a different record is a
/// conflict. Attachments are reassembled from their `CON_BLOB_*` parts and
/// must hash to their digest.
#[derive(Default)]
pub struct Rebuilder {
    logs: BTreeMap<String, BTreeMap<u64, Read>>,
    /// Attachments carried whole in event entries, digest-checked.
    inline: BTreeMap<Digest, Vec<u8>>,
    blobs: BTreeMap<Digest, PartialBlob>,
    repeats: u64,
    other_entries: u64,
    unknown: Vec<UnknownEvent>,
    /// Each log's host, from its entry of the lowest seq read so far (that
    /// seq alongside): kept per log, not per entry, so that reading a log
    /// does not copy three fields out of every one of its entries.
    hosts: BTreeMap<String, (u64, LogHost)>,
}

impl Rebuilder {
    /// Takes one entry into account.
    pub fn add(&mut self, entry: &ReadEntry) -> Result<(), RebuildError> {
        if entry.get(field::RECORD).is_some() {
            self.add_event(entry)
        } else if entry.get(field::BLOB_DIGEST).is_some()
            || entry.get("MESSAGE_ID") == Some(BLOB_MESSAGE_ID.as_bytes())
        {
            self.add_blob_part(entry)
        } else {
            self.other_entries += 1;
            Ok(())
        }
    }

    fn add_event(&mut self, entry: &ReadEntry) -> Result<(), RebuildError> {
        let at = entry.position();
        let bad = |field: &'static str, reason: String| RebuildError::Field {
            at: at.clone(),
            field,
            reason,
        };
        let record = BASE64
            .decode(one(entry, field::RECORD)?)
            .map_err(|e| bad(field::RECORD, format!("not base64: {e}")))?;
        let hash = text(entry, field::HASH)?;
        let hash = Digest::from_hex(hash)
            .ok_or_else(|| bad(field::HASH, format!("{hash:?} is not 64 hex digits")))?;
        let seq = number(entry, field::SEQ)?;
        let log_id = match entry.get(field::LOG_ID) {
            Some(_) => text(entry, field::LOG_ID)?.to_owned(),
            None => String::new(),
        };
        let envelope = Envelope::decode_record(&record)
            .map_err(|e| bad(field::RECORD, format!("undecodable record: {e}")))?;
        let computed = chain_hash(&envelope.prev_hash, &record);
        if computed != hash {
            return Err(bad(
                field::HASH,
                format!("{hash} is not the record's hash ({computed})"),
            ));
        }
        if envelope.seq != seq {
            return Err(bad(
                field::SEQ,
                format!("{seq}, but the record is seq {}", envelope.seq),
            ));
        }
        // The convenience copy of the link, which `journalctl` matches
        // and people read, must say what the record says.
        if entry.get(field::PREV_HASH).is_some() {
            let prev = text(entry, field::PREV_HASH)?;
            if prev != envelope.prev_hash.to_hex() {
                return Err(bad(
                    field::PREV_HASH,
                    format!(
                        "{prev} is not the record's prev_hash ({})",
                        envelope.prev_hash
                    ),
                ));
            }
        }
        let payload = match Payload::decode(envelope.kind, envelope.kind_version, &envelope.payload)
        {
            Ok(payload) => payload,
            // Intact, and only newer than this build: set apart, not an
            // error that would hide every other event.
            Err(e @ (DecodeError::UnknownKind(_) | DecodeError::UnknownVersion { .. })) => {
                self.unknown.push(UnknownEvent {
                    log_id,
                    seq,
                    reason: e.to_string(),
                });
                return Ok(());
            }
            Err(e) => return Err(bad(field::RECORD, format!("undecodable payload: {e}"))),
        };
        let event = Event {
            envelope,
            payload,
            hash,
        };
        for value in entry
            .fields
            .iter()
            .filter(|(k, _)| k == field::BLOB_INLINE)
            .map(|(_, v)| v)
        {
            let (digest, content) =
                inline_blob(value).map_err(|reason| bad(field::BLOB_INLINE, reason))?;
            self.inline.insert(digest, content);
        }
        if self
            .hosts
            .get(&log_id)
            .is_none_or(|(lowest, _)| seq < *lowest)
        {
            // Below every seq read of its log, so vacant: inserted next.
            self.hosts.insert(log_id.clone(), (seq, LogHost::of(entry)));
        }
        match self.logs.entry(log_id).or_default().entry(seq) {
            Entry::Vacant(v) => {
                v.insert(Read { event, at });
            }
            Entry::Occupied(o) if o.get().event.hash == hash => self.repeats += 1,
            Entry::Occupied(o) => {
                return Err(RebuildError::Conflict {
                    reason: format!(
                        "seq {seq} has hash {hash}, but {} has a different record for it ({})",
                        o.get().at,
                        o.get().event.hash
                    ),
                    at,
                });
            }
        }
        Ok(())
    }

    fn add_blob_part(&mut self, entry: &ReadEntry) -> Result<(), RebuildError> {
        let at = entry.position();
        let bad = |field: &'static str, reason: String| RebuildError::Field {
            at: at.clone(),
            field,
            reason,
        };
        let digest = text(entry, field::BLOB_DIGEST)?;
        let digest = Digest::from_hex(digest).ok_or_else(|| {
            bad(
                field::BLOB_DIGEST,
                format!("{digest:?} is not 64 hex digits"),
            )
        })?;
        let len = number(entry, field::BLOB_LEN)?;
        let parts = number(entry, field::BLOB_PARTS)?;
        let part = number(entry, field::BLOB_PART)?;
        if parts == 0 || part == 0 || part > parts {
            return Err(bad(
                field::BLOB_PART,
                format!("part {part} of {parts} (parts count from 1)"),
            ));
        }
        let data = BASE64
            .decode(one(entry, field::BLOB_DATA)?)
            .map_err(|e| bad(field::BLOB_DATA, format!("not base64: {e}")))?;
        let blob = self.blobs.entry(digest).or_insert_with(|| PartialBlob {
            len,
            parts,
            at: at.clone(),
            ..PartialBlob::default()
        });
        if (blob.len, blob.parts) != (len, parts) {
            return Err(RebuildError::Conflict {
                reason: format!(
                    "attachment {digest} is {len} bytes in {parts} parts here, \
                     but {} bytes in {} parts at {}",
                    blob.len, blob.parts, blob.at
                ),
                at,
            });
        }
        match blob.have.entry(part) {
            Entry::Vacant(v) => {
                v.insert(data);
            }
            Entry::Occupied(o) if *o.get() == data => self.repeats += 1,
            Entry::Occupied(_) => {
                return Err(RebuildError::Conflict {
                    reason: format!("attachment {digest} part {part} differs from an earlier copy"),
                    at,
                });
            }
        }
        Ok(())
    }

    /// Assembles the attachments and returns everything rebuilt.
    pub fn finish(self) -> Result<Rebuilt, RebuildError> {
        let hosts = self
            .hosts
            .into_iter()
            .map(|(id, (_, host))| (id, host))
            .collect();
        let mut rebuilt = Rebuilt {
            hosts,
            logs: self
                .logs
                .into_iter()
                .map(|(id, events)| (id, events.into_values().map(|r| r.event).collect()))
                .collect(),
            blobs: self.inline,
            repeats: self.repeats,
            other_entries: self.other_entries,
            unknown: self.unknown,
            ..Rebuilt::default()
        };
        for (digest, blob) in self.blobs {
            if rebuilt.blobs.contains_key(&digest) {
                continue;
            }
            let have = blob.have.len() as u64;
            if have < blob.parts {
                rebuilt.incomplete_blobs.push((digest, have, blob.parts));
                continue;
            }
            let content: Vec<u8> = blob.have.into_values().flatten().collect();
            if content.len() as u64 != blob.len {
                return Err(RebuildError::Blob {
                    digest,
                    reason: format!(
                        "its parts add up to {} bytes, not {}",
                        content.len(),
                        blob.len
                    ),
                });
            }
            let computed = Digest::of(&content);
            if computed != digest {
                return Err(RebuildError::Blob {
                    digest,
                    reason: format!("its content hashes to {computed}"),
                });
            }
            rebuilt.blobs.insert(digest, content);
        }
        Ok(rebuilt)
    }
}

/// Rebuilds from `journalctl -o export` output.
pub fn rebuild_from_export(input: impl BufRead) -> Result<Rebuilt, RebuildError> {
    let mut rebuilder = Rebuilder::default();
    for entry in read_export(input) {
        rebuilder.add(&entry?)?;
    }
    rebuilder.finish()
}

/// Rebuilds from `journalctl -o json --all` output.
pub fn rebuild_from_json(input: impl BufRead) -> Result<Rebuilt, RebuildError> {
    let mut rebuilder = Rebuilder::default();
    for entry in read_json(input) {
        rebuilder.add(&entry?)?;
    }
    rebuilder.finish()
}

/// Checks that `events` (in seq order, as in [`Rebuilt::logs`]) form the
/// chain of a log from its start: seqs from 1 without a gap, each one's
/// `prev_hash` the previous one's hash (zero for seq 1), each hash
/// `SHA-256(prev_hash ‖ record)`. Names the first seq that breaks it.
pub fn verify_chain(events: &[Event]) -> Result<VerifyReport, ChainBreak> {
    verify_chain_from(Head::default(), events)
}

/// [`verify_chain`] for a stretch of a log that follows `start` (a seq and
/// its hash known from elsewhere, e.g. the database or an earlier stretch).
pub fn verify_chain_from(start: Head, events: &[Event]) -> Result<VerifyReport, ChainBreak> {
    let mut good = start;
    for event in events {
        let expected = good.seq + 1;
        let fail = |seq: u64, reason: String| {
            Err(ChainBreak {
                seq,
                reason,
                last_good: good,
            })
        };
        let seq = event.seq();
        if seq != expected {
            return fail(
                expected,
                format!("missing from the journal (the next seq there is {seq})"),
            );
        }
        if event.envelope.prev_hash != good.hash {
            return fail(
                seq,
                format!(
                    "prev_hash {} is not the hash of seq {} ({})",
                    event.envelope.prev_hash, good.seq, good.hash
                ),
            );
        }
        let record = match event.envelope.encode_record() {
            Ok(r) => r,
            Err(e) => return fail(seq, format!("cannot re-encode the record: {e}")),
        };
        let computed = chain_hash(&good.hash, &record);
        if computed != event.hash {
            return fail(
                seq,
                format!(
                    "content does not match its hash ({}, computed {computed})",
                    event.hash
                ),
            );
        }
        good = Head {
            seq,
            hash: computed,
        };
    }
    Ok(VerifyReport {
        events: good.seq - start.seq,
        head: good,
    })
}

/// `<64 hex digits> <base64>` whose content hashes to the digest.
fn inline_blob(value: &[u8]) -> Result<(Digest, Vec<u8>), String> {
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_owned())?;
    let (digest, data) = text
        .split_once(' ')
        .ok_or_else(|| "not `<digest> <base64>`".to_owned())?;
    let digest =
        Digest::from_hex(digest).ok_or_else(|| format!("{digest:?} is not 64 hex digits"))?;
    let content = BASE64
        .decode(data)
        .map_err(|e| format!("attachment {digest}: not base64: {e}"))?;
    let computed = Digest::of(&content);
    if computed != digest {
        return Err(format!(
            "attachment {digest}: its content hashes to {computed}"
        ));
    }
    Ok((digest, content))
}

/// The single value of `name`.
fn one<'a>(entry: &'a ReadEntry, name: &'static str) -> Result<&'a [u8], RebuildError> {
    let at = || entry.position();
    match entry.count(name) {
        0 => Err(RebuildError::Field {
            at: at(),
            field: name,
            reason: "missing".into(),
        }),
        1 => Ok(entry.get(name).unwrap_or_default()),
        n => Err(RebuildError::Field {
            at: at(),
            field: name,
            reason: format!("{n} values where one belongs"),
        }),
    }
}

fn text<'a>(entry: &'a ReadEntry, name: &'static str) -> Result<&'a str, RebuildError> {
    std::str::from_utf8(one(entry, name)?).map_err(|_| RebuildError::Field {
        at: entry.position(),
        field: name,
        reason: "not UTF-8".into(),
    })
}

fn number(entry: &ReadEntry, name: &'static str) -> Result<u64, RebuildError> {
    let s = text(entry, name)?;
    s.parse().map_err(|_| RebuildError::Field {
        at: entry.position(),
        field: name,
        reason: format!("{s:?} is not a number"),
    })
}
