//! The cached Debian root every container boots from.
//!
//! Layout of the cache directory (`/var/cache/con-e2e` by default):
//!
//! ```text
//! .lock                  exclusive while one process checks, builds or prunes
//! <suite>-<key>/         an image root (read-only to containers: their overlay's lower layer)
//! <suite>-<key>.use      shared-locked by every process using that image; mtime = last use
//! .build-XXXXXX/         a build in progress (renamed into place when complete)
//! ```
//!
//! `<key>` hashes the suite, the package list and [`RECIPE`], so changing any
//! of them builds a new image; images no live process uses and nobody used
//! for [`PRUNE_AFTER`] are deleted by the next [`Image::ensure`].

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::host::{self, Tools};
use crate::lock::{self, Lock, Mode};

/// Packages on top of debootstrap's minbase. con needs libacl1 (linked
/// dynamically), acl, sudo, nftables, iproute2 and procps to provision and
/// police agents; systemd, systemd-sysv and dbus make it bootable; make runs
/// the README's quick start (`make run`, `make task`) as written.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "acl",
    "libacl1",
    "sudo",
    "nftables",
    "procps",
    "iproute2",
    "make",
];

/// The Debian release images are made from (the hosts' own release).
pub const DEFAULT_SUITE: &str = "bookworm";

/// Version of the post-debootstrap preparation below; part of the cache key,
/// so bump it whenever [`prepare`] changes.
const RECIPE: &str = "con-e2e image recipe 2";

/// Units masked in the image: timers and jobs that do host maintenance (apt,
/// dpkg backups, filesystem scrubs) and would only add noise and load to a
/// short-lived container.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
];

/// How long an image nobody uses survives before [`Image::ensure`] prunes it.
/// Not zero, so two suites with different package lists run one after the
/// other do not rebuild each other's image every time.
pub const PRUNE_AFTER: Duration = Duration::from_secs(60 * 60);

/// What an image contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// Packages added to minbase (order does not matter).
    pub packages: Vec<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            suite: DEFAULT_SUITE.to_owned(),
            packages: DEFAULT_PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

impl ImageSpec {
    /// The cache key: 16 hex digits of SHA-256 over recipe, suite and the
    /// sorted, deduplicated package list.
    pub fn key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(RECIPE.as_bytes());
        hasher.update(b"\n");
        hasher.update(self.suite.as_bytes());
        for package in self.sorted_packages() {
            hasher.update(b"\n");
            hasher.update(package.as_bytes());
        }
        hex::encode(hasher.finalize()).chars().take(16).collect()
    }

    /// The image's directory name in the cache.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.suite, self.key())
    }

    fn sorted_packages(&self) -> Vec<&str> {
        let mut packages: Vec<&str> = self.packages.iter().map(String::as_str).collect();
        packages.sort_unstable();
        packages.dedup();
        packages
    }
}

/// A built image, ready to boot. Holding it (or a container booted from it)
/// keeps it from being pruned.
#[derive(Debug, Clone)]
pub struct Image {
    root: PathBuf,
    spec: ImageSpec,
    tools: Tools,
    built_in: Option<Duration>,
    in_use: Arc<Lock>,
}

impl Image {
    /// The default image ([`ImageSpec::default`]), built if it is not cached.
    pub fn ensure() -> Result<Image> {
        Image::ensure_spec(&ImageSpec::default())
    }

    /// The image for `spec`, built if it is not cached. Concurrent callers
    /// wait for one build; a build that fails leaves nothing behind.
    pub fn ensure_spec(spec: &ImageSpec) -> Result<Image> {
        let tools = Tools::find()?;
        let cache = host::cache_dir();
        host::create_dir(&cache)?;
        let _building = lock::lock_wait(&cache.join(".lock"), Mode::Exclusive)?;

        let name = spec.dir_name();
        let root = cache.join(&name);
        let built_in = if root.join(STAMP).is_file() {
            None
        } else {
            Some(build(spec, &tools, &cache, &root)?)
        };

        let use_file = cache.join(format!("{name}.use"));
        let in_use = lock::lock_wait(&use_file, Mode::Shared)?;
        // Last use, for pruning. Failing to record it only makes pruning earlier.
        let _ = in_use.set_modified(SystemTime::now());
        prune(&cache, &name)?;
        Ok(Image {
            root,
            spec: spec.clone(),
            tools,
            built_in,
            in_use: Arc::new(in_use),
        })
    }

    /// The image's root directory (never written to by containers).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the image contains.
    pub fn spec(&self) -> &ImageSpec {
        &self.spec
    }

    /// How long building it took, if this call built it (`None`: cached).
    pub fn built_in(&self) -> Option<Duration> {
        self.built_in
    }

    pub(crate) fn tools(&self) -> &Tools {
        &self.tools
    }

    pub(crate) fn in_use(&self) -> Arc<Lock> {
        Arc::clone(&self.in_use)
    }
}

/// Present in a complete image (the rename makes it atomic anyway; this also
/// tells a human what the directory is).
const STAMP: &str = "etc/con-e2e-image";

/// Runs debootstrap into a temporary directory next to `root`, prepares the
/// result and renames it into place.
fn build(spec: &ImageSpec, tools: &Tools, cache: &Path, root: &Path) -> Result<Duration> {
    let started = Instant::now();
    remove_stale_builds(cache)?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache)
        .map_err(|e| {
            Error::io(
                format!("creating a build directory in {}", cache.display()),
                e,
            )
        })?;
    let target = work.path().join("root");
    let log_path = cache.join("build.log");
    let log = fs::File::create(&log_path)
        .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
    let fail = |reason: String| Error::ImageBuild {
        reason,
        log: log_path.clone(),
        tail: tail(&log_path, 30),
    };

    let status = Command::new(&tools.debootstrap)
        .arg("--variant=minbase")
        .arg(format!("--include={}", spec.sorted_packages().join(",")))
        .arg(&spec.suite)
        .arg(&target)
        .arg(host::mirror())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| Error::io(format!("running {}", tools.debootstrap.display()), e))?;
    if !status.success() {
        // debootstrap mounts /proc and /sys in the target and may not have
        // unmounted them when it failed; deleting through them would be wrong.
        unmount_under(work.path());
        return Err(fail(format!("debootstrap {status}")));
    }
    prepare(&target, spec).map_err(|e| fail(e.to_string()))?;
    fs::rename(&target, root).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", target.display(), root.display()),
            e,
        )
    })?;
    Ok(started.elapsed())
}

/// Makes a fresh debootstrap result a good container image.
fn prepare(root: &Path, spec: &ImageSpec) -> Result<()> {
    let write = |path: &str, contents: &str| {
        let path = root.join(path);
        fs::write(&path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    // Empty, not absent: systemd then treats the id as unset without calling
    // it a first boot, and initialises it from the UUID nspawn passes
    // (--uuid), so each container gets its own journal directory and identity.
    write("etc/machine-id", "")?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.symlink_metadata().is_ok() {
        fs::remove_file(&dbus_id)
            .map_err(|e| Error::io(format!("removing {}", dbus_id.display()), e))?;
    }
    std::os::unix::fs::symlink("/etc/machine-id", &dbus_id)
        .map_err(|e| Error::io(format!("linking {}", dbus_id.display()), e))?;

    // debootstrap copies the host's /etc/hostname; without one, the
    // container keeps the hostname nspawn gives it: its machine name.
    let hostname = root.join("etc/hostname");
    if hostname.exists() {
        fs::remove_file(&hostname)
            .map_err(|e| Error::io(format!("removing {}", hostname.display()), e))?;
    }
    let units = root.join("etc/systemd/system");
    for unit in MASKED_UNITS {
        let link = units.join(unit);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link)
                .map_err(|e| Error::io(format!("removing {}", link.display()), e))?;
        }
        std::os::unix::fs::symlink("/dev/null", &link)
            .map_err(|e| Error::io(format!("masking {}", link.display()), e))?;
    }
    // No root password: the container never reaches a network, and a
    // developer can then log in on an interactively booted copy.
    let status = Command::new("passwd")
        .arg(format!("--root={}", root.display()))
        .args(["--delete", "root"])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| Error::io("running passwd --delete root", e))?;
    if !status.success() {
        return Err(Error::Prerequisite(format!(
            "passwd --root {} --delete root: {status}",
            root.display()
        )));
    }
    // debootstrap normally cleans up its downloads; make sure.
    if let Ok(entries) = fs::read_dir(root.join("var/cache/apt/archives")) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "deb") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    write(
        STAMP,
        &format!(
            "con end-to-end test image (tests/e2e); safe to delete.\nsuite: {}\npackages: {}\nkey: {}\nrecipe: {RECIPE}\n",
            spec.suite,
            spec.sorted_packages().join(" "),
            spec.key(),
        ),
    )
}

/// Deletes half-finished builds of processes that died. Called with the
/// cache lock held, so no build is in progress.
fn remove_stale_builds(cache: &Path) -> Result<()> {
    for entry in read_dir(cache)? {
        if entry.file_name().to_string_lossy().starts_with(".build-") {
            unmount_under(&entry.path());
            remove_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// Deletes every image other than `keep` that no process holds and nobody
/// used for [`PRUNE_AFTER`]. Called with the cache lock held.
fn prune(cache: &Path, keep: &str) -> Result<()> {
    for entry in read_dir(cache)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(image) = name.strip_suffix(".use") else {
            continue;
        };
        if image == keep {
            continue;
        }
        let use_file = entry.path();
        let idle = use_file
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|used| used.elapsed().ok())
            .is_none_or(|idle| idle >= PRUNE_AFTER);
        if !idle {
            continue;
        }
        // Someone else's container may boot from it right now.
        let Some(_unused) = lock::lock(&use_file, Mode::TryExclusive)? else {
            continue;
        };
        remove_tree(&cache.join(image))?;
        fs::remove_file(&use_file)
            .map_err(|e| Error::io(format!("removing {}", use_file.display()), e))?;
    }
    Ok(())
}

pub(crate) fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))
}

/// Removes a directory tree if it exists.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        // /proc/self/mounts escapes spaces and the like as octal; our paths have none.
        .map(PathBuf::from)
        .filter(|target| target.starts_with(dir))
        .collect();
    targets.sort_by_key(|target| std::cmp::Reverse(target.components().count()));
    for target in targets {
        // Best effort: a mount that cannot be detached makes the removal that
        // follows fail, and that error is reported.
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The last `lines` lines of a file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_package_order_and_duplicates_but_not_content() {
        let spec = ImageSpec::default();
        let mut shuffled = spec.clone();
        shuffled.packages.reverse();
        shuffled.packages.push("dbus".into());
        assert_eq!(spec.key(), shuffled.key());
        assert_eq!(spec.key().len(), 16);

        let mut more = spec.clone();
        more.packages.push("curl".into());
        assert_ne!(spec.key(), more.key());
        let mut other_suite = spec.clone();
        other_suite.suite = "trixie".into();
        assert_ne!(spec.key(), other_suite.key());
        assert!(other_suite.dir_name().starts_with("trixie-"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log");
        fs::write(&file, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&file, 2), "b\nc");
        assert_eq!(tail(&file, 10), "a\nb\nc");
    }
}
