//! The journald message catalog, generated from the kind registry.

use std::fmt::Write;

use con_event::KINDS;

use crate::entry::{BLOB_INLINE_MAX, BLOB_MESSAGE_ID, BLOB_PART_BYTES};

/// The catalog file for every event kind and for attachment entries
/// (install as `/usr/lib/systemd/catalog/con.catalog`, then
/// `journalctl --update-catalog`).
pub fn catalog() -> String {
    let mut out = String::from(
        "# journald catalog for con events. Generated from the event kind registry\n\
         # (crates/con-event); do not edit by hand: `make catalog` regenerates it.\n",
    );
    for kind in KINDS {
        let _ = write!(
            out,
            "\n-- {}\nSubject: {}\nDefined-By: con\n\n{}\n\nThis is event kind {} (id {}, version {}) at seq @CON_SEQ@ of \
             the con event log @CON_LOG_ID@, the record of truth; `con verify` checks its hash chain. \
             CON_RECORD holds the stored record (base64) and CON_HASH its chain hash, so the event can be \
             rebuilt from the journal exactly; CON_PAYLOAD is the payload as JSON at version \
             @CON_PAYLOAD_VERSION@ (stored at version @CON_KIND_VERSION@). Attachments this event is the \
             first to reference travel with it: each CON_BLOB_INLINE is `<sha256> <base64 content>`, \
             larger ones are in entries of their own (CON_BLOB_DIGEST).\n",
            kind.message_id, kind.subject, kind.description, kind.name, kind.id, kind.version,
        );
    }
    let _ = write!(
        out,
        "\n-- {BLOB_MESSAGE_ID}\nSubject: Attachment @CON_BLOB_DIGEST@, part @CON_BLOB_PART@ of @CON_BLOB_PARTS@\n\
         Defined-By: con\n\n\
         Part of the content of an attachment (a prompt, a model request or response, a tool's output, a task \
         file) that con events reference by SHA-256. Each content is mirrored once, with the first event that \
         references it (seq @CON_BLOB_SEQ@ of the con event log @CON_LOG_ID@): inside that event's entry up to \
         {BLOB_INLINE_MAX} bytes, otherwise in entries like this one, in parts of {BLOB_PART_BYTES} bytes. \
         CON_BLOB_DATA holds this part in base64, CON_BLOB_LEN the length of the whole content. \
         `journalctl CON_BLOB_DIGEST=@CON_BLOB_DIGEST@ -o export` prints every part; joined in order they hash \
         to the digest.\n"
    );
    out
}
