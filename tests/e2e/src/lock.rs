//! flock(2) on small lock files: how test processes running at the same time
//! agree on who builds an image, which images are in use, and which container
//! directories belong to a live process. The kernel drops a flock when its
//! holder dies, so a killed test never leaves a lock behind.

use std::fs::{File, OpenOptions};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// A held flock; released on drop.
pub(crate) type Lock = Flock<File>;

/// How to take a lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Exclusive, waiting for other holders.
    Exclusive,
    /// Shared, waiting for an exclusive holder.
    Shared,
    /// Exclusive, or `None` at once if anyone holds it.
    TryExclusive,
}

/// Opens (creating) `path` and locks it. `None` only for
/// [`Mode::TryExclusive`] when someone else holds the lock.
pub(crate) fn lock(path: &Path, mode: Mode) -> Result<Option<Lock>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(format!("opening lock file {}", path.display()), e))?;
    let arg = match mode {
        Mode::Exclusive => FlockArg::LockExclusive,
        Mode::Shared => FlockArg::LockShared,
        Mode::TryExclusive => FlockArg::LockExclusiveNonblock,
    };
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) if matches!(mode, Mode::TryExclusive) => Ok(None),
        Err((_, errno)) => Err(Error::Lock {
            what: format!("locking {}", path.display()),
            errno,
        }),
    }
}

/// Like [`lock`] for the blocking modes, which always yield a lock.
pub(crate) fn lock_wait(path: &Path, mode: Mode) -> Result<Lock> {
    lock(path, mode)?.ok_or_else(|| Error::Lock {
        what: format!("locking {}", path.display()),
        errno: Errno::EWOULDBLOCK,
    })
}
