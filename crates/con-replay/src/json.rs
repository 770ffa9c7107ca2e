//! The JSON view of replay: the event JSON view (`con_event::EventJson`,
//! docs/event-json.md) of each event, with the contents it references.

use base64::Engine;
use con_event::{Digest, Event, EventJson};
use serde::Serialize;

use crate::Contents;

/// One event with its contents: every field of [`EventJson`], plus
/// `contents`, one entry per blob the payload references, in the order the
/// payload names them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventWithContents {
    /// The event.
    #[serde(flatten)]
    pub event: EventJson,
    /// Its contents.
    pub contents: Vec<ContentJson>,
}

/// One referenced content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContentJson {
    /// SHA-256 of the content (64 hex digits).
    pub digest: Digest,
    /// Its length in bytes.
    pub len: u64,
    /// The content, if it is UTF-8 (and was available).
    pub utf8: Option<String>,
    /// The content in base64, if it is not UTF-8 (and was available).
    pub base64: Option<String>,
}

impl EventWithContents {
    /// The view of `event` with what `contents` has of its blobs (a content
    /// missing, or not matching its digest, has both `utf8` and `base64`
    /// null).
    pub fn new(event: &Event, contents: &Contents) -> Self {
        let blobs = {
            let mut refs = event.payload.blob_refs();
            let mut seen = std::collections::BTreeSet::new();
            refs.retain(|b| seen.insert(b.digest));
            refs
        };
        Self {
            event: EventJson::from_event(event),
            contents: blobs
                .into_iter()
                .map(|b| {
                    let bytes = contents
                        .get(&b.digest)
                        .filter(|bytes| Digest::of(bytes) == b.digest);
                    let (utf8, base64) = match bytes.map(|b| String::from_utf8(b.clone())) {
                        None => (None, None),
                        Some(Ok(text)) => (Some(text), None),
                        Some(Err(e)) => (
                            None,
                            Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
                        ),
                    };
                    ContentJson {
                        digest: b.digest,
                        len: b.len,
                        utf8,
                        base64,
                    }
                })
                .collect(),
        }
    }
}
