//! The file operations con's guarantees rest on, each defined once.
//!
//! - [`StagedFile`] / [`replace_file`]: a file is replaced whole and
//!   durably. Readers (the inbox watcher, a run reading its history, sudo,
//!   systemd) see the old content or the new, never part of either, and
//!   after a crash the file holds one or the other.
//! - [`rename_noreplace`] / [`move_without_replacing`]: a file is moved
//!   without ever replacing what is at the destination (a task is never
//!   overwritten by another of the same name).

use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How many `-N` suffixes [`move_without_replacing`] tries.
const FREE_NAME_ATTEMPTS: u32 = 1000;

/// A file operation that failed: what was attempted, on which path.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {cause}", path.display())]
pub struct FsError {
    /// What was attempted.
    pub op: &'static str,
    /// On what.
    pub path: PathBuf,
    /// The OS error.
    pub cause: io::Error,
}

impl FsError {
    fn new(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.to_path_buf();
        move |cause| Self { op, path, cause }
    }

    /// The kind of the OS error (`AlreadyExists` when a destination is
    /// taken, …).
    pub fn kind(&self) -> io::ErrorKind {
        self.cause.kind()
    }
}

/// A new version of a file, written under a hidden temporary name in the
/// target's directory until [`StagedFile::commit`] renames it into place.
///
/// Same directory, so the rename is atomic; hidden (`.<name>.<random>.tmp`),
/// so inbox watchers, sudo and systemd ignore it meanwhile. Dropped without
/// a commit, it is removed and the target is untouched.
#[derive(Debug)]
pub struct StagedFile {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
    dir: PathBuf,
}

impl StagedFile {
    /// Starts a new version of `target`, created with `mode` less the
    /// process's umask (as `File::create` would, so an agent's file gets the
    /// mode its other files get); [`StagedFile::set_mode`] sets it exactly.
    pub fn begin(target: &Path, mode: u32) -> Result<Self, FsError> {
        let name = target.file_name().ok_or_else(|| FsError {
            op: "replace",
            path: target.to_path_buf(),
            cause: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut prefix = OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(&dir)
            .map_err(FsError::new("create a temporary file in", &dir))?;
        Ok(Self {
            temp,
            target: target.to_path_buf(),
            dir,
        })
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), FsError> {
        self.temp
            .write_all(bytes)
            .map_err(FsError::new("write", self.temp.path()))
    }

    /// Gives the new version this owner and group (before it becomes
    /// visible, so it never has the wrong owner under the target's name).
    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), FsError> {
        nix::unistd::fchown(
            self.temp.as_file(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| FsError::new("chown", self.temp.path())(e.into()))
    }

    /// Gives the new version exactly this mode (the umask does not apply).
    pub fn set_mode(&self, mode: u32) -> Result<(), FsError> {
        self.temp
            .as_file()
            .set_permissions(Permissions::from_mode(mode))
            .map_err(FsError::new("chmod", self.temp.path()))
    }

    /// Where the new version is until the commit (to have it checked, e.g.
    /// by `visudo -c -f`).
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Syncs the new content, renames it over the target, and syncs the
    /// directory, so the replacement survives a crash once this returns.
    pub fn commit(self) -> Result<(), FsError> {
        self.sync()?;
        let Self { temp, target, dir } = self;
        temp.persist(&target)
            .map_err(|e| FsError::new("rename into place", &target)(e.error))?;
        sync_dir(&dir)
    }

    /// Like [`StagedFile::commit`], but fails with `AlreadyExists` (and
    /// removes the new version) if something is at the target already.
    pub fn commit_new(self) -> Result<(), FsError> {
        self.sync()?;
        let Self { temp, target, dir } = self;
        rename_noreplace(temp.path(), &target)?;
        // Renamed away: nothing is left to remove under the temporary name.
        let _ = temp.into_temp_path().keep();
        sync_dir(&dir)
    }

    fn sync(&self) -> Result<(), FsError> {
        self.temp
            .as_file()
            .sync_all()
            .map_err(FsError::new("sync", self.temp.path()))
    }
}

/// Replaces `target` with `bytes` through a [`StagedFile`] created with
/// `mode` (less the umask): readers see the old content or the new, and the
/// new is durable once this returns.
pub fn replace_file(target: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let mut staged = StagedFile::begin(target, mode)?;
    staged.write_all(bytes)?;
    staged.commit()
}

/// Syncs directory `dir`, which makes the renames into it durable.
fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FsError::new("sync directory", dir))
}

/// Renames `from` to `to` unless `to` exists (`renameat2(RENAME_NOREPLACE)`:
/// checked and renamed in one step, so no writer can slip in between). A
/// taken destination fails with `AlreadyExists`.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<(), FsError> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| FsError::new("rename without replacing", to)(e.into()))
}

/// Moves `from` into `dir` as `name`, or as `<stem>-N.<ext>` for the first
/// N that is free, never replacing anything; returns where it went. The
/// inode moves, so its owner (a task's provenance) goes with it.
pub fn move_without_replacing(from: &Path, dir: &Path, name: &str) -> Result<PathBuf, FsError> {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, Some(ext)),
        _ => (name, None),
    };
    let mut dest = dir.join(name);
    for n in 1..=FREE_NAME_ATTEMPTS {
        match rename_noreplace(from, &dest) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                dest = dir.join(match ext {
                    Some(ext) => format!("{stem}-{n}.{ext}"),
                    None => format!("{stem}-{n}"),
                });
            }
            other => return other.map(|()| dest),
        }
    }
    Err(FsError {
        op: "move without replacing",
        path: dir.join(name),
        cause: io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{FREE_NAME_ATTEMPTS} files of that name are there already"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_reader_sees_the_old_content_or_the_new_never_a_mix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        let old = vec![b'o'; 64 * 1024];
        let new = vec![b'n'; 64 * 1024];
        fs::write(&path, &old).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), done.clone());
            let (old, new) = (old.clone(), new.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(Ordering::SeqCst) {
                    let seen = fs::read(&path).unwrap();
                    assert!(
                        seen == old || seen == new,
                        "a read saw {} bytes of a mix",
                        seen.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..200 {
            replace_file(&path, if i % 2 == 0 { &new } else { &old }, 0o644).unwrap();
        }
        done.store(true, Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(names(dir.path()), ["status"]);
    }

    #[test]
    fn an_uncommitted_or_failed_replacement_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.response");
        fs::write(&path, "old").unwrap();
        let mut staged = StagedFile::begin(&path, 0o600).unwrap();
        staged.write_all(b"half of the new").unwrap();
        let temp = staged.temp_path().to_path_buf();
        assert!(
            temp.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".a.response.")
        );
        assert!(temp.extension().is_some_and(|e| e == "tmp"));
        drop(staged);
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(dir.path()), ["a.response"]);
        // A directory that is not there: nothing is created anywhere.
        assert!(replace_file(&dir.path().join("no-such-dir/b"), b"x", 0o600).is_err());
        assert_eq!(names(dir.path()), ["a.response"]);
    }

    #[test]
    fn the_committed_file_has_the_mode_and_owner_set_and_a_synced_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unit");
        let mut staged = StagedFile::begin(&path, 0o600).unwrap();
        staged.write_all(b"new").unwrap();
        staged.set_mode(0o444).unwrap();
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        staged.set_owner(me.0, me.1).unwrap();
        staged.commit().unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o444);
        assert_eq!((meta.uid(), meta.gid()), me);
        assert_eq!(fs::read(&path).unwrap(), b"new");
        // The directory sync is what makes the rename durable; all a test
        // can observe is that it is done on the target's directory, which
        // must therefore be openable.
        let err = sync_dir(&dir.path().join("gone")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().starts_with("sync directory "), "{err}");
    }

    #[test]
    fn commit_new_refuses_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.task");
        let mut first = StagedFile::begin(&path, 0o644).unwrap();
        first.write_all(b"first").unwrap();
        first.commit_new().unwrap();
        let mut second = StagedFile::begin(&path, 0o644).unwrap();
        second.write_all(b"second").unwrap();
        assert_eq!(
            second.commit_new().unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");
        assert_eq!(names(dir.path()), ["t.task"]);
    }

    #[test]
    fn rename_noreplace_refuses_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "a").unwrap();
        fs::write(&b, "b").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&b).unwrap(), "b");
        assert_eq!(fs::read_to_string(&a).unwrap(), "a");
        let c = dir.path().join("c");
        rename_noreplace(&a, &c).unwrap();
        assert_eq!(names(dir.path()), ["b", "c"]);
    }

    #[test]
    fn move_without_replacing_takes_the_first_free_suffix() {
        let src = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        fs::write(dest.path().join("t.task"), "earlier").unwrap();
        fs::write(dest.path().join("t-1.task"), "earlier too").unwrap();
        let task = src.path().join("t.task");
        fs::write(&task, "now").unwrap();
        let moved = move_without_replacing(&task, dest.path(), "t.task").unwrap();
        assert_eq!(moved, dest.path().join("t-2.task"));
        assert_eq!(fs::read_to_string(&moved).unwrap(), "now");
        assert_eq!(
            fs::read_to_string(dest.path().join("t.task")).unwrap(),
            "earlier"
        );
        assert!(!task.exists());
        // A missing source is an error, not a search for a free name.
        let err = move_without_replacing(&task, dest.path(), "t.task").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
