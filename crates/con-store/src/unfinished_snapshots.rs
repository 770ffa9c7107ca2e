//! Removes the snapshot files sled 0.34.7 left half-written.
//!
//! sled writes a page-table snapshot as `snap.<lsn>.generating`, syncs it,
//! and renames it to `snap.<lsn>`. When it opens a database it takes the
//! name that sorts last among *all* `snap.*` files, `.generating` ones
//! included, and a file cut short by `kill -9` then fails its checksum: the
//! open fails with "Read corrupted data at file offset None" and the log
//! cannot be opened at all (sled issues #1527, #1533). A snapshot is only a
//! shortcut over the segment log, which sled replays from the previous
//! complete snapshot, so a file that never reached its rename carries
//! nothing the log does not; removing it before sled looks is safe.
//!
//! Only while no other process holds the database: sled locks its `db` file
//! with `flock`, so the same lock is taken here first (a live writer's
//! `.generating` file must never be removed from under it).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// What the sweep found.
pub(crate) enum Sweep {
    /// The database is not held by anyone and holds no unfinished snapshot.
    Swept,
    /// Another process holds the database; nothing was touched.
    Locked,
}

/// Removes `snap.*.generating` from the database directory `path` if no
/// process holds the database. A directory that does not exist yet (a new
/// log) is swept trivially.
pub(crate) fn sweep(path: &Path) -> io::Result<Sweep> {
    let db_file = path.join("db");
    let file = match OpenOptions::new().read(true).open(&db_file) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sweep::Swept),
        Err(e) => return Err(e),
    };
    let _held: Flock<File> = match lock_within(file, RELEASE_GRACE)? {
        Some(held) => held,
        None => return Ok(Sweep::Locked),
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        File::open(path)?.sync_all()?;
    }
    Ok(Sweep::Swept)
    // The lock is released here, before sled takes it: a process that
    // slips in between finds the directory already clean.
}

/// How long a lock is waited for before the database counts as held.
///
/// Dropping a sled database does not release its lock at once: writes and
/// snapshots sled handed to its own thread pool keep the configuration (and
/// with it the locked file) alive until they finish. Reopening a log just
/// closed in the same process (a test, `con backup`, a restart in place) would
/// otherwise be told another process holds it. A live daemon holds the lock
/// for its whole life, so the wait only delays that refusal.
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Takes `file`'s exclusive `flock`, retrying until `grace` has passed;
/// `None` if it is still held then.
fn lock_within(mut file: File, grace: Duration) -> io::Result<Option<Flock<File>>> {
    let deadline = Instant::now() + grace;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(Some(held)),
            Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                file = returned;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, errno)) => return Err(io::Error::from(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_held_database_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"").unwrap();
        let stale = dir.path().join("snap.0000000000000010.generating");
        std::fs::write(&stale, b"half").unwrap();
        let holder = Flock::lock(
            File::open(dir.path().join("db")).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        assert!(matches!(sweep(dir.path()).unwrap(), Sweep::Locked));
        assert!(stale.exists(), "a held database's files are not touched");
        drop(holder);
        assert!(matches!(sweep(dir.path()).unwrap(), Sweep::Swept));
        assert!(!stale.exists());
    }

    #[test]
    fn a_lock_released_within_the_grace_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"").unwrap();
        let stale = dir.path().join("snap.0000000000000010.generating");
        std::fs::write(&stale, b"half").unwrap();
        let holder = Flock::lock(
            File::open(dir.path().join("db")).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(holder);
        });
        assert!(matches!(sweep(dir.path()).unwrap(), Sweep::Swept));
        assert!(!stale.exists());
        releaser.join().unwrap();
    }
}
