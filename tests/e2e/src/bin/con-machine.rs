//! Container mode: try con under a real systemd without provisioning this
//! host. `make image`, `make up`, `make down` call it.
//!
//! - `con-machine image`: prepare (or check) the cached Debian image.
//! - `con-machine up [PROFILE]`: boot a container from it with this
//!   checkout's con, bootstrap `configs/PROFILE` (default `default`) in it,
//!   and leave it running: a holder process in its own session keeps it
//!   (the harness stops a container when its owner goes away). Prints how
//!   to get a shell and drop a task. The container has a private network
//!   (bootstrap's nftables rules must never reach the host's ruleset), so
//!   no model API is reachable from it: a task is recorded, routed and
//!   started, and its session ends naming what is missing — or point
//!   `base_url` at a model server inside the container.
//! - `con-machine down`: stop it (the holder drops the container: powered
//!   off, its writable layer deleted).
//!
//! One container at a time, recorded in `<run dir>/machine.up` (the run
//! dir is `$CON_E2E_RUN_DIR`, default `/var/tmp/con-e2e`).

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use con_e2e::{CONFIGS_PATH, Container, Image};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// How long `up` waits for the holder to report the container up.
const UP_TIMEOUT: Duration = Duration::from_secs(600);

fn state_file() -> PathBuf {
    con_e2e::run_dir().join("machine.up")
}

fn log_file() -> PathBuf {
    con_e2e::run_dir().join("machine.log")
}

/// What `machine.up` holds: the holder's pid, then the machine name and
/// the container's pid 1, one per line.
struct Up {
    holder: i32,
    machine: String,
    pid1: u32,
}

impl Up {
    fn read() -> anyhow::Result<Option<Up>> {
        let text = match fs::read_to_string(state_file()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context(format!("reading {}", state_file().display())),
        };
        let mut lines = text.lines();
        let mut field = |name: &str| {
            lines
                .next()
                .map(str::to_owned)
                .with_context(|| format!("{}: no {name} line", state_file().display()))
        };
        let holder = field("holder pid")?.parse().context("holder pid")?;
        let machine = field("machine name")?;
        let pid1 = field("pid 1")?.parse().context("pid 1")?;
        Ok(Some(Up {
            holder,
            machine,
            pid1,
        }))
    }

    fn holder_alive(&self) -> bool {
        kill(Pid::from_raw(self.holder), None).is_ok()
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("image") => image(),
        Some("up") => up(&args.next().unwrap_or_else(|| "default".to_owned())),
        Some("hold") => hold(&args.next().unwrap_or_else(|| "default".to_owned())),
        Some("down") => down(),
        _ => bail!("usage: con-machine image | up [PROFILE] | down"),
    }
}

fn image() -> anyhow::Result<()> {
    let started = Instant::now();
    let image = Image::ensure().context("preparing the image")?;
    match image.built_in() {
        Some(took) => println!("image {} built in {took:.1?}", image.root().display()),
        None => println!(
            "image {} ready (cached, checked in {:.1?})",
            image.root().display(),
            started.elapsed()
        ),
    }
    Ok(())
}

fn up(profile: &str) -> anyhow::Result<()> {
    if let Some(up) = Up::read()? {
        if up.holder_alive() {
            println!("{} is already up", up.machine);
            print_usage(&up);
            return Ok(());
        }
        // A holder that died took its container down with it (or the next
        // boot's sweep will): the record is stale.
        let _ = fs::remove_file(state_file());
    }
    fs::create_dir_all(con_e2e::run_dir()).context("creating the run directory")?;
    let log = fs::File::create(log_file())
        .with_context(|| format!("creating {}", log_file().display()))?;
    let exe = std::env::current_exe().context("finding con-machine itself")?;
    let mut holder = Command::new(exe);
    holder
        .args(["hold", profile])
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log);
    // Its own process group: the shell's Ctrl-C does not reach it (and a
    // hangup is blocked in it), so it outlives `make up`.
    std::os::unix::process::CommandExt::process_group(&mut holder, 0);
    let mut child = holder.spawn().context("starting the holder")?;
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        if let Some(up) = Up::read()? {
            println!("{} is up (profile {profile})", up.machine);
            print_usage(&up);
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("waiting for the holder")? {
            let log = fs::read_to_string(log_file()).unwrap_or_default();
            bail!("the container did not come up ({status}):\n{log}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the container was not up after {UP_TIMEOUT:?}; see {}",
                log_file().display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_usage(up: &Up) {
    let enter = format!("nsenter -t {} -m -u -i -n -p", up.pid1);
    println!("  a shell:      {enter} /bin/bash -l");
    println!("  a task:       {enter} con task --wait \"hello\"");
    println!("  its status:   {enter} con status");
    println!("  the journal:  {enter} journalctl -t con -f");
    println!("  stop it:      make down");
}

/// The holder: boots, bootstraps, records itself, and waits for SIGTERM
/// or SIGINT; dropping the container then powers it off and removes it.
fn hold(profile: &str) -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    // Blocked before anything starts, so a `down` during the boot is
    // waited for and not lost. A hangup (the terminal `make up` ran in
    // closing) is blocked and never waited for: it does not stop it.
    let mut blocked = signals;
    blocked.add(Signal::SIGHUP);
    blocked.thread_block().context("blocking signals")?;
    let image = Image::ensure().context("preparing the image")?;
    // A private network: con's bootstrap installs per-uid nftables rules,
    // which must never land in the host's own ruleset.
    let container = Container::boot(&image, "machine").context("booting")?;
    container
        .sh_ok(&format!(
            "con bootstrap --profile {CONFIGS_PATH}/{profile} >/dev/null"
        ))
        .context("bootstrapping the profile")?;
    println!("{} up, profile {profile} bootstrapped", container.name());
    let record = format!(
        "{}\n{}\n{}\n",
        std::process::id(),
        container.name(),
        container.pid1()
    );
    let tmp = state_file().with_extension("tmp");
    fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(record.as_bytes()))
        .and_then(|()| fs::rename(&tmp, state_file()))
        .context("recording the container")?;
    let signal = signals.wait().context("waiting for a signal")?;
    println!("{signal:?}: stopping {}", container.name());
    let _ = fs::remove_file(state_file());
    drop(container);
    println!("stopped");
    Ok(())
}

fn down() -> anyhow::Result<()> {
    let Some(up) = Up::read()? else {
        println!("no container is up");
        return Ok(());
    };
    if up.holder_alive() {
        kill(Pid::from_raw(up.holder), Signal::SIGTERM).context("signalling the holder")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while up.holder_alive() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not stop within 60 s; see {}",
                    up.machine,
                    log_file().display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let _ = fs::remove_file(state_file());
    println!("{} stopped and removed", up.machine);
    Ok(())
}
