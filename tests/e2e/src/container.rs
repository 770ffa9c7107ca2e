//! A booted container: systemd as PID 1 on a private, throw-away overlay of
//! the image.
//!
//! Each container owns a state directory under the run directory
//! (`/var/tmp/con-e2e/<machine>/` by default):
//!
//! ```text
//! owner.lock    exclusively flocked by the process that owns the container
//! upper/        the overlay's writable layer: everything the container changes
//! nspawn.log    systemd-nspawn's output (the container's console)
//! nspawn.pid    the systemd-nspawn process, pid1: the container's systemd (host pids)
//! ```
//!
//! The overlay is mounted by systemd-nspawn inside its own mount namespace
//! (`--overlay=IMAGE:UPPER:/`), so it disappears with nspawn and nothing is
//! ever mounted on the host. Drop stops the container and deletes the
//! directory; if the owner dies without dropping (SIGKILL, abort), its flock
//! is released by the kernel and the next boot, in any process, stops the
//! leftover container and deletes the directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

use crate::error::{Error, Result};
use crate::exec::{Exec, Output};
use crate::host::{self, Tools};
use crate::image::{self, Image};
use crate::lock::{self, Lock, Mode};

/// How long a boot may take unless [`BootOptions::boot_timeout`] says otherwise.
/// A boot takes well under a second on an idle machine; this allows for a
/// loaded CI runner.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a container gets to power off after SIGTERM before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// systemd-nspawn's exit status when the container's systemd asked for a
/// reboot (what `RestartForceExitStatus=133` in systemd-nspawn@.service is for).
const NSPAWN_REBOOT_EXIT: i32 = 133;

/// Journal lines printed when a test fails (`CON_E2E_JOURNAL_LINES` overrides).
const DEFAULT_JOURNAL_LINES: usize = 400;

/// Where in the container the con binary is installed.
pub const CON_PATH: &str = "/usr/local/bin/con";
/// Where in the container the repository's `configs/` is copied.
pub const CONFIGS_PATH: &str = "/opt/con/configs";

/// How to boot a container.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Share the host's network namespace instead of a private one with only
    /// loopback (`--private-network`). Only for tests that need the host's
    /// loopback services; containers sharing it can see each other's ports.
    pub host_network: bool,
    /// Give up (and fail, with the journal) if systemd is not up by then.
    pub boot_timeout: Duration,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            host_network: false,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
        }
    }
}

/// How the boot ended, per `systemctl is-system-running --wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootState {
    /// Every unit started.
    Running,
    /// Up, but some units failed (listed as `systemctl --failed` prints them).
    Degraded {
        /// `systemctl --failed --no-pager` at the end of the boot.
        failed_units: String,
    },
}

/// A running container. Commands run inside it as root through nsenter; see
/// [`Container::command`]. Dropping it stops it and deletes its state,
/// printing its journal first if the test is failing (panicking).
#[derive(Debug)]
pub struct Container {
    name: String,
    dir: PathBuf,
    tools: Tools,
    /// What a reboot boots again: the same image, writable layer, machine
    /// name, machine id and network.
    image_root: PathBuf,
    uuid: uuid::Uuid,
    options: BootOptions,
    nspawn: Child,
    /// Host pid of the container's systemd; 0 until it is found.
    pid1: u32,
    state: BootState,
    boot_time: Duration,
    _owner: Lock,
    _image_in_use: Arc<Lock>,
}

impl Container {
    /// Boots a container from `image` with [`BootOptions::default`]: private
    /// network, con at [`CON_PATH`], the repository's configs at
    /// [`CONFIGS_PATH`]. `name_hint` goes into the machine name (which is
    /// also the hostname) so journals and leftovers say which test they
    /// belong to.
    pub fn boot(image: &Image, name_hint: &str) -> Result<Container> {
        Container::boot_with(image, name_hint, &BootOptions::default())
    }

    /// Like [`Container::boot`], with options.
    pub fn boot_with(image: &Image, name_hint: &str, options: &BootOptions) -> Result<Container> {
        let started = Instant::now();
        let tools = image.tools().clone();
        let con = host::con_binary()?;
        let configs = host::workspace().join("configs");
        if !configs.is_dir() {
            return Err(Error::Prerequisite(format!(
                "no configs directory at {}",
                configs.display()
            )));
        }
        let run = host::run_dir();
        host::create_dir(&run)?;
        let (name, dir, owner) = claim(&run, name_hint)?;

        let upper = dir.join("upper");
        install(&con, &upper.join(CON_PATH.trim_start_matches('/')))?;
        copy_tree(&configs, &upper.join(CONFIGS_PATH.trim_start_matches('/')))?;

        let uuid = uuid::Uuid::new_v4();
        let nspawn = spawn_nspawn(&tools, image.root(), &dir, &name, uuid, options)?;

        // From here on, Drop cleans up whatever happens.
        let mut container = Container {
            name,
            dir,
            tools,
            image_root: image.root().to_path_buf(),
            uuid,
            options: options.clone(),
            nspawn,
            pid1: 0,
            state: BootState::Running,
            boot_time: Duration::ZERO,
            _owner: owner,
            _image_in_use: image.in_use(),
        };
        let deadline = started + options.boot_timeout;
        container.pid1 = container.find_pid1(deadline)?;
        write_pid(&container.dir.join("pid1"), container.pid1)?;
        container.state = container.wait_until_up(deadline)?;
        container.boot_time = started.elapsed();
        Ok(container)
    }

    /// Reboots the container the way an administrator does: `systemctl
    /// reboot` inside, every unit stopped in order, then systemd-nspawn
    /// (which exits with 133 when its container asks for a reboot) is
    /// started again on the same writable layer, machine name and machine
    /// id, and the boot is waited for as [`Container::boot`] waits. All the
    /// container wrote — `/etc`, `/var`, `/srv`, the persistent journal —
    /// is there again; what lives in tmpfs (`/run`, `/tmp`) and processes
    /// are gone, as on a real host. Units enabled before come up by
    /// themselves; transient ones (`systemd-run`) do not.
    pub fn reboot(&mut self) -> Result<()> {
        let started = Instant::now();
        // --no-block: the answer must not depend on how far the shutdown
        // got before this command's own process was killed with the rest.
        self.exec_ok(&["systemctl", "--no-block", "reboot"])?;
        let status = self.wait_for_nspawn_exit(SHUTDOWN_TIMEOUT, "after `systemctl reboot`")?;
        if status.code() != Some(NSPAWN_REBOOT_EXIT) {
            return Err(self.boot_error(format!(
                "systemd-nspawn exited with {status} after `systemctl reboot`, not with {NSPAWN_REBOOT_EXIT} (reboot)"
            )));
        }
        self.boot_again(started)
    }

    /// Reboots the container without shutting anything down: SIGKILL to
    /// its systemd, which takes every process in it at once (no unit is
    /// stopped, no daemon flushes or says goodbye), then boots again like
    /// [`Container::reboot`]. What processes had written to files is kept
    /// (the host's page cache survives), so this is a crash of everything
    /// in the container rather than of its disk: it shows what a daemon
    /// killed mid-write and a session cut off mid-run leave behind.
    pub fn hard_reboot(&mut self) -> Result<()> {
        let started = Instant::now();
        if let Some(pid) = pid_of(self.pid1).filter(|_| self.pid1 != 0) {
            kill(pid, Signal::SIGKILL)
                .map_err(|e| Error::io(format!("SIGKILL to pid {}", self.pid1), e.into()))?;
        }
        self.wait_for_nspawn_exit(SHUTDOWN_TIMEOUT, "after SIGKILL to its systemd")?;
        self.boot_again(started)
    }

    /// Waits for the running systemd-nspawn to exit (the container going
    /// down) and reaps it.
    fn wait_for_nspawn_exit(
        &mut self,
        limit: Duration,
        when: &str,
    ) -> Result<std::process::ExitStatus> {
        match self.nspawn.wait_timeout(limit) {
            Ok(Some(status)) => {
                // Nothing left to enter or signal until the next boot.
                self.pid1 = 0;
                Ok(status)
            }
            Ok(None) => Err(self.boot_error(format!(
                "the container did not go down within {limit:?} {when}"
            ))),
            Err(e) => Err(Error::io("waiting for systemd-nspawn", e)),
        }
    }

    /// Starts systemd-nspawn again on this container's layer and waits for
    /// the boot; `started` is when the reboot began (for [`Container::boot_time`]).
    fn boot_again(&mut self, started: Instant) -> Result<()> {
        self.nspawn = spawn_nspawn(
            &self.tools,
            &self.image_root,
            &self.dir,
            &self.name,
            self.uuid,
            &self.options,
        )?;
        let deadline = Instant::now() + self.options.boot_timeout;
        self.pid1 = self.find_pid1(deadline)?;
        write_pid(&self.dir.join("pid1"), self.pid1)?;
        self.state = self.wait_until_up(deadline)?;
        self.boot_time = started.elapsed();
        Ok(())
    }

    /// The machine name (also the container's hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host pid of the container's systemd.
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// How the boot ended: running, or degraded with the failed units.
    pub fn boot_state(&self) -> &BootState {
        &self.state
    }

    /// From the call to boot until systemd reported the boot finished
    /// (includes claiming a directory and copying con in); after a
    /// [`Container::reboot`], from the reboot's start to the end of the new boot.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The directory holding this container's state on the host; `upper/`
    /// in it has every file the container created or changed.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn tools(&self) -> &Tools {
        &self.tools
    }

    /// A command to run inside, configured further with [`Exec`]'s methods
    /// (user, stdin, env, timeout) and run with `.output()` or `.ok()`.
    pub fn command(&self, argv: &[&str]) -> Exec<'_> {
        Exec::new(self, argv)
    }

    /// Runs `argv` inside as root; the output whatever the exit code.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.command(argv).output()
    }

    /// Runs `argv` inside as root and requires success.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<Output> {
        self.command(argv).ok()
    }

    /// Runs a `/bin/sh -c` script inside as root; the output whatever the exit code.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.command(&["/bin/sh", "-c", script]).output()
    }

    /// Runs a `/bin/sh -c` script inside as `user` (its uid, gid and
    /// groups: see [`Exec::user`]); the output whatever the exit code.
    pub fn sh_as(&self, user: &str, script: &str) -> Result<Output> {
        self.command(&["/bin/sh", "-c", script]).user(user).output()
    }

    /// Runs a `/bin/sh -c` script inside as root and requires success.
    pub fn sh_ok(&self, script: &str) -> Result<Output> {
        self.command(&["/bin/sh", "-c", script]).ok()
    }

    /// Copies a host file or directory to `container_path` (absolute),
    /// creating parent directories. Files keep their permission bits;
    /// everything ends up owned by root. A directory's contents are merged
    /// into `container_path`.
    pub fn copy_in(&self, host_path: &Path, container_path: &str) -> Result<()> {
        if !container_path.starts_with('/') {
            return Err(Error::io(
                format!("copy_in destination {container_path:?}"),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an absolute path"),
            ));
        }
        let meta = fs::metadata(host_path)
            .map_err(|e| Error::io(format!("reading {}", host_path.display()), e))?;
        if meta.is_dir() {
            let mut tar = Command::new(&self.tools.tar)
                .arg("-C")
                .arg(host_path)
                .args(["-cf", "-", "."])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| Error::io("starting tar", e))?;
            let archive = tar
                .stdout
                .take()
                .map(Stdio::from)
                .unwrap_or_else(Stdio::null);
            let unpacked = self
                .command(&[
                    "/bin/sh",
                    "-c",
                    r#"mkdir -p -- "$1" && exec tar -C "$1" --no-same-owner -xf -"#,
                    "sh",
                    container_path,
                ])
                .stdin_from(archive)
                .ok();
            let packed = tar
                .wait_with_output()
                .map_err(|e| Error::io(format!("tar of {}", host_path.display()), e))?;
            if !packed.status.success() {
                return Err(Error::io(
                    format!("tar of {}", host_path.display()),
                    std::io::Error::other(String::from_utf8_lossy(&packed.stderr).into_owned()),
                ));
            }
            unpacked.map(drop)
        } else {
            use std::os::unix::fs::PermissionsExt;
            let file = fs::File::open(host_path)
                .map_err(|e| Error::io(format!("opening {}", host_path.display()), e))?;
            let mode = format!("{:o}", meta.permissions().mode() & 0o7777);
            self.command(&[
                "/bin/sh",
                "-c",
                r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" "$1""#,
                "sh",
                container_path,
                &mode,
            ])
            .stdin_from(Stdio::from(file))
            .ok()
            .map(drop)
        }
    }

    /// The journal of this boot: `journalctl -b --no-pager`, run inside.
    pub fn journal(&self) -> Result<String> {
        Ok(self.exec_ok(&["journalctl", "-b", "--no-pager"])?.stdout)
    }

    /// `systemctl --failed --no-pager`, run inside.
    pub fn failed_units(&self) -> Result<String> {
        Ok(self
            .exec_ok(&["systemctl", "--failed", "--no-pager"])?
            .stdout)
    }

    /// Bootstraps the repository's default profile with `agents_toml`
    /// appended to its `con.toml` (extra `[[agents]]`, usually exec-runner
    /// workers). The load ceiling of the shipped CON-SYS-003 is lifted: it
    /// halts workers when the host is busy, which a test machine running
    /// scenarios often is, and that is not what these scenarios are about.
    pub fn bootstrap_default_with(&self, agents_toml: &str) -> Result<Output> {
        self.sh_ok(&format!(
            "set -e\ncp -a {CONFIGS_PATH}/default /opt/profile\n\
             sed -i 's/^max_load_per_cpu = .*/max_load_per_cpu = 1000.0/' /opt/profile/con.toml\n\
             grep -q '^max_load_per_cpu = 1000.0' /opt/profile/con.toml\n\
             cat >> /opt/profile/con.toml <<'TOML'\n\n{agents_toml}\nTOML\n\
             con bootstrap --profile /opt/profile >/dev/null\n"
        ))
    }

    /// Bootstraps the default profile with its models served inside the
    /// container by scripted model servers on loopback (`con-llm-script`,
    /// started as root, so the gateway trusts their listeners): every agent
    /// on `base_script`, the sysadmin on `sysadmin_script` (one model per
    /// agent, so the order in which runs call them cannot matter), with
    /// `key` in `/etc/con/env`. Each script is a JSON list of steps.
    pub fn bootstrap_default_on_scripts(
        &self,
        base_script: &str,
        sysadmin_script: &str,
        key: &str,
    ) -> Result<()> {
        let bin = crate::host::script_server_binary();
        if !bin.exists() {
            return Err(Error::Prerequisite(format!(
                "{} is missing: build it with `cargo build -p con-llm-script`",
                bin.display()
            )));
        }
        self.copy_in(&bin, "/usr/local/bin/con-llm-script")?;
        self.sh_ok(&format!(
            "set -e\n\
             cat > /opt/base.json <<'JSON'\n{base_script}\nJSON\n\
             cat > /opt/sysadmin.json <<'JSON'\n{sysadmin_script}\nJSON\n\
             systemd-run --unit=llm-base /usr/local/bin/con-llm-script --script /opt/base.json --listen 127.0.0.1:18080\n\
             systemd-run --unit=llm-sysadmin /usr/local/bin/con-llm-script --script /opt/sysadmin.json --listen 127.0.0.1:18081\n\
             cp -a {CONFIGS_PATH}/default /opt/profile\n\
             sed -i 's|^provider = \"openrouter\"|provider = \"openai-compatible\"\\nbase_url = \"http://127.0.0.1:18080/v1\"|' /opt/profile/con.toml\n\
             sed -i 's|^roles = \\[\"sysadmin\"\\]|roles = [\"sysadmin\"]\\nbase_url = \"http://127.0.0.1:18081/v1\"|' /opt/profile/con.toml\n\
             grep -q 'base_url = \"http://127.0.0.1:18080/v1\"' /opt/profile/con.toml\n\
             grep -q 'base_url = \"http://127.0.0.1:18081/v1\"' /opt/profile/con.toml\n\
             install -d -m 0755 /etc/con\n\
             install -m 0600 /dev/null /etc/con/env\n\
             echo 'CON_OPENROUTER_API_KEY={key}' > /etc/con/env\n\
             con bootstrap --profile /opt/profile >/dev/null\n"
        ))?;
        Ok(())
    }

    /// Polls `done` every 250 ms until it holds; panics with `what` and the
    /// [`Container::diagnostics`] after `limit`. For scenarios: a wait that
    /// runs out is the test failing.
    pub fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < limit,
                "{what}: not after {limit:?};\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Everything useful for a post-mortem, as far as it can be read: failed
    /// units, the end of the journal and nspawn's own output.
    pub fn diagnostics(&self) -> String {
        let lines = std::env::var("CON_E2E_JOURNAL_LINES")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(DEFAULT_JOURNAL_LINES);
        let mut report = format!("===== diagnostics of container {} =====", self.name);
        if self.pid1 != 0 && self.nspawn_alive() {
            let quick = Duration::from_secs(20);
            let lines_arg = lines.to_string();
            let sections: [(String, Vec<&str>); 2] = [
                (
                    String::from("failed units"),
                    vec!["systemctl", "--failed", "--no-pager"],
                ),
                (
                    format!("journal (last {lines} lines)"),
                    vec!["journalctl", "-b", "--no-pager", "-n", &lines_arg],
                ),
            ];
            for (title, argv) in sections {
                let text = match self.command(&argv).timeout(quick).output() {
                    Ok(out) => format!("{}{}", out.stdout, out.stderr),
                    Err(e) => format!("<{e}>"),
                };
                report.push_str(&format!("\n----- {title} -----\n{}", text.trim_end()));
            }
        } else {
            report.push_str("\n(systemd-nspawn is not running: no journal to read)");
        }
        report.push_str(&format!(
            "\n----- systemd-nspawn output (last 60 lines) -----\n{}\n===== end of diagnostics of {} =====",
            image::tail(&self.dir.join("nspawn.log"), 60),
            self.name
        ));
        report
    }

    fn nspawn_alive(&self) -> bool {
        pid_alive(self.nspawn.id())
    }

    /// Waits for nspawn to start the container's systemd: the child of nspawn
    /// in another pid namespace that has exec'd systemd (before the exec it
    /// is still nspawn setting the container up).
    fn find_pid1(&mut self, deadline: Instant) -> Result<u32> {
        let own_ns = fs::read_link("/proc/self/ns/pid").ok();
        let nspawn = self.nspawn.id();
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(self.boot_error(format!("systemd-nspawn exited early ({status})")));
            }
            let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
                .unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                let ns = fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if ns.is_some() && ns != own_ns && comm.trim_end() == "systemd" {
                    return Ok(pid);
                }
            }
            if Instant::now() >= deadline {
                return Err(self.boot_error(String::from("systemd never started in the container")));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `systemctl is-system-running --wait` until the boot is over.
    /// systemctl fails to connect while systemd is still setting up its
    /// sockets; that is retried until the deadline.
    fn wait_until_up(&mut self, deadline: Instant) -> Result<BootState> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.boot_error(String::from(
                    "timed out waiting for `systemctl is-system-running --wait`",
                )));
            }
            let output = match self
                .command(&["systemctl", "is-system-running", "--wait"])
                .timeout(left)
                .output()
            {
                Ok(output) => output,
                Err(Error::Timeout { .. }) => continue,
                Err(e) => return Err(e),
            };
            match output.stdout_trimmed() {
                "running" => return Ok(BootState::Running),
                "degraded" => {
                    return Ok(BootState::Degraded {
                        failed_units: self.failed_units()?,
                    });
                }
                // The boot went wrong for good: a unit asked for the rescue
                // shell, or the system is already shutting down.
                state @ ("maintenance" | "stopping") => {
                    return Err(self.boot_error(format!("the boot ended in state {state:?}")));
                }
                // Nothing to ask yet: "offline" until PID 1 has created
                // /run/systemd/system, no answer until its socket listens.
                _ => {
                    if let Ok(Some(status)) = self.nspawn.try_wait() {
                        return Err(self
                            .boot_error(format!("systemd-nspawn exited during boot ({status})")));
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn boot_error(&self, reason: String) -> Error {
        Error::Boot {
            machine: self.name.clone(),
            reason,
            diagnostics: self.diagnostics(),
        }
    }

    /// Powers the container off (SIGTERM to nspawn), killing it if it does
    /// not stop within [`SHUTDOWN_TIMEOUT`]. Reports what went wrong.
    fn shutdown(&mut self) -> std::result::Result<(), String> {
        if let Ok(Some(_)) = self.nspawn.try_wait() {
            return Ok(());
        }
        let nspawn = pid_of(self.nspawn.id());
        if let Some(pid) = nspawn {
            let _ = kill(pid, Signal::SIGTERM);
        }
        match self.nspawn.wait_timeout(SHUTDOWN_TIMEOUT) {
            Ok(Some(_)) => Ok(()),
            _ => {
                // Killing a pid namespace's init kills everything in it.
                if let Some(pid) = pid_of(self.pid1).filter(|_| self.pid1 != 0) {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                if let Some(pid) = nspawn {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                self.nspawn
                    .wait()
                    .map(drop)
                    .map_err(|e| format!("reaping systemd-nspawn: {e}"))?;
                Err(format!(
                    "did not power off within {SHUTDOWN_TIMEOUT:?} of SIGTERM; killed"
                ))
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if let Err(e) = self.shutdown() {
            eprintln!("con-e2e: container {}: {e}", self.name);
        }
        if let Err(e) = image::remove_tree(&self.dir) {
            eprintln!("con-e2e: container {}: {e}", self.name);
        }
    }
}

/// Starts systemd-nspawn booting `image_root` overlaid with `dir/upper`,
/// its output appended to `dir/nspawn.log`, and records its pid in
/// `dir/nspawn.pid`.
fn spawn_nspawn(
    tools: &Tools,
    image_root: &Path,
    dir: &Path,
    name: &str,
    uuid: uuid::Uuid,
    options: &BootOptions,
) -> Result<Child> {
    let log_path = dir.join("nspawn.log");
    // Appended: after a reboot the console of every boot is kept.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
    let mut cmd = Command::new(&tools.nspawn);
    cmd.arg(format!("--directory={}", image_root.display()))
        .arg(format!(
            "--overlay={}:{}:/",
            overlay_escape(image_root),
            overlay_escape(&dir.join("upper"))
        ))
        .args(["--boot", "--register=no", "--keep-unit", "--console=pipe"])
        .arg(format!("--machine={name}"))
        // Becomes /etc/machine-id (empty in the image); the same one at
        // every boot, so the persistent journal stays this machine's.
        .arg(format!("--uuid={uuid}"));
    if !options.host_network {
        cmd.arg("--private-network");
    }
    // Same process group as the test on purpose: Ctrl-C on `cargo test`
    // reaches nspawn too, which then powers the container off.
    let nspawn = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", tools.nspawn.display()), e))?;
    write_pid(&dir.join("nspawn.pid"), nspawn.id())?;
    Ok(nspawn)
}

/// Under the run directory's lock: cleans up after owners that died, then
/// creates and locks a fresh state directory. Returns its machine name.
fn claim(run: &Path, hint: &str) -> Result<(String, PathBuf, Lock)> {
    let _guard = lock::lock_wait(&run.join(".lock"), Mode::Exclusive)?;
    sweep(run)?;
    let base = format!("e2e-{}-{}", sanitize(hint), std::process::id());
    for n in 0u32.. {
        let name = format!("{base}-{n}");
        let dir = run.join(&name);
        match fs::create_dir(&dir) {
            Ok(()) => {
                let owner = lock::lock_wait(&dir.join("owner.lock"), Mode::Exclusive)?;
                return Ok((name, dir, owner));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
    }
    Err(Error::Prerequisite(format!(
        "no free container directory name under {}",
        run.display()
    )))
}

/// Stops and deletes containers whose owning process is gone (their
/// `owner.lock` is free, or was never created).
fn sweep(run: &Path) -> Result<()> {
    for entry in image::read_dir(run)? {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let Some(_orphaned) = lock::lock(&dir.join("owner.lock"), Mode::TryExclusive)? else {
            continue;
        };
        stop_orphan(&dir);
        image::remove_tree(&dir)?;
    }
    Ok(())
}

/// Stops a leftover container, making sure the pids recorded in `dir` still
/// are its nspawn and systemd before signalling them.
fn stop_orphan(dir: &Path) {
    let read_pid = |file: &str| {
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nspawn = read_pid("nspawn.pid").filter(|pid| {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("systemd-nspawn") && cmdline.contains(&format!("--machine={name}\0"))
    });
    // The container's systemd is ours if its mounts include our upper layer.
    let upper = dir.join("upper").display().to_string();
    let pid1 = read_pid("pid1").filter(|pid| {
        fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .is_ok_and(|mounts| mounts.contains(&format!("upperdir={upper}")))
    });
    if let Some(pid) = nspawn.and_then(pid_of) {
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(nspawn.unwrap_or(0)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
    for pid in [pid1, nspawn].into_iter().flatten() {
        if pid_alive(pid)
            && let Some(pid) = pid_of(pid)
        {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name, which may contain spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
}

fn write_pid(path: &Path, pid: u32) -> Result<()> {
    fs::write(path, format!("{pid}\n"))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A machine-name-safe version of a test's hint: lowercase letters, digits
/// and dashes, at most 24 characters.
fn sanitize(hint: &str) -> String {
    let mapped: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let trimmed: String = mapped.trim_matches('-').chars().take(24).collect();
    let trimmed = trimmed.trim_end_matches('-');
    if trimmed.is_empty() {
        String::from("test")
    } else {
        trimmed.to_owned()
    }
}

/// nspawn's `--overlay=` separates paths with colons; escape any in a path.
fn overlay_escape(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', r"\\")
        .replace(':', r"\:")
}

/// Copies a file, creating parent directories (0755) and making it 0755.
fn install(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = to.parent() {
        host::create_dir(parent)?;
    }
    fs::copy(from, to)
        .map_err(|e| Error::io(format!("copying {} to {}", from.display(), to.display()), e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(format!("chmod {}", to.display()), e))
}

/// Copies a directory tree with `cp -R` (modes and times kept, owned by us).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        host::create_dir(parent)?;
    }
    let output = Command::new("cp")
        .args(["-R", "--preserve=mode,timestamps", "--"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| Error::io("running cp", e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::io(
            format!("copying {} to {}", from.display(), to.display()),
            std::io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_become_valid_machine_names() {
        assert_eq!(sanitize("boot"), "boot");
        assert_eq!(sanitize("Bootstrap::second_run"), "bootstrap--second-run");
        assert_eq!(sanitize("--"), "test");
        assert_eq!(sanitize(&"x".repeat(40)).len(), 24);
        assert_eq!(
            sanitize("abcdefghijklmnopqrstuvw-yz"),
            "abcdefghijklmnopqrstuvw"
        );
    }

    #[test]
    fn overlay_paths_escape_colons() {
        assert_eq!(overlay_escape(Path::new("/a:b\\c")), r"/a\:b\\c");
    }

    #[test]
    fn liveness_sees_ourselves_and_not_a_reaped_child() {
        assert!(pid_alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }
}
