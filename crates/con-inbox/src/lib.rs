//! The con inbox watcher.
//!
//! Every `.task` file that appears in a watched inbox becomes exactly one
//! `inbox.arrived` event ([`con_event::payloads::InboxArrived`]) carrying the
//! file's kernel-reported provenance and, as its single attachment, its
//! content. The crate owns no log: events go to the caller (the daemon)
//! through a bounded channel, and the daemon tells [`InboxWatcher::start`]
//! which arrivals its log already holds so that a restart records nothing
//! twice.
//!
//! - [`classify`] is the per-file step: `lstat`, trust from the owner uid,
//!   the file's mode and ACL, link count and file type (never from
//!   content), and a safe read.
//! - [`Provenance`] remembers the last arrival of every file, so a file
//!   that arrives again (moved back, or on to another inbox) is never newly
//!   verified.
//! - [`InboxWatcher`] scans the inboxes at start, then follows them with
//!   inotify, rescanning when the kernel queue overflows.
//! - [`ArrivalKey`] (path, device, inode, ctime) identifies one arrival;
//!   [`arrival_key`] derives it from a logged payload.
//! - [`submit_task`] is the writer's side: a task appears whole, under a
//!   new name.
//!
//! Limits worth knowing:
//! - A file is examined when its event is handled, not when it happened. A
//!   task that has already left the inbox by then is not recorded, so runs
//!   should only pick tasks whose arrival is in the log.
//! - inotify says when a file is complete (close-write, rename); a scan
//!   (startup, added inbox, overflow) cannot, and records what it lists. A
//!   task written in place across a restart may thus be recorded twice:
//!   partial, then complete on its close-write (a new ctime, a new key).
//! - Metadata-only changes (chmod, chown) are not recorded live, but they
//!   change the ctime, so after a restart the file is recorded again.
//! - Any second record of the same file (rewritten in place, recorded again
//!   after a chmod, written in place across a restart) is a re-arrival and
//!   therefore unverified: doubt never grants trust.
//! - A file hard-linked into an inbox whose other link is removed before
//!   the watcher looks is taken for a file still being written, and is
//!   recorded at the next scan.

mod classify;
mod provenance;
mod submit;
mod watcher;

use std::path::{Path, PathBuf};

use con_event::payloads::InboxArrived;

pub use classify::{Classified, classify, key_of};
pub use provenance::{Provenance, birth_time};
pub use submit::submit_task;
pub use watcher::InboxWatcher;

/// [`InboxSpec::name`] of the outer inbox (human → concierge). Reserved:
/// no agent may be called this.
pub const OUTER_INBOX: &str = "outer";

/// One inbox to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxSpec {
    /// Whose inbox it is: an agent name, or [`OUTER_INBOX`].
    /// Recorded as [`InboxArrived::inbox`].
    pub name: String,
    /// The inbox directory. Made absolute (not canonicalized) when added, so
    /// recorded paths are the configured ones.
    pub dir: PathBuf,
}

/// How the watcher decides trust and how much it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatcherConfig {
    /// Owners that are members of this group (primary or supplementary) make
    /// a task verified. If the group does not exist, only root does.
    pub trusted_group: String,
    /// At most this many bytes of a task are attached; the rest is not read.
    /// A truncated attachment is reported as [`WatchError::Truncated`].
    pub max_content_bytes: usize,
    /// A task larger than this, or sparse, is refused: only its first
    /// [`REFUSED_HEAD_BYTES`] are read, and [`Classified::refused`] says why.
    pub max_task_bytes: u64,
}

/// How much of a refused task is read (and attached): enough to see what it
/// was, never enough to make a flood of them costly.
pub const REFUSED_HEAD_BYTES: usize = 4096;

impl Default for WatcherConfig {
    /// The production host's trusted group; tasks up to 1 MiB, read whole.
    fn default() -> Self {
        Self {
            trusted_group: con_layout::Layout::host().trusted_group(),
            max_content_bytes: 1024 * 1024,
            max_task_bytes: 1024 * 1024,
        }
    }
}

/// The identity of one arrival: the same file at the same path in the same
/// state. A file that is rewritten, chmod-ed or re-linked in place gets a new
/// ctime and is therefore a new arrival.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ArrivalKey {
    /// Absolute path, as recorded in [`InboxArrived::path`] (lossy UTF-8).
    pub path: String,
    /// Device from `lstat`.
    pub dev: u64,
    /// Inode from `lstat`.
    pub inode: u64,
    /// Status change time from `lstat`, nanoseconds since the Unix epoch.
    pub ctime_unix_nanos: i64,
}

/// The key of a logged arrival, for rebuilding the `recorded` set given to
/// [`InboxWatcher::start`].
pub fn arrival_key(p: &InboxArrived) -> ArrivalKey {
    ArrivalKey {
        path: p.path.clone(),
        dev: p.dev,
        inode: p.inode,
        ctime_unix_nanos: p.ctime_unix_nanos,
    }
}

/// Something the watcher could not do. None of these stop it: they are
/// returned by [`InboxWatcher::start`]/[`InboxWatcher::add_inbox`], or handed
/// to the error callback while it keeps running.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was attempted (`lstat`, `open`, `read`, …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An inbox is not a directory.
    #[error("inbox {} is not a directory", path.display())]
    NotADirectory {
        /// The configured inbox path.
        path: PathBuf,
    },
    /// inotify refused to watch an inbox (e.g. the watch limit is reached).
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The inbox directory.
        path: PathBuf,
        /// The notify error.
        #[source]
        source: notify::Error,
    },
    /// The inotify backend reported an error; all inboxes were rescanned.
    #[error("inotify error: {source}")]
    Notify {
        /// The notify error (its `paths` name what it concerned, if anything).
        #[source]
        source: notify::Error,
    },
    /// A task was larger than [`WatcherConfig::max_content_bytes`]: only its
    /// first `recorded` bytes were attached (and hashed).
    #[error("{}: {size} bytes, only the first {recorded} were recorded", path.display())]
    Truncated {
        /// The task file.
        path: PathBuf,
        /// Its size when it was read.
        size: u64,
        /// How many bytes were attached.
        recorded: usize,
    },
    /// An inbox directory was removed or moved away. It is no longer
    /// watched; [`InboxWatcher::add_inbox`] it again once it is back.
    #[error("inbox {name} ({}) was removed or moved away", path.display())]
    InboxGone {
        /// The inbox's name.
        name: String,
        /// The directory that went away.
        path: PathBuf,
    },
    /// The watcher thread has stopped (its output receiver was dropped).
    #[error("the inbox watcher has stopped")]
    Stopped,
}

impl WatchError {
    /// The file or directory the error concerns, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            WatchError::Io { path, .. }
            | WatchError::NotADirectory { path }
            | WatchError::Watch { path, .. }
            | WatchError::Truncated { path, .. }
            | WatchError::InboxGone { path, .. } => Some(path),
            WatchError::Notify { source } => source.paths.first().map(PathBuf::as_path),
            WatchError::Stopped => None,
        }
    }
}

/// Whether a directory entry's name makes it a task: `<id>.task` with a
/// non-empty id. Bytes, not UTF-8, so odd names are still seen. What the
/// watcher records is what the daemon and the runner take up.
pub fn is_task_name(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.file_name()
        .map(|n| n.as_bytes())
        .is_some_and(|n| n.len() > TASK_SUFFIX.len() && n.ends_with(TASK_SUFFIX))
}

pub(crate) const TASK_SUFFIX: &[u8] = b".task";
