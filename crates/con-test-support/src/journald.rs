//! A journald of a benchmark's own, so that what a daemon mirrors neither
//! depends on whether the host's journald runs (a shared machine's state)
//! nor fills the host's journal.
//!
//! [`in_private_journald`] re-runs the calling program in a private mount
//! namespace (`unshare --mount`) where tmpfs hides the host's journald
//! sockets and journal directories and a journald of its own listens, with
//! volatile storage capped at [`RUNTIME_MAX_USE`]; it ends with the program.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the re-run program: the private journald is up.
const INSIDE: &str = "CON_BENCH_PRIVATE_JOURNALD";

/// Largest journal the private journald keeps (it drops the oldest
/// entries beyond it).
pub const RUNTIME_MAX_USE: &str = "512M";

const SOCKET: &str = "/run/systemd/journal/socket";

/// Runs the rest of the calling program in a private mount namespace with a
/// journald of its own. In the original process: re-runs the program
/// there (same arguments and environment), waits for it and exits with its
/// status; never returns. In the re-run program: starts the journald and
/// returns it (stopped when dropped). Needs root and `unshare`.
pub fn in_private_journald() -> PrivateJournald {
    if std::env::var_os(INSIDE).is_none() {
        let exe = std::env::current_exe().expect("current exe");
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(INSIDE, "1")
            .status()
            .expect("run unshare (as root)");
        std::process::exit(status.code().unwrap_or(1));
    }
    PrivateJournald::start()
}

/// The private journald; killed when dropped.
pub struct PrivateJournald(Child);

impl PrivateJournald {
    fn start() -> Self {
        for (dir, size) in [
            ("/run/systemd/journal", "16M"),
            ("/run/log/journal", "1G"),
            ("/var/log/journal", "1M"),
        ] {
            std::fs::create_dir_all(dir).expect("journal directory");
            mount(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir]);
        }
        // Volatile and capped: whatever the host's configuration says.
        let conf = "/run/systemd/journal/con-bench-journald.conf";
        std::fs::write(
            conf,
            format!(
                "[Journal]\nStorage=volatile\nRuntimeMaxUse={RUNTIME_MAX_USE}\nRateLimitBurst=0\n"
            ),
        )
        .expect("journald.conf");
        if Path::new("/etc/systemd/journald.conf").exists() {
            mount(&["--bind", conf, "/etc/systemd/journald.conf"]);
        }
        let child = Command::new("/lib/systemd/systemd-journald")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start systemd-journald");
        let start = Instant::now();
        while !Path::new(SOCKET).exists() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the private journald did not create {SOCKET}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for PrivateJournald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mount(args: &[&str]) {
    let ok = Command::new("mount")
        .args(args)
        .status()
        .expect("run mount")
        .success();
    assert!(ok, "mount {args:?}");
}
