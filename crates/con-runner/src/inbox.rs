//! Picking tasks: oldest first by name, one session per task even when
//! several runs of the same agent drain the inbox at once.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// `.task` entries of `inbox` (`<id>.task`, non-empty id, as the inbox
/// watcher defines them), sorted by name.
pub(crate) fn pending(inbox: &Path) -> io::Result<Vec<PathBuf>> {
    let mut tasks: Vec<PathBuf> = fs::read_dir(inbox)?
        .filter_map(Result::ok)
        .filter(|e| con_inbox::is_task_name(Path::new(&e.file_name())))
        .map(|e| e.path())
        .collect();
    tasks.sort();
    Ok(tasks)
}

/// An exclusive claim on one task id, held for the whole session.
///
/// A `flock` on `sessions/<id>.lock`: the task file itself may be a symlink
/// or a FIFO, which must not be opened. The lock file is removed only
/// after the task has left the inbox, so whoever still waits on the old
/// file finds the task gone and skips it.
pub(crate) struct Claim {
    lock: Flock<File>,
    path: PathBuf,
}

impl Claim {
    /// Claims `id`, or `None` if another run holds it.
    pub(crate) fn take(sessions: &Path, id: &str) -> io::Result<Option<Self>> {
        let path = sessions.join(format!("{id}.lock"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(Self { lock, path })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }

    /// Releases the claim; `task_left` removes the lock file too.
    pub(crate) fn release(self, task_left: bool) {
        if task_left {
            let _ = fs::remove_file(&self.path);
        }
        drop(self.lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_lists_only_task_names_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "b.task",
            "a.task",
            ".task",
            "c.task.tmp",
            ".d.task.tmp",
            "e.txt",
            "0.task",
        ] {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        let names: Vec<String> = pending(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["0.task", "a.task", "b.task"]);
    }

    #[test]
    fn a_claim_is_exclusive_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = Claim::take(dir.path(), "t").unwrap().unwrap();
        assert!(Claim::take(dir.path(), "t").unwrap().is_none());
        assert!(Claim::take(dir.path(), "u").unwrap().is_some());
        first.release(false);
        assert!(dir.path().join("t.lock").exists());
        let again = Claim::take(dir.path(), "t").unwrap().unwrap();
        again.release(true);
        assert!(!dir.path().join("t.lock").exists());
    }
}
