//! Turning events and attachment contents into journal entries (pure
//! formatting plus `send`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use con_event::{Digest, EncodeError, Event, Priority};
use systemd_journal_logger::JournalLog;

/// Names of the fields con writes. The record fields ([`field::RECORD`],
/// [`field::HASH`], [`field::LOG_ID`], [`field::SEQ`] and the `CON_BLOB_*`
/// fields) are what [`crate::Rebuilder`] reads; every other field is derived
/// from them for `journalctl` matches and for people.
pub mod field {
    /// `FORMAT ‖ bincode(envelope)`, base64: the canonical stored record,
    /// exactly the bytes that are hashed.
    pub const RECORD: &str = "CON_RECORD";
    /// The record's chain hash, 64 hex digits.
    pub const HASH: &str = "CON_HASH";
    /// The random id of the log the entry mirrors.
    pub const LOG_ID: &str = "CON_LOG_ID";
    /// The event's seq (also inside the record).
    pub const SEQ: &str = "CON_SEQ";
    /// The previous record's chain hash, 64 hex digits (also inside the
    /// record; a rebuild refuses an entry where they differ).
    pub const PREV_HASH: &str = "CON_PREV_HASH";
    /// The payload layout version stored in the record.
    pub const KIND_VERSION: &str = "CON_KIND_VERSION";
    /// The version of the `CON_PAYLOAD` JSON body: the kind's current
    /// version, after upcasting.
    pub const PAYLOAD_VERSION: &str = "CON_PAYLOAD_VERSION";
    /// The payload (upcast to the current version) as JSON.
    pub const PAYLOAD: &str = "CON_PAYLOAD";
    /// An attachment carried whole in the entry of the event that first
    /// references it: 64 hex digits of its SHA-256, a space, its bytes in
    /// base64. One value per attachment (values of a repeated field are
    /// not kept in order, so each is self-contained).
    pub const BLOB_INLINE: &str = "CON_BLOB_INLINE";
    /// SHA-256 of the whole attachment, 64 hex digits: in part entries, and
    /// once per inline attachment in event entries, so `CON_BLOB_DIGEST=`
    /// finds a content either way.
    pub const BLOB_DIGEST: &str = "CON_BLOB_DIGEST";
    /// Length of the whole attachment in bytes.
    pub const BLOB_LEN: &str = "CON_BLOB_LEN";
    /// Which part this entry holds, from 1.
    pub const BLOB_PART: &str = "CON_BLOB_PART";
    /// How many parts the attachment has.
    pub const BLOB_PARTS: &str = "CON_BLOB_PARTS";
    /// This part's bytes, base64.
    pub const BLOB_DATA: &str = "CON_BLOB_DATA";
    /// Seq of the event the attachment was mirrored with (the first one
    /// the mirror saw referencing it).
    pub const BLOB_SEQ: &str = "CON_BLOB_SEQ";
    /// Session of that event, if any.
    pub const SESSION: &str = "CON_SESSION";
}

/// `MESSAGE_ID` of attachment entries (one per part of a blob).
pub const BLOB_MESSAGE_ID: &str = "4ccfb7aa79df4cdeabb9fc6e7f5ff820";

/// Bytes of attachment content per journal entry. Base64 makes it 131,072
/// characters, so a whole part entry (~132 KiB) stays well below the largest
/// datagram journald's socket takes here (212,960 bytes with the default
/// `net.core.wmem_default`): no memfd per part, and far below the journal
/// file size limit (an entry bigger than a journal file is dropped).
pub const BLOB_PART_BYTES: usize = 96 * 1024;

/// Attachments up to this size travel inside the entry of the event that
/// first references it ([`field::BLOB_INLINE`]) rather than in entries of
/// their own: most contents are small (tool arguments, replies, outputs),
/// and a journal entry costs hundreds of bytes and one journald round of
/// its own.
pub const BLOB_INLINE_MAX: usize = BLOB_PART_BYTES;

/// Fields identifying which log an entry mirrors.
#[derive(Clone, Debug, Default)]
pub struct MirrorContext {
    /// The log's random id (`CON_LOG_ID`).
    pub log_id: String,
    /// `[system] name` from con.toml (`CON_SYSTEM`).
    pub system: String,
}

/// One journal entry, ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// `PRIORITY`.
    pub priority: Priority,
    /// `MESSAGE`.
    pub message: String,
    /// Every other field, in a stable order.
    pub fields: Vec<(&'static str, String)>,
}

/// The journal entry for `event`: the stored record and its hash (from
/// which the event is rebuilt exactly), plus the envelope, kind fields and
/// the payload as JSON for `journalctl` matches and people. `inline` are
/// attachments (digest, content) it carries whole, each at most
/// [`BLOB_INLINE_MAX`] bytes; larger ones go in entries of their own
/// ([`blob_entries`]).
pub fn entry_for(
    event: &Event,
    inline: &[(Digest, Vec<u8>)],
    ctx: &MirrorContext,
) -> Result<JournalEntry, EncodeError> {
    let env = &event.envelope;
    let spec = event.payload.spec();
    let record = env.encode_record()?;
    let mut fields: Vec<(&'static str, String)> = vec![
        ("MESSAGE_ID", spec.message_id.to_owned()),
        (field::SEQ, env.seq.to_string()),
    ];
    if !ctx.log_id.is_empty() {
        fields.push((field::LOG_ID, ctx.log_id.clone()));
    }
    fields.extend([
        (field::HASH, event.hash.to_hex()),
        (field::RECORD, BASE64.encode(&record)),
        ("CON_EVENT", spec.journal_name()),
        (field::KIND_VERSION, env.kind_version.to_string()),
        (field::PAYLOAD_VERSION, spec.version.to_string()),
        ("CON_EVENT_ID", env.id.to_hex()),
        ("CON_TS_UNIX_NS", env.ts_unix_nanos.to_string()),
        ("CON_UID", env.actor.uid.to_string()),
    ]);
    if let Some(actor) = &env.actor.agent {
        fields.push(("CON_ACTOR", actor.clone()));
    }
    if let Some(agent) = event.payload.subject_agent().or(env.actor.agent.as_deref()) {
        fields.push(("CON_AGENT", agent.to_owned()));
    }
    if let Some(s) = &env.session {
        fields.push((field::SESSION, s.to_hex()));
    }
    if let Some(t) = &env.task {
        fields.push(("CON_TASK", t.clone()));
    }
    if let Some(c) = env.causation {
        fields.push(("CON_CAUSATION", c.to_string()));
    }
    fields.push((field::PREV_HASH, env.prev_hash.to_hex()));
    if !ctx.system.is_empty() {
        fields.push(("CON_SYSTEM", ctx.system.clone()));
    }
    event.payload.journal_fields(&mut fields);
    if let Ok(json) = serde_json::to_string(&event.payload) {
        fields.push((field::PAYLOAD, json));
    }
    for (digest, content) in inline {
        fields.push((field::BLOB_DIGEST, digest.to_hex()));
        fields.push((
            field::BLOB_INLINE,
            format!("{digest} {}", BASE64.encode(content)),
        ));
    }
    Ok(JournalEntry {
        priority: event.payload.priority(),
        message: event.payload.message(),
        fields,
    })
}

/// The entries carrying the attachment `digest` (its `content`),
/// [`BLOB_PART_BYTES`] per entry (an empty content is one empty part),
/// mirrored along with `carrier`, the event that references it.
pub fn blob_entries<'a>(
    digest: &Digest,
    content: &'a [u8],
    carrier: &'a Event,
    ctx: &'a MirrorContext,
) -> impl Iterator<Item = JournalEntry> + 'a {
    // The digest the event references, not one recomputed here: content
    // damaged in the store then shows up as a mismatch when rebuilding.
    let digest = digest.to_hex();
    let parts = content.len().div_ceil(BLOB_PART_BYTES).max(1);
    let len = content.len();
    (0..parts).map(move |i| {
        let start = i * BLOB_PART_BYTES;
        let chunk = content
            .get(start..len.min(start + BLOB_PART_BYTES))
            .unwrap_or(&[]);
        let part = i + 1;
        let mut fields: Vec<(&'static str, String)> = vec![
            ("MESSAGE_ID", BLOB_MESSAGE_ID.to_owned()),
            (field::BLOB_DIGEST, digest.clone()),
            (field::BLOB_PART, part.to_string()),
            (field::BLOB_PARTS, parts.to_string()),
            (field::BLOB_LEN, len.to_string()),
            (field::BLOB_SEQ, carrier.seq().to_string()),
        ];
        if !ctx.log_id.is_empty() {
            fields.push((field::LOG_ID, ctx.log_id.clone()));
        }
        if let Some(s) = &carrier.envelope.session {
            fields.push((field::SESSION, s.to_hex()));
        }
        if !ctx.system.is_empty() {
            fields.push(("CON_SYSTEM", ctx.system.clone()));
        }
        fields.push((field::BLOB_DATA, BASE64.encode(chunk)));
        JournalEntry {
            priority: Priority::Info,
            message: format!("attachment sha256:{digest} part {part}/{parts} ({len} bytes)"),
            fields,
        }
    })
}

impl JournalEntry {
    /// Sends the entry. May block if journald is alive but not reading:
    /// call it only from the mirror thread.
    pub fn send(&self, journal: &JournalLog) -> std::io::Result<()> {
        let kvs: Vec<(&str, &str)> = self.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let kvs = kvs.as_slice();
        journal.journal_send(
            &log::Record::builder()
                .level(level(self.priority))
                .target("con")
                .args(format_args!("{}", self.message))
                .key_values(&kvs)
                .build(),
        )
    }
}

/// The log level systemd-journal-logger maps onto `priority` (Error→3,
/// Warn→4, Info→5, Debug→6, Trace→7).
fn level(priority: Priority) -> log::Level {
    match priority {
        Priority::Err => log::Level::Error,
        Priority::Warning => log::Level::Warn,
        Priority::Notice => log::Level::Info,
        Priority::Info => log::Level::Debug,
        Priority::Debug => log::Level::Trace,
    }
}
