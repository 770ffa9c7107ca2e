//! Which inbox each file last arrived in, so that a file seen before is
//! never verified again.
//!
//! `rename()` keeps a file's owner, mode and ACL, so `lstat` alone cannot
//! tell an operator's task that was just written from one an agent took out
//! of `processed/` (or out of another inbox), perhaps rewrote while it could,
//! and moved back. Only the log can: a file whose arrival is already recorded
//! is a re-arrival, never newly verified.
//!
//! A file is identified by device and inode, which the kernel reuses once a
//! file is deleted. To tell a new file on a reused inode from the old one,
//! its birth time (`statx` btime, set by the kernel at creation and not
//! settable by anyone afterwards) is compared with the last status change
//! time recorded for that inode: every record of a file has a ctime at or
//! after its birth, and a file born on a reused inode is born after the old
//! one was deleted, so after every record of it. No per-file secret needs to
//! be stored in the log for this: what the log already records (device,
//! inode, ctime) is enough. Where the file system reports no birth time, a
//! recorded inode is taken for the same file: a new task on a reused inode is
//! then unverified (doubt never grants trust).

use std::collections::HashMap;
use std::fs::Metadata;
use std::time::UNIX_EPOCH;

use con_event::Digest;
use con_event::payloads::{InboxArrived, Trust};
use serde::{Deserialize, Serialize};

use crate::{ArrivalKey, Classified, OUTER_INBOX};

/// The last recorded arrival of every inode: rebuilt from the log with
/// [`Provenance::remember`], kept up to date by the watcher. Never dropped
/// wholesale (a forgotten file would be verified again): it grows by one
/// small entry per file that ever arrived. Serializable, so that the daemon
/// can keep it as a checkpointed projection of the log instead of reading
/// every arrival again at each start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// (device, inode) → the last recorded arrival on it.
    seen: HashMap<(u64, u64), Seen>,
    /// Inbox names, interned: entries hold an index.
    inboxes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    /// The largest recorded ctime, nanoseconds since the epoch.
    ctime: i64,
    /// Index into [`Provenance::inboxes`] of that record's inbox.
    inbox: usize,
    /// The first 8 bytes of the SHA-256 of that record's path: with the
    /// ctime, which arrival it was (see [`Provenance::is_latest_arrival`]).
    path: [u8; 8],
}

/// What [`Seen::path`] holds for `path`: stable across builds (a
/// checkpoint outlives the binary that wrote it).
fn path_digest(path: &str) -> [u8; 8] {
    let mut first = [0; 8];
    first.copy_from_slice(&Digest::of(path.as_bytes()).0[..8]);
    first
}

impl Provenance {
    /// Takes a recorded arrival into account (from the log, in any order:
    /// for each inode the record with the latest ctime wins).
    pub fn remember(&mut self, arrival: &InboxArrived) {
        let inbox = self.intern(&arrival.inbox);
        let seen = Seen {
            ctime: arrival.ctime_unix_nanos,
            inbox,
            path: path_digest(&arrival.path),
        };
        let entry = self
            .seen
            .entry((arrival.dev, arrival.inode))
            .or_insert(seen);
        if arrival.ctime_unix_nanos >= entry.ctime {
            *entry = seen;
        }
    }

    /// Whether `key` is the last recorded arrival of its inode (same path,
    /// same ctime): a file found in an inbox at start that needs no new
    /// record. An older arrival of the same inode is not reported, so such
    /// a file is recorded again — as a re-arrival, which can only lower
    /// its trust.
    pub fn is_latest_arrival(&self, key: &ArrivalKey) -> bool {
        self.seen.get(&(key.dev, key.inode)).is_some_and(|seen| {
            seen.ctime == key.ctime_unix_nanos && seen.path == path_digest(&key.path)
        })
    }

    /// Takes everything `other` remembers into account (for each inode the
    /// record with the latest ctime wins, as in [`Provenance::remember`]):
    /// how a watcher learns the history of an inbox added while it runs.
    pub fn merge(&mut self, other: &Provenance) {
        for (&key, seen) in &other.seen {
            let Some(name) = other.inboxes.get(seen.inbox) else {
                continue;
            };
            let inbox = self.intern(name);
            let seen = Seen { inbox, ..*seen };
            let entry = self.seen.entry(key).or_insert(seen);
            if seen.ctime >= entry.ctime {
                *entry = seen;
            }
        }
    }

    /// How many inodes are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Downgrades `arrival` (about to be recorded in `inbox`) to unverified
    /// if the same file already arrived somewhere, then remembers it. Files
    /// leaving the outer inbox keep their trust: only the daemon (routing)
    /// and trusted operators can move them out of it. `birth` is the file's
    /// birth time in nanoseconds since the epoch, if known.
    pub fn check(&mut self, arrival: &mut Classified, inbox: &str, birth: Option<i64>) {
        let key = (arrival.key.dev, arrival.key.inode);
        if let Some(before) = self.seen.get(&key).copied() {
            // A file born after the last record of this inode is a new file
            // on a reused inode; without a birth time, assume the same file.
            let same_file = birth.is_none_or(|b| b <= before.ctime);
            let before_inbox = self
                .inboxes
                .get(before.inbox)
                .map_or("?", String::as_str)
                .to_owned();
            if same_file && before_inbox != OUTER_INBOX && arrival.trust == Trust::Verified {
                arrival.trust = Trust::Unverified;
                arrival.trust_reason = if before_inbox == inbox {
                    format!(
                        "back in inbox {inbox}: this file already arrived here once (it may \
                         have been changed while it was away; its owner, uid {}, was kept, \
                         not proven)",
                        arrival.owner_uid
                    )
                } else {
                    format!(
                        "moved here from inbox {before_inbox} by rename (its owner, uid {}, \
                         was kept, not proven)",
                        arrival.owner_uid
                    )
                };
            }
        }
        let inbox = self.intern(inbox);
        self.seen.insert(
            key,
            Seen {
                ctime: arrival.key.ctime_unix_nanos,
                inbox,
                path: path_digest(&arrival.key.path),
            },
        );
    }

    fn intern(&mut self, inbox: &str) -> usize {
        match self.inboxes.iter().position(|i| i == inbox) {
            Some(i) => i,
            None => {
                self.inboxes.push(inbox.to_owned());
                self.inboxes.len() - 1
            }
        }
    }
}

/// The birth time of the file `meta` describes, in nanoseconds since the
/// epoch, if the kernel and file system report one.
pub fn birth_time(meta: &Metadata) -> Option<i64> {
    let since = meta.created().ok()?.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArrivalKey;

    fn arrival(inode: u64, ctime: i64) -> Classified {
        Classified {
            key: ArrivalKey {
                path: "/i/t.task".into(),
                dev: 1,
                inode,
                ctime_unix_nanos: ctime,
            },
            owner_uid: 0,
            owner_gid: 0,
            mode: 0o100644,
            nlink: 1,
            symlink: false,
            trust: Trust::Verified,
            trust_reason: "owner uid 0".into(),
            content: b"x".to_vec(),
            size: 1,
            truncated: false,
            refused: None,
        }
    }

    #[test]
    fn merged_history_makes_a_file_seen_elsewhere_unverified() {
        // What a reload hands the running watcher for a new inbox.
        let mut history = Provenance::default();
        let mut old = arrival(7, 100);
        history.check(&mut old, "scout", Some(90));
        let mut running = Provenance::default();
        let mut other = arrival(8, 100);
        running.check(&mut other, "concierge", Some(90));
        running.merge(&history);
        assert_eq!(running.len(), 2);
        let mut back = arrival(7, 200);
        running.check(&mut back, "scout", Some(90));
        assert_eq!(back.trust, Trust::Unverified);
        assert!(back.trust_reason.starts_with("back in inbox scout"));
        // An older record merged later does not win over a newer one.
        let mut stale = Provenance::default();
        let mut earlier = arrival(7, 50);
        stale.check(&mut earlier, "outer", Some(40));
        running.merge(&stale);
        let mut again = arrival(7, 300);
        running.check(&mut again, "scout", Some(90));
        assert_eq!(again.trust, Trust::Unverified);
    }

    #[test]
    fn a_file_seen_before_is_never_verified_again() {
        let mut p = Provenance::default();
        let mut first = arrival(7, 100);
        p.check(&mut first, "concierge", Some(90));
        assert_eq!(first.trust, Trust::Verified);
        // Back in the same inbox (out of processed/, say).
        let mut back = arrival(7, 200);
        p.check(&mut back, "concierge", Some(90));
        assert_eq!(back.trust, Trust::Unverified);
        assert!(back.trust_reason.starts_with("back in inbox concierge"));
        // On to another agent's inbox.
        let mut forwarded = arrival(7, 300);
        p.check(&mut forwarded, "sysadmin", Some(90));
        assert_eq!(forwarded.trust, Trust::Unverified);
        assert!(
            forwarded
                .trust_reason
                .contains("moved here from inbox concierge"),
            "{}",
            forwarded.trust_reason
        );
    }

    #[test]
    fn routing_out_of_the_outer_inbox_keeps_trust() {
        let mut p = Provenance::default();
        let mut outer = arrival(8, 100);
        p.check(&mut outer, OUTER_INBOX, Some(90));
        let mut routed = arrival(8, 150);
        p.check(&mut routed, "concierge", Some(90));
        assert_eq!(routed.trust, Trust::Verified);
    }

    #[test]
    fn a_new_file_on_a_reused_inode_is_judged_on_its_own() {
        let mut p = Provenance::default();
        let mut old = arrival(9, 100);
        p.check(&mut old, "concierge", Some(90));
        // Born after the last record of inode 9: another file.
        let mut fresh = arrival(9, 500);
        p.check(&mut fresh, "sysadmin", Some(400));
        assert_eq!(fresh.trust, Trust::Verified);
        // Without a birth time the inode is taken for the same file.
        let mut unknown = arrival(9, 900);
        p.check(&mut unknown, "concierge", None);
        assert_eq!(unknown.trust, Trust::Unverified);
    }

    #[test]
    fn the_log_rebuilds_the_latest_record_of_each_inode_in_any_order() {
        let logged = |inbox: &str, ctime: i64| arrival(5, ctime).payload(inbox);
        let mut p = Provenance::default();
        p.remember(&logged("sysadmin", 300));
        p.remember(&logged("concierge", 100));
        assert_eq!(p.len(), 1);
        let mut again = arrival(5, 400);
        p.check(&mut again, "sysadmin", Some(50));
        assert_eq!(again.trust, Trust::Unverified);
        assert!(again.trust_reason.starts_with("back in inbox sysadmin"));
    }

    fn recorded(path: &str, inode: u64, ctime: i64) -> InboxArrived {
        let a = arrival(inode, ctime);
        InboxArrived {
            path: path.into(),
            ..a.payload("concierge")
        }
    }

    fn key(path: &str, inode: u64, ctime: i64) -> ArrivalKey {
        ArrivalKey {
            path: path.into(),
            dev: 1,
            inode,
            ctime_unix_nanos: ctime,
        }
    }

    #[test]
    fn only_the_last_arrival_of_a_file_is_the_latest() {
        let mut p = Provenance::default();
        p.remember(&recorded("/i/a.task", 7, 100));
        p.remember(&recorded("/i/b.task", 7, 200));
        assert!(p.is_latest_arrival(&key("/i/b.task", 7, 200)));
        // The same file as it was before: recorded again at start, as a
        // re-arrival.
        assert!(!p.is_latest_arrival(&key("/i/a.task", 7, 100)));
        // Same inode and ctime, another name: not that arrival.
        assert!(!p.is_latest_arrival(&key("/i/c.task", 7, 200)));
        // Changed since (a new ctime), or never seen.
        assert!(!p.is_latest_arrival(&key("/i/b.task", 7, 201)));
        assert!(!p.is_latest_arrival(&key("/i/b.task", 8, 200)));
    }

    #[test]
    fn a_checkpointed_history_reads_back_the_same() {
        let mut p = Provenance::default();
        p.remember(&recorded("/i/a.task", 7, 100));
        p.remember(&recorded("/j/b.task", 9, 300));
        let bytes = con_event::codec::encode(&p).unwrap();
        let back: Provenance = con_event::codec::decode("provenance", &bytes).unwrap();
        assert_eq!(back, p);
        assert!(back.is_latest_arrival(&key("/j/b.task", 9, 300)));
        let mut moved = arrival(9, 300);
        let mut fresh = back.clone();
        fresh.check(&mut moved, "sysadmin", Some(50));
        assert_eq!(moved.trust, Trust::Unverified, "{}", moved.trust_reason);
    }
}
