//! Provisioning: the host state a config implies, as a typed plan that is
//! applied idempotently (only the differences, in dependency order) and
//! checked for drift. This is the only crate that mutates the OS.
//!
//! [`plan::plan`] is pure: from the config, the profile's files (read up
//! front by [`Profile::read`]) and a [`con_layout::Layout`] it computes the ordered
//! [`Resource`]s. [`apply()`] compares each with the host and fixes only
//! the differences; [`check`] runs the same comparison without fixing.
//! [`quarantine`] is what enforcement changes on the host (an inbox's write
//! grants, an agent's systemd units), called by the daemon.

mod api;
pub mod apply;
pub mod commission;
pub mod config_edit;
pub mod contract_file;
pub mod egress;
mod host;
pub mod instructions;
pub mod plan;
pub mod policy;
pub mod profile;
pub mod quarantine;
pub mod shipped;
pub mod sudoers;
pub mod units;

use std::path::Path;

pub use apply::{ApplyOptions, Drift, Report, Step, StepStatus, apply, check};
pub use commission::{Decommissioned, Installed, commission, decommission};
pub use config_edit::NewAgent;
pub use plan::{Plan, PlanInput, Resource, plan};
pub use profile::Profile;

/// Why provisioning could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The config, profile or options are not acceptable; one line.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl ProvisionError {
    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        ProvisionError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Applying needs root (accounts, ownership, ACLs, sudoers); checked first
/// so that a non-root run fails on one line instead of half-way.
pub fn require_root() -> Result<(), ProvisionError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(
            "con bootstrap must run as root (try --dry-run or --check)".to_owned(),
        ))
    }
}
