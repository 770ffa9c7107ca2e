//! Turning an event into one journal entry (pure formatting plus `send`).

use con_event::{Event, Priority};
use systemd_journal_logger::JournalLog;

/// Largest attachment copied into the entry (`CON_BLOB`); bigger contents are
/// referenced by digest only (they remain in the event log's blob store).
pub const BLOB_INLINE_MAX: usize = 64 * 1024;

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

/// The journal entry for `event`: envelope fields, kind fields, the payload as
/// JSON and small attachments, so a session's timeline can be rebuilt from
/// the journal alone.
pub fn entry_for(event: &Event, attachments: &[Vec<u8>], ctx: &MirrorContext) -> JournalEntry {
    let env = &event.envelope;
    let spec = event.payload.spec();
    let mut fields: Vec<(&'static str, String)> = vec![
        ("MESSAGE_ID", spec.message_id.to_owned()),
        ("CON_SEQ", env.seq.to_string()),
        ("CON_EVENT", spec.journal_name()),
        ("CON_KIND_VERSION", env.kind_version.to_string()),
        ("CON_EVENT_ID", env.id.to_hex()),
        ("CON_TS_UNIX_NS", env.ts_unix_nanos.to_string()),
        ("CON_UID", env.actor.uid.to_string()),
    ];
    if let Some(actor) = &env.actor.agent {
        fields.push(("CON_ACTOR", actor.clone()));
    }
    if let Some(agent) = event.payload.subject_agent().or(env.actor.agent.as_deref()) {
        fields.push(("CON_AGENT", agent.to_owned()));
    }
    if let Some(s) = &env.session {
        fields.push(("CON_SESSION", s.to_hex()));
    }
    if let Some(t) = &env.task {
        fields.push(("CON_TASK", t.clone()));
    }
    if let Some(c) = env.causation {
        fields.push(("CON_CAUSATION", c.to_string()));
    }
    fields.push(("CON_HASH", event.hash.to_hex()));
    fields.push(("CON_PREV_HASH", env.prev_hash.to_hex()));
    if !ctx.log_id.is_empty() {
        fields.push(("CON_LOG_ID", ctx.log_id.clone()));
    }
    if !ctx.system.is_empty() {
        fields.push(("CON_SYSTEM", ctx.system.clone()));
    }
    event.payload.journal_fields(&mut fields);
    if let Ok(json) = serde_json::to_string(&event.payload) {
        fields.push(("CON_PAYLOAD", json));
    }
    for blob in attachments {
        // journald values are bytes, but the logger's field API takes text;
        // binary or large contents stay in the blob store only.
        if blob.len() <= BLOB_INLINE_MAX
            && let Ok(text) = std::str::from_utf8(blob)
        {
            let digest = con_event::Digest::of(blob);
            fields.push(("CON_BLOB", format!("sha256:{digest} {text}")));
        }
    }
    JournalEntry {
        priority: event.payload.priority(),
        message: event.payload.message(),
        fields,
    }
}

impl JournalEntry {
    /// Sends the entry. May block if journald is alive but not reading:
    /// call it only from the mirror thread.
    pub fn send(&self, journal: &JournalLog) -> std::io::Result<()> {
        // systemd-journal-logger maps log levels onto syslog priorities
        // Error→3, Warn→4, Info→5, Debug→6, Trace→7.
        let level = match self.priority {
            Priority::Err => log::Level::Error,
            Priority::Warning => log::Level::Warn,
            Priority::Notice => log::Level::Info,
            Priority::Info => log::Level::Debug,
            Priority::Debug => log::Level::Trace,
        };
        let kvs: Vec<(&str, &str)> = self.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let kvs = kvs.as_slice();
        journal.journal_send(
            &log::Record::builder()
                .level(level)
                .target("con")
                .args(format_args!("{}", self.message))
                .key_values(&kvs)
                .build(),
        )
    }
}
