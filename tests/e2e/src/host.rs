//! The host side: the gate, prerequisites, the tools we call and where the
//! harness keeps its files.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Set to `1` to run the end-to-end tests (they need root); unset, they skip.
pub const ENABLE_VAR: &str = "CON_E2E";
/// Overrides the con binary copied into containers.
pub const BIN_VAR: &str = "CON_E2E_BIN";
/// Overrides where images are cached (default [`DEFAULT_CACHE_DIR`]).
pub const CACHE_VAR: &str = "CON_E2E_CACHE";
/// Overrides where containers keep their writable layers (default [`DEFAULT_RUN_DIR`]).
pub const RUN_DIR_VAR: &str = "CON_E2E_RUN_DIR";
/// Overrides the Debian mirror debootstrap downloads from.
pub const MIRROR_VAR: &str = "CON_E2E_MIRROR";

/// Where images live unless [`CACHE_VAR`] says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/con-e2e";
/// Where container state lives unless [`RUN_DIR_VAR`] says otherwise. Not a
/// tmpfs on purpose: the overlay's upper layer holds everything a test writes.
pub const DEFAULT_RUN_DIR: &str = "/var/tmp/con-e2e";
/// The mirror debootstrap uses unless [`MIRROR_VAR`] says otherwise.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Whether the end-to-end tests should run in this process.
///
/// `true` only when `CON_E2E=1`; a test that gets `true` must then run and
/// fail loudly on a missing prerequisite (booting reports it). Otherwise this
/// writes why the test is skipped, and what this machine lacks, straight to
/// the process's stderr (not the captured test output, so `cargo test` shows
/// it) and returns `false`: the caller returns early and passes.
pub fn enabled() -> bool {
    let value = std::env::var(ENABLE_VAR).unwrap_or_default();
    if value == "1" {
        return true;
    }
    let missing = missing_prerequisites();
    let lacking = if missing.is_empty() {
        String::from("this machine has everything they need")
    } else {
        format!("this machine also lacks: {}", missing.join("; "))
    };
    let setting = if value.is_empty() {
        format!("{ENABLE_VAR} is not set")
    } else {
        format!("{ENABLE_VAR}={value:?} (only 1 enables them)")
    };
    // A failed write to stderr leaves nothing better to report to.
    let _ = writeln!(
        std::io::stderr(),
        "con-e2e: skipping end-to-end test: {setting}; run `make e2e` as root \
         (or CON_E2E=1 cargo test -p con-e2e -- --test-threads=1); {lacking}"
    );
    false
}

/// The host tools the harness drives, resolved to absolute paths.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `systemd-nspawn` (package systemd-container).
    pub nspawn: PathBuf,
    /// `nsenter` (util-linux).
    pub nsenter: PathBuf,
    /// `debootstrap`.
    pub debootstrap: PathBuf,
    /// `tar`, used by [`crate::Container::copy_in`].
    pub tar: PathBuf,
}

impl Tools {
    /// Finds every tool and checks the machine can run containers, or says
    /// everything that is missing in one error.
    pub fn find() -> Result<Tools> {
        let missing = missing_prerequisites();
        if !missing.is_empty() {
            return Err(Error::Prerequisite(missing.join("; ")));
        }
        let find = |name: &str| {
            which(name).ok_or_else(|| Error::Prerequisite(format!("{name} not found in PATH")))
        };
        Ok(Tools {
            nspawn: find("systemd-nspawn")?,
            nsenter: find("nsenter")?,
            debootstrap: find("debootstrap")?,
            tar: find("tar")?,
        })
    }
}

/// Everything this machine lacks to run the suite, as short phrases.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(String::from("root (containers and debootstrap need it)"));
    }
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("tar", "tar"),
    ] {
        if which(tool).is_none() {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|list| {
            list.lines()
                .any(|line| line.trim_end().ends_with("\toverlay"))
        })
        .unwrap_or(false);
    if !overlay {
        missing.push(String::from(
            "overlayfs in the kernel (/proc/filesystems; try modprobe overlay)",
        ));
    }
    missing
}

/// The first executable called `name` on `PATH` (plus the sbin directories a
/// non-login root shell may lack).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The workspace root (this crate lives in `tests/e2e`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The con binary to install in containers: `$CON_E2E_BIN`, else
/// `<target dir>/debug/con` (`$CARGO_TARGET_DIR` or the workspace's `target/`).
pub fn con_binary() -> Result<PathBuf> {
    let (path, origin) = match std::env::var_os(BIN_VAR) {
        Some(path) => (PathBuf::from(path), format!("${BIN_VAR}")),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace().join("target"), PathBuf::from);
            (
                target.join("debug/con"),
                String::from("the default location"),
            )
        }
    };
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::Prerequisite(format!(
            "no con binary at {} ({origin}): build it first with `cargo build -p con` \
             (`make e2e` does), or point {BIN_VAR} at one",
            path.display()
        )))
    }
}

/// The directory images are cached in.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_VAR).map_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR), PathBuf::from)
}

/// The directory containers keep their state in.
pub fn run_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_VAR).map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
}

/// The Debian mirror for debootstrap.
pub fn mirror() -> String {
    std::env::var(MIRROR_VAR).unwrap_or_else(|_| String::from(DEFAULT_MIRROR))
}

/// Creates `dir` (and parents) if needed.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// The scripted model server to install in containers (`con-llm-script`):
/// `$CON_E2E_SCRIPT_BIN`, else `<workspace>/target/debug/con-llm-script`.
pub fn script_server_binary() -> PathBuf {
    std::env::var_os("CON_E2E_SCRIPT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/con-llm-script"))
}
