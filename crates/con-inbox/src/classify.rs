//! The per-file step: provenance from `lstat`, then a read that cannot be
//! redirected to another file.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use con_event::payloads::{InboxArrived, Trust};
use con_event::{Actor, BlobRef, NewEvent};
use nix::fcntl::OFlag;
use nix::unistd::{Gid, Group, Uid, User};
use posix_acl::{ACLEntry, PosixACL, Qualifier};

use crate::{ArrivalKey, TASK_SUFFIX, WatchError, WatcherConfig};

/// What [`classify`] found out about one directory entry: everything an
/// `inbox.arrived` event records except the inbox's name, plus the content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// Path, device, inode and ctime from `lstat`.
    pub key: ArrivalKey,
    /// Owner uid from `lstat`.
    pub owner_uid: u32,
    /// Owner gid from `lstat`.
    pub owner_gid: u32,
    /// Mode (type and permission bits) from `lstat`.
    pub mode: u32,
    /// Hard link count from `lstat`.
    pub nlink: u64,
    /// Whether the entry is a symlink (never followed).
    pub symlink: bool,
    /// Kernel-decided provenance.
    pub trust: Trust,
    /// Why that trust, for humans.
    pub trust_reason: String,
    /// The bytes to attach: the file's content up to the cap; for a symlink
    /// the link's target path; empty for anything that is neither a regular
    /// file nor a symlink (a FIFO is never opened).
    pub content: Vec<u8>,
    /// Size of the entry when it was read (the content may be shorter).
    pub size: u64,
    /// Whether `content` was cut at [`WatcherConfig::max_content_bytes`]
    /// (or at [`crate::REFUSED_HEAD_BYTES`] for a refused task).
    pub truncated: bool,
    /// Why the task must not be run, when it must not: larger than
    /// [`WatcherConfig::max_task_bytes`], or sparse. Its content is then only
    /// its first bytes.
    pub refused: Option<String>,
}

impl Classified {
    /// The task id: the file name without `.task`.
    pub fn task_id(&self) -> String {
        let name = Path::new(&self.key.path)
            .file_name()
            .map(|n| n.as_bytes())
            .unwrap_or_default();
        let id = name.strip_suffix(TASK_SUFFIX).unwrap_or(name);
        String::from_utf8_lossy(id).into_owned()
    }

    /// The `inbox.arrived` payload for this entry in inbox `inbox`. Its
    /// `content` is `BlobRef::of(&self.content)`: the attached bytes, which
    /// for a truncated task are not the whole file.
    pub fn payload(&self, inbox: &str) -> InboxArrived {
        InboxArrived {
            inbox: inbox.to_owned(),
            path: self.key.path.clone(),
            owner_uid: self.owner_uid,
            owner_gid: self.owner_gid,
            mode: self.mode,
            nlink: self.nlink,
            dev: self.key.dev,
            inode: self.key.inode,
            ctime_unix_nanos: self.key.ctime_unix_nanos,
            symlink: self.symlink,
            trust: self.trust,
            trust_reason: self.trust_reason.clone(),
            content: BlobRef::of(&self.content),
        }
    }

    /// The event to append: system actor (the daemon records what the
    /// kernel reported), the task id, and the content as the only attachment.
    pub fn into_event(self, inbox: &str) -> NewEvent {
        let payload = self.payload(inbox);
        NewEvent {
            actor: Actor::system(),
            session: None,
            task: Some(self.task_id()),
            causation: None,
            payload: payload.into(),
            attachments: vec![self.content],
        }
    }
}

/// Examines one inbox entry without trusting anything it says about itself.
///
/// `lstat` gives owner, mode, links and identity; a symlink is never
/// followed (its target path is the content); a regular file is opened with
/// `O_NOFOLLOW|O_NONBLOCK` and read only if the opened inode is the one
/// `lstat` saw. Trust: symlinks, non-regular files and files with more than
/// one link are unverified; otherwise a file owned by uid 0 or a member of
/// [`WatcherConfig::trusted_group`] is verified unless its mode or access
/// ACL lets anyone untrusted write it (then the reason names the grant).
/// Whether the file arrived before is not known here: see
/// [`crate::Provenance`].
///
/// `Ok(None)` means the entry vanished or was replaced before it could be
/// read (a replacement arrives with its own inotify event). The file name is
/// not checked here: deciding what is a task is the caller's business.
pub fn classify(path: &Path, config: &WatcherConfig) -> Result<Option<Classified>, WatchError> {
    let path = std::path::absolute(path).map_err(|e| io_err("resolve", path, e))?;
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if vanished(&e) => return Ok(None),
        Err(e) => return Err(io_err("lstat", &path, e)),
    };
    classify_with(&path, &meta, config)
}

/// [`classify`] for an absolute `path` already `lstat`-ed into `meta`.
pub(crate) fn classify_with(
    path: &Path,
    meta: &Metadata,
    config: &WatcherConfig,
) -> Result<Option<Classified>, WatchError> {
    let key = key_of(path, meta);
    let file_type = meta.file_type();
    let cap = config.max_content_bytes;

    let refused = refusal(meta, config.max_task_bytes);
    let cap = if refused.is_some() {
        cap.min(crate::REFUSED_HEAD_BYTES)
    } else {
        cap
    };

    let (content, size, truncated, trust, trust_reason) = if file_type.is_symlink() {
        let Some(target) = read_link_checked(path, meta)? else {
            return Ok(None);
        };
        let size = target.len() as u64;
        let (content, truncated) = cut(target, cap);
        (
            content,
            size,
            truncated,
            Trust::Unverified,
            "symlink".to_owned(),
        )
    } else if !file_type.is_file() {
        (
            Vec::new(),
            meta.size(),
            false,
            Trust::Unverified,
            format!("not a regular file ({})", type_name(meta)),
        )
    } else {
        let Some((content, size, truncated, acl)) = read_checked(path, meta, cap)? else {
            return Ok(None);
        };
        let (trust, reason) = if meta.nlink() > 1 {
            (Trust::Unverified, format!("{} hard links", meta.nlink()))
        } else {
            match owner_trust(meta.uid(), &config.trusted_group) {
                (Trust::Verified, reason) => {
                    match foreign_write_grant(&acl, meta.gid(), &config.trusted_group) {
                        Some(grant) => (
                            Trust::Unverified,
                            format!("{reason}, but {grant}: its content may not be the owner's"),
                        ),
                        None => (Trust::Verified, reason),
                    }
                }
                unverified => unverified,
            }
        };
        (content, size, truncated, trust, reason)
    };

    Ok(Some(Classified {
        key,
        owner_uid: meta.uid(),
        owner_gid: meta.gid(),
        mode: meta.mode(),
        nlink: meta.nlink(),
        symlink: file_type.is_symlink(),
        trust,
        trust_reason,
        content,
        size,
        truncated,
        refused,
    }))
}

/// A hole this large makes a file sparse: smaller gaps are how filesystems
/// store small or freshly written files (inline data, delayed allocation).
const SPARSE_HOLE_BYTES: u64 = 64 * 1024;

/// Why a regular file must not be run as a task, from `lstat` alone (before
/// anything is read): too large, or sparse — a file whose size costs its
/// writer no disk, and would cost the log a copy of its zeros.
fn refusal(meta: &Metadata, max_task_bytes: u64) -> Option<String> {
    if !meta.file_type().is_file() {
        return None;
    }
    let size = meta.size();
    let allocated = meta.blocks().saturating_mul(512);
    if size > max_task_bytes {
        Some(format!(
            "the task is {size} bytes, over the {max_task_bytes}-byte limit"
        ))
    } else if size.saturating_sub(allocated) >= SPARSE_HOLE_BYTES {
        Some(format!(
            "the task is sparse: {size} bytes with only {allocated} on disk"
        ))
    } else {
        None
    }
}

/// The arrival key of an absolute `path` whose `lstat` is `meta`.
/// The arrival key of the entry at `path` with `lstat` result `meta`.
pub fn key_of(path: &Path, meta: &Metadata) -> ArrivalKey {
    ArrivalKey {
        path: path.to_string_lossy().into_owned(),
        dev: meta.dev(),
        inode: meta.ino(),
        ctime_unix_nanos: meta
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.ctime_nsec()),
    }
}

/// Errors that mean "the entry is gone", which is normal in a busy inbox.
pub(crate) fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> WatchError {
    WatchError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn same_inode(a: &Metadata, b: &Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// What [`read_checked`] read: content, size, whether the content was cut,
/// and the access ACL.
type ReadFile = (Vec<u8>, u64, bool, Vec<ACLEntry>);

/// Opens and reads the regular file `lstat` described, with its access ACL
/// (read through the open descriptor, so it is that file's), or `None` if
/// the path now names something else.
fn read_checked(path: &Path, meta: &Metadata, cap: usize) -> Result<Option<ReadFile>, WatchError> {
    // O_NOFOLLOW: a symlink swapped in after lstat fails with ELOOP instead of
    // being followed. O_NONBLOCK: a FIFO swapped in cannot hang the watcher.
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if vanished(&e) || e.raw_os_error() == Some(nix::libc::ELOOP) => return Ok(None),
        Err(e) => return Err(io_err("open", path, e)),
    };
    let opened = file.metadata().map_err(|e| io_err("fstat", path, e))?;
    if !same_inode(meta, &opened) || !opened.is_file() {
        return Ok(None);
    }
    let (content, truncated) =
        read_capped(&file, cap, opened.len()).map_err(|e| io_err("read", path, e))?;
    let size = opened.len().max(content.len() as u64);
    // The ACL is read after the content: only the owner may change it, so a
    // grant that was there while the content could be written by others is
    // either still there or was removed by the (trusted) owner.
    let acl = access_acl(&file, path)?;
    Ok(Some((content, size, truncated, acl)))
}

/// The access ACL of the open `file` (a minimal one, from the mode, when it
/// has no extended ACL). Read through `/proc/self/fd` rather than by path:
/// the path may name another file by now, the descriptor cannot.
fn access_acl(file: &File, path: &Path) -> Result<Vec<ACLEntry>, WatchError> {
    use std::os::fd::AsRawFd;
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    PosixACL::read_acl(&fd_path)
        .map(|acl| acl.entries())
        .map_err(|e| WatchError::Io {
            op: "read ACL",
            path: path.to_owned(),
            source: e
                .as_io_error()
                .map(|io| io::Error::new(io.kind(), io.to_string()))
                .unwrap_or_else(|| io::Error::other(e.to_string())),
        })
}

/// The first write grant in `acl` to someone outside the trusted set, said
/// for humans; `None` if only the owner (already known trusted) and trusted
/// principals may write. Named users, the owning group and named groups are
/// limited by the mask, as the kernel limits them. A group counts as trusted
/// only if it *is* the trusted group: other groups' members are not all
/// known to be trusted. Any lookup failure counts as untrusted.
pub(crate) fn foreign_write_grant(
    acl: &[ACLEntry],
    owner_gid: u32,
    trusted_group: &str,
) -> Option<String> {
    const W: u32 = 0o2;
    let mask = acl
        .iter()
        .find(|e| e.qual == Qualifier::Mask)
        .map_or(0o7, |e| e.perm);
    let trusted_gid = Group::from_name(trusted_group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let group_name = |gid: u32| {
        Group::from_gid(Gid::from_raw(gid))
            .ok()
            .flatten()
            .map_or_else(
                || format!("gid {gid}"),
                |g| format!("group {} (gid {gid})", g.name),
            )
    };
    for entry in acl {
        let writable = entry.perm & W != 0;
        let masked = entry.perm & mask & W != 0;
        match entry.qual {
            Qualifier::UserObj | Qualifier::Mask => {}
            Qualifier::User(uid) if masked => {
                let (trust, _) = owner_trust(uid, trusted_group);
                if trust != Trust::Verified {
                    let who = User::from_uid(Uid::from_raw(uid))
                        .ok()
                        .flatten()
                        .map_or_else(
                            || format!("uid {uid}"),
                            |u| format!("user {} (uid {uid})", u.name),
                        );
                    return Some(format!("its ACL lets {who} write it"));
                }
            }
            Qualifier::GroupObj if masked && Some(owner_gid) != trusted_gid => {
                return Some(format!("its owning {} may write it", group_name(owner_gid)));
            }
            Qualifier::Group(gid) if masked && Some(gid) != trusted_gid => {
                return Some(format!("its ACL lets {} write it", group_name(gid)));
            }
            Qualifier::Other if writable => return Some("others may write it".to_owned()),
            Qualifier::Undefined if writable => {
                return Some("it has an ACL entry of unknown type that grants write".to_owned());
            }
            _ => {}
        }
    }
    None
}

/// Reads at most `cap` bytes; one byte more tells whether there was more.
fn read_capped(file: &File, cap: usize, size_hint: u64) -> io::Result<(Vec<u8>, bool)> {
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    let hint = usize::try_from(size_hint.min(limit)).unwrap_or(cap);
    let mut buf = Vec::with_capacity(hint);
    file.take(limit).read_to_end(&mut buf)?;
    Ok(cut(buf, cap))
}

fn cut(mut bytes: Vec<u8>, cap: usize) -> (Vec<u8>, bool) {
    let truncated = bytes.len() > cap;
    bytes.truncate(cap);
    (bytes, truncated)
}

/// The link's target path, or `None` if the link was replaced meanwhile
/// (the target would then describe a different arrival than the key).
fn read_link_checked(path: &Path, meta: &Metadata) -> Result<Option<Vec<u8>>, WatchError> {
    let target = match fs::read_link(path) {
        Ok(t) => t,
        // EINVAL: no longer a symlink.
        Err(e) if vanished(&e) || e.kind() == io::ErrorKind::InvalidInput => return Ok(None),
        Err(e) => return Err(io_err("readlink", path, e)),
    };
    match fs::symlink_metadata(path) {
        Ok(now) if same_inode(meta, &now) => Ok(Some(target.into_os_string().into_vec())),
        Ok(_) => Ok(None),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(io_err("lstat", path, e)),
    }
}

fn type_name(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "unknown type"
    }
}

/// Trust of a single-link regular file owned by `uid`. Any lookup failure
/// leaves the task unverified: doubt never grants trust.
fn owner_trust(uid: u32, group: &str) -> (Trust, String) {
    if uid == 0 {
        return (Trust::Verified, "owner uid 0".into());
    }
    let user = match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return (
                Trust::Unverified,
                format!("owner uid {uid} is not trusted (no such user)"),
            );
        }
        Err(e) => {
            return (
                Trust::Unverified,
                format!("owner uid {uid} is not trusted (user lookup failed: {e})"),
            );
        }
    };
    let who = format!("owner uid {uid} ({})", user.name);
    match Group::from_name(group) {
        Ok(Some(g)) if g.gid == user.gid || g.mem.contains(&user.name) => {
            (Trust::Verified, format!("{who} is in group {group}"))
        }
        Ok(Some(_)) => (
            Trust::Unverified,
            format!("{who} is not trusted (not in group {group})"),
        ),
        Ok(None) => (
            Trust::Unverified,
            format!("{who} is not trusted (group {group} does not exist)"),
        ),
        Err(e) => (
            Trust::Unverified,
            format!("{who} is not trusted (group {group} lookup failed: {e})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_at_most_cap_bytes() {
        assert_eq!(cut(vec![1, 2, 3], 2), (vec![1, 2], true));
        assert_eq!(cut(vec![1, 2], 2), (vec![1, 2], false));
        assert_eq!(cut(vec![], 0), (vec![], false));
    }

    #[test]
    fn task_id_strips_only_the_suffix() {
        let mut c = Classified {
            key: ArrivalKey {
                path: "/srv/con/inbox/20250101-abc.task".into(),
                dev: 1,
                inode: 2,
                ctime_unix_nanos: 3,
            },
            owner_uid: 0,
            owner_gid: 0,
            mode: 0o100644,
            nlink: 1,
            symlink: false,
            trust: Trust::Verified,
            trust_reason: "owner uid 0".into(),
            content: b"hi".to_vec(),
            size: 2,
            truncated: false,
            refused: None,
        };
        assert_eq!(c.task_id(), "20250101-abc");
        c.key.path = "/x/a.task.task".into();
        assert_eq!(c.task_id(), "a.task");
    }
}
