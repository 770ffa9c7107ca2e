//! The end-to-end harness: con under a real systemd.
//!
//! A scenario boots a [`Container`] — systemd as PID 1 in `systemd-nspawn`,
//! on a private overlay of a cached Debian [`Image`] made with debootstrap —
//! with the freshly built con installed, runs commands inside it, and asserts
//! on what the system (systemctl, journalctl, the kernel) says.
//!
//! ```no_run
//! # fn main() -> con_e2e::Result<()> {
//! if !con_e2e::enabled() {
//!     return Ok(()); // CON_E2E=1 not set: skipped, reason printed
//! }
//! let image = con_e2e::Image::ensure()?;
//! let container = con_e2e::Container::boot(&image, "example")?;
//! let version = container.exec_ok(&["con", "--version"])?;
//! assert!(version.stdout.starts_with("con "));
//! # Ok(())
//! # }
//! ```
//!
//! The suite runs only as root with `CON_E2E=1` (`make e2e`); see
//! `tests/e2e/README.md` for the cache, the failure reports and how to write
//! a scenario.

mod container;
mod error;
mod exec;
mod host;
mod image;
mod lock;

pub use container::{
    BootOptions, BootState, CON_PATH, CONFIGS_PATH, Container, DEFAULT_BOOT_TIMEOUT,
};
pub use error::{Error, Result};
pub use exec::{DEFAULT_TIMEOUT, Exec, Output};
pub use host::{
    BIN_VAR, CACHE_VAR, DEFAULT_CACHE_DIR, DEFAULT_MIRROR, DEFAULT_RUN_DIR, ENABLE_VAR, MIRROR_VAR,
    RUN_DIR_VAR, Tools, con_binary, enabled, run_dir, script_server_binary, workspace,
};
pub use image::{DEFAULT_PACKAGES, DEFAULT_SUITE, Image, ImageSpec, PRUNE_AFTER};

/// What a scenario starts with: `None` when the suite is not enabled here
/// ([`enabled`] prints why), else a container booted from the cached
/// image, its name made from `name_hint`.
pub fn scenario(name_hint: &str) -> Result<Option<Container>> {
    if !enabled() {
        return Ok(None);
    }
    let image = Image::ensure()?;
    Container::boot(&image, name_hint).map(Some)
}
