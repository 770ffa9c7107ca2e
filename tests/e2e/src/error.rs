//! What can go wrong while building an image, booting a container or running
//! a command in it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::exec::Output;

/// An end-to-end harness failure. Its `Debug` form is its `Display` form, so a
/// test that unwraps one prints the full, readable message (including any
/// command output or journal excerpt it carries).
#[derive(thiserror::Error)]
pub enum Error {
    /// The machine cannot run the suite (not root, a tool missing, no con binary).
    #[error("end-to-end prerequisite missing: {0}")]
    Prerequisite(String),
    /// A host-side file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A lock on a cache or state file could not be taken.
    #[error("{what}: {errno}")]
    Lock {
        /// Which lock, naming the path.
        what: String,
        /// The error flock(2) returned.
        errno: nix::errno::Errno,
    },
    /// debootstrap (or a step preparing its result) failed.
    #[error(
        "building the e2e image failed: {reason}\n(full log: {log})\n--- last lines ---\n{tail}"
    )]
    ImageBuild {
        /// What failed.
        reason: String,
        /// The build log.
        log: PathBuf,
        /// The end of the build log.
        tail: String,
    },
    /// The container did not reach `running`/`degraded`.
    #[error("container {machine} did not boot: {reason}\n{diagnostics}")]
    Boot {
        /// The machine name.
        machine: String,
        /// Why the boot was given up.
        reason: String,
        /// Journal, failed units and nspawn output, as far as they could be read.
        diagnostics: String,
    },
    /// A command ran but exited unsuccessfully where success was required.
    #[error("{0}")]
    Failed(Box<Output>),
    /// A command did not finish in time and was killed.
    #[error("timed out after {after:?} and was killed: {output}")]
    Timeout {
        /// The time limit.
        after: Duration,
        /// What the command printed before it was killed.
        output: Box<Output>,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// An [`Error::Io`] for `what` (which should name the path involved).
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Results of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;
