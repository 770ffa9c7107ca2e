//! Replay: what happened, from the record alone.
//!
//! Pure folds of recorded [`Event`]s (and the contents their blob
//! references name) into
//! - a session's [`Timeline`]: the task's arrival, the session's start,
//!   every model call and tool call, routing, the end, and the checks and
//!   enforcement about the agent while it ran ([`timeline::timeline`]);
//! - a task's [`Trace`] across agents: the task, the sessions that handled
//!   it, the tasks those sessions handed to other agents, recursively
//!   ([`trace::trace`]);
//! - an agent's session list ([`sessions::sessions`]);
//! - a rerun's plan and comparison: which recorded tool calls may run
//!   again in a scratch copy of the workspace, and how their new results
//!   compare with the recorded ones ([`rerun`]);
//!
//! and their text ([`text`]) and JSON ([`json`]) views.
//!
//! This crate does no IO: callers fetch events and contents (through the
//! daemon, from a database copy, from journald) and pass them in. Replay
//! never calls a model and never changes the host: it only reads what was
//! recorded.

pub mod json;
pub mod rerun;
pub mod sessions;
pub mod text;
pub mod timeline;
pub mod trace;

use std::collections::BTreeMap;

use con_event::{BlobRef, Digest, Event};

pub use sessions::{SessionSummary, sessions};
pub use timeline::{Step, Timeline, timeline};
pub use trace::{Trace, trace};

/// Contents of blobs by digest, as far as the caller could fetch them. A
/// missing digest shows as "content unavailable", never as an error: an
/// agent may not read every content, and journald may have vacuumed one.
pub type Contents = BTreeMap<Digest, Vec<u8>>;

/// A recorded content: its reference and, if the caller had it, its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    /// The reference recorded in the event.
    pub blob: BlobRef,
    /// The bytes, checked against the digest; `None` if unavailable.
    pub bytes: Option<Vec<u8>>,
}

impl Content {
    /// `blob` with its bytes from `contents`, if they are there and match
    /// the digest (a content that does not hash to its reference is not
    /// shown as if it were the recorded one).
    pub fn of(blob: BlobRef, contents: &Contents) -> Self {
        let bytes = contents
            .get(&blob.digest)
            .filter(|b| Digest::of(b) == blob.digest)
            .cloned();
        Self { blob, bytes }
    }

    /// The content as text (lossy for bytes that are not UTF-8).
    pub fn text(&self) -> Option<String> {
        self.bytes
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// Every blob the given events reference, once each, in order of first
/// reference: what a caller fetches before folding.
pub fn blobs_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<BlobRef> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for event in events {
        for blob in event.payload.blob_refs() {
            if seen.insert(blob.digest) {
                out.push(blob);
            }
        }
    }
    out
}
