//! The journald message catalog, generated from the kind registry.

use std::fmt::Write;

use con_event::KINDS;

/// The catalog file for every event kind (install as
/// `/usr/lib/systemd/catalog/con.catalog`, then `journalctl --update-catalog`).
pub fn catalog() -> String {
    let mut out = String::from(
        "# journald catalog for con events. Generated from the event kind registry\n\
         # (crates/con-event); do not edit by hand: `make catalog` regenerates it.\n",
    );
    for kind in KINDS {
        let _ = write!(
            out,
            "\n-- {}\nSubject: {}\nDefined-By: con\n\n{}\n\nThis is event kind {} (id {}, version {}) at seq @CON_SEQ@ of \
             the con event log @CON_LOG_ID@, the record of truth; `con verify` checks its hash chain.\n",
            kind.message_id, kind.subject, kind.description, kind.name, kind.id, kind.version,
        );
    }
    out
}
