//! `con replay --rerun SESSION`: the session's recorded tool calls run
//! again in a scratch copy of its agent's workspace, each result compared
//! with the recorded one.
//!
//! The calls are those the recorded model replies asked for, in recorded
//! order: no model is called, the daemon is only read from (or not used at
//! all with `--db`/`--journal`), and nothing is appended. The calls run in
//! a child process, this binary's hidden `__rerun-worker`, started by root
//! through `unshare` in a network namespace (no network) and a mount
//! namespace of its own when it can make them; there the worker makes every
//! mount read-only but the scratch directory, becomes `nobody` for good (no
//! groups, no capabilities, no new privileges) and runs the runner's own
//! tool implementations (`con_runner::tools::run`) with the copy as the
//! workspace, so a call does what it did in the session but can change
//! nothing outside the copy.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use con_event::SessionId;
use con_layout::Layout;
use con_replay::Contents;
use con_replay::rerun::{
    self, CallReport, NotReproduced, Prepared, Report, RerunResult, Verdict, Workspaces,
};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, User};
use serde::{Deserialize, Serialize};

use crate::replay_cmd::{Source, fetch_blobs, session_input};

/// The most a workspace copy may hold: a rerun is for forensics, not for
/// duplicating a disk.
const COPY_LIMIT: u64 = 1024 * 1024 * 1024;

/// What the worker reads on standard input.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerInput {
    /// The copy: the tools' workspace.
    workspace: PathBuf,
    /// The commands' whole environment.
    env: Vec<(String, String)>,
    /// The calls, in order.
    calls: Vec<Prepared>,
    /// Who runs them.
    run_as_uid: u32,
    /// Its group.
    run_as_gid: u32,
    /// In a mount namespace of its own: the one directory left writable.
    read_only_but: Option<PathBuf>,
}

/// What the worker writes on standard output, one line per call.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerOutput {
    /// The tool's result, if it ran.
    result: Option<RerunResult>,
    /// Why it did not: where its path really leads, outside the copy…
    outside: Option<String>,
    /// …or what stopped it.
    #[serde(default)]
    failed: Option<String>,
}

/// Who runs the calls.
struct RunAs {
    name: String,
    uid: Uid,
    gid: Gid,
}

impl RunAs {
    /// `nobody`, or uid and gid 65534 where it has no passwd entry.
    fn nobody() -> Self {
        match User::from_name("nobody") {
            Ok(Some(u)) => Self {
                name: u.name,
                uid: u.uid,
                gid: u.gid,
            },
            _ => Self {
                name: "uid 65534".into(),
                uid: Uid::from_raw(65534),
                gid: Gid::from_raw(65534),
            },
        }
    }
}

/// Refuses anyone but root, and root acting for an agent through sudo: a
/// rerun runs commands an agent's model chose, and only root can run them
/// as a user with no standing on the host. An operator in the trusted
/// group would run them with its own rights (its files, and an operator's
/// say with the daemon), which the agent never had.
pub(crate) fn check_caller(layout: &Layout) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "--rerun runs the session's recorded commands again and is for root only \
             (it runs them as nobody, which only root can switch to); use con replay to \
             read a session"
        );
    }
    if let Some(raw) = std::env::var_os("SUDO_UID") {
        let uid = raw
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| anyhow::anyhow!("SUDO_UID {raw:?} is not a uid: refused"))?;
        let name = User::from_uid(Uid::from_raw(uid))?.map(|u| u.name);
        if name
            .as_deref()
            .is_none_or(|n| n.starts_with(layout.user_prefix()))
        {
            anyhow::bail!(
                "--rerun through sudo for uid {uid} ({}): refused, agents may not rerun sessions",
                name.as_deref().unwrap_or("no passwd entry")
            );
        }
    }
    Ok(())
}

/// What `con replay --rerun` does first, before any other thread starts:
/// refuses anyone but root ([`check_caller`]), and takes SIGINT, SIGTERM
/// and SIGHUP, which then stop the worker (whose running command is
/// killed) so that the scratch directory is still removed. The flag says
/// a signal came.
pub(crate) fn start(layout: &Layout) -> anyhow::Result<Arc<AtomicBool>> {
    check_caller(layout)?;
    let stop = Arc::new(AtomicBool::new(false));
    con_runner::stop_on_signals(stop.clone())?;
    Ok(stop)
}

/// Runs `con replay --rerun` (after [`start`]).
pub(crate) fn run(
    source: &mut dyn Source,
    layout: &Layout,
    id: &str,
    json: bool,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<ExitCode> {
    let Some(session) = SessionId::from_hex(id).filter(|_| id.len() == 32) else {
        anyhow::bail!(
            "--rerun {}: not a session id (32 hex digits)",
            con_event::escape_control(id)
        );
    };
    let input = session_input(source, session)?;
    if input.is_empty() {
        anyhow::bail!("no session {session} {}", source.scope());
    }
    let selected = con_replay::timeline::select(session, &input)?;
    let mut contents = Contents::new();
    fetch_blobs(source, selected.iter().copied(), &mut contents)?;
    let timeline = con_replay::timeline(session, &input, &contents)?;
    let recorded = rerun::recorded_calls(&timeline);

    let live = layout.agent_workspace(&recorded.agent);
    let agent_user = User::from_name(&layout.user(&recorded.agent))
        .ok()
        .flatten();
    let agent_ids = agent_user.as_ref().map(|u| (u.uid, u.gid));
    let live_home = agent_user.map_or_else(|| PathBuf::from("/nonexistent"), |u| u.dir);
    let run_as = RunAs::nobody();
    let scratch = Scratch::new(&live, &run_as, agent_ids)?;
    let ws = Workspaces {
        live: live.clone(),
        scratch: scratch.workspace(),
    };

    // Each call: what to run, or why not.
    let mut planned: Vec<Result<Prepared, NotReproduced>> = recorded
        .calls
        .iter()
        .map(|c| rerun::prepare(c, recorded.runner.as_deref(), &ws))
        .collect();
    let to_run: Vec<Prepared> = planned
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let (isolation, unshare_failed) = Isolation::probe();
    let (ready, outputs) = if to_run.is_empty() {
        (None, Vec::new())
    } else {
        let worker = WorkerInput {
            env: con_runner::tools::scrubbed_env(
                &scratch.home(),
                &layout.user(&recorded.agent),
                &ws.scratch,
            ),
            workspace: ws.scratch.clone(),
            calls: to_run,
            run_as_uid: run_as.uid.as_raw(),
            run_as_gid: run_as.gid.as_raw(),
            read_only_but: (isolation == Isolation::NetworkAndMounts)
                .then(|| scratch.dir.path().to_owned()),
        };
        let (ready, outputs) = run_worker(&worker, &run_as, isolation, &scratch, stop)?;
        (Some(ready), outputs)
    };
    let pairs = [
        (ws.scratch.clone(), live.clone()),
        (scratch.home(), live_home),
    ];
    let mut outputs = outputs.into_iter();
    let mut calls = Vec::with_capacity(recorded.calls.len());
    for (call, plan) in recorded.calls.iter().zip(planned.drain(..)) {
        let (verdict, rerun) = match plan {
            Err(why) => (Verdict::NotReproduced(why), None),
            Ok(_) => match outputs.next() {
                Some(Ok(WorkerOutput {
                    result: Some(mut r),
                    ..
                })) => {
                    r.output = rerun::unmap(&r.output, &pairs);
                    let verdict = match &call.result {
                        Some(recorded) => rerun::compare(recorded, &r),
                        None => Verdict::NotReproduced(NotReproduced::NoResult),
                    };
                    (verdict, Some(r))
                }
                Some(Ok(WorkerOutput {
                    failed: Some(why), ..
                })) => (Verdict::NotReproduced(NotReproduced::Failed(why)), None),
                Some(Ok(WorkerOutput { outside, .. })) => {
                    let (path, how) = match outside {
                        Some(real) => (real, Some("through a symlink in the copy".to_owned())),
                        None => ("?".to_owned(), None),
                    };
                    // Only a file tool's path is checked in the copy.
                    let verb = rerun::file_tool(&call.tool).map_or("writes", |(verb, _)| verb);
                    (
                        Verdict::NotReproduced(NotReproduced::Outside { verb, path, how }),
                        None,
                    )
                }
                Some(Err(why)) => (Verdict::NotReproduced(NotReproduced::Failed(why)), None),
                None => (
                    Verdict::NotReproduced(NotReproduced::Failed(
                        "the worker stopped before this call".into(),
                    )),
                    None,
                ),
            },
        };
        calls.push(CallReport::new(call, verdict, rerun));
    }
    let report = Report {
        session: session.to_hex(),
        agent: recorded.agent.clone(),
        workspace: live.display().to_string(),
        user: format!("{} (uid {})", run_as.name, run_as.uid),
        network: match (isolation, &unshare_failed) {
            (Isolation::None, why) => {
                format!("NOT isolated ({})", why.as_deref().unwrap_or("no unshare"))
            }
            _ => "none (a network namespace of its own, made by unshare --net)".into(),
        },
        file_system: match (isolation, &ready, &unshare_failed) {
            (_, None, _) => "no call was run".into(),
            (Isolation::NetworkAndMounts, Some(r), _) if r.read_only => {
                if r.still_writable.is_empty() {
                    "read-only but the copy (a mount namespace of its own, made by unshare --mount)"
                        .into()
                } else {
                    format!(
                        "read-only but the copy, except {}",
                        r.still_writable.join(", ")
                    )
                }
            }
            (_, Some(_), why) => format!(
                "NOT read-only: only the rights of {} keep the calls from writing ({})",
                run_as.name,
                why.as_deref().unwrap_or("no mount namespace")
            ),
        },
        not_copied: scratch.not_copied.clone(),
        calls,
    };
    let out = if json {
        format!("{}\n", serde_json::to_string(&report)?)
    } else {
        rerun::text(&report)
    };
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(out.as_bytes()).and_then(|()| lock.flush());
    drop(scratch);
    Ok(if stop.load(Ordering::SeqCst) {
        // Interrupted: the calls not run say so.
        ExitCode::from(130)
    } else if report.all_same() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What `unshare` could give the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isolation {
    /// A network namespace (no network) and a mount namespace (the whole
    /// file system read-only but the copy).
    NetworkAndMounts,
    /// A network namespace only.
    Network,
    /// Neither.
    None,
}

impl Isolation {
    /// The `unshare` options for it.
    fn unshare_args(self) -> &'static [&'static str] {
        match self {
            Self::NetworkAndMounts => &["--net", "--mount", "--propagation", "private"],
            Self::Network => &["--net"],
            Self::None => &[],
        }
    }

    /// The most `unshare` can do here, and why not more.
    fn probe() -> (Self, Option<String>) {
        let mut why = None;
        for isolation in [Self::NetworkAndMounts, Self::Network] {
            match Command::new("unshare")
                .args(isolation.unshare_args())
                .args(["--", "true"])
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(out) if out.status.success() => return (isolation, why),
                Ok(out) => {
                    why.get_or_insert_with(|| {
                        format!(
                            "unshare {}: {}",
                            isolation.unshare_args().join(" "),
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                    });
                }
                Err(e) => return (Self::None, Some(format!("cannot run unshare: {e}"))),
            }
        }
        (Self::None, why)
    }
}

/// Starts the worker (as root, in the namespaces `isolation` names: it
/// drops to `run_as` itself once it has made the file system read-only),
/// feeds it the calls and reads what it could isolate, then one result per
/// call; a call it never answered is an error.
fn run_worker(
    input: &WorkerInput,
    run_as: &RunAs,
    isolation: Isolation,
    scratch: &Scratch,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(WorkerReady, Vec<Result<WorkerOutput, String>>)> {
    let exe = std::env::current_exe().context("--rerun: finding the con binary")?;
    let mut cmd = if isolation == Isolation::None {
        Command::new(&exe)
    } else {
        let mut c = Command::new("unshare");
        c.args(isolation.unshare_args()).arg("--").arg(&exe);
        c
    };
    cmd.arg(WORKER_COMMAND)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir(scratch.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("--rerun: starting the worker")?;
    // A signal to con replay stops the worker, which kills the command it
    // runs and answers no more.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, done) = (stop.clone(), done.clone());
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if stop.load(Ordering::SeqCst) {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let body = serde_json::to_vec(input)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("--rerun: the worker has no standard input"))?;
    // Written on a thread: the worker answers while it reads.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("--rerun: the worker has no standard error"))?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut text);
        text
    });
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("--rerun: the worker has no standard output"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = match lines.next() {
        Some(Ok(line)) => serde_json::from_str::<WorkerReady>(&line).ok(),
        _ => None,
    };
    let mut out = Vec::with_capacity(input.calls.len());
    for line in lines {
        let line = line.context("--rerun: reading the worker's results")?;
        out.push(
            serde_json::from_str::<WorkerOutput>(&line)
                .map_err(|e| format!("the worker's answer does not parse: {e}")),
        );
    }
    let _ = writer.join();
    let status = child.wait();
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let status = status.context("--rerun: waiting for the worker")?;
    let stderr = errors.join().unwrap_or_default();
    let why = || {
        if stop.load(Ordering::SeqCst) {
            return "interrupted by a signal before this call ran".to_owned();
        }
        format!(
            "the worker (as {} in {}) {status}{}",
            run_as.name,
            scratch.dir.path().display(),
            match stderr.trim() {
                "" => String::new(),
                e => format!(": {}", con_event::escape_control(e)),
            }
        )
    };
    let Some(ready) = ready else {
        anyhow::bail!("--rerun: {}", why());
    };
    while out.len() < input.calls.len() {
        out.push(Err(why()));
    }
    Ok((ready, out))
}

/// The hidden subcommand the worker runs as.
pub(crate) const WORKER_COMMAND: &str = "__rerun-worker";

/// The worker's first line: how it is isolated.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerReady {
    /// Whether the file system was made read-only but the copy.
    read_only: bool,
    /// Mount points it could not make read-only (and why).
    still_writable: Vec<String>,
}

/// The worker: started by root (in new namespaces, if `unshare` could make
/// them), it reads a [`WorkerInput`] on standard input, makes every mount
/// but the scratch directory read-only (in its own mount namespace),
/// becomes the rerun user for good (no groups, no new privileges), says
/// how isolated it is ([`WorkerReady`]), then runs each call with the
/// runner's tools in the copy and writes one [`WorkerOutput`] per call.
pub(crate) fn worker() -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("{WORKER_COMMAND} is started by con replay --rerun, as root");
    }
    let stop = Arc::new(AtomicBool::new(false));
    con_runner::stop_on_signals(stop.clone())?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let input: WorkerInput = serde_json::from_slice(&body).context("reading the calls")?;
    let (read_only, still_writable) = match &input.read_only_but {
        Some(keep) => (true, read_only_but(keep)?),
        None => (false, Vec::new()),
    };
    drop_privileges(
        Uid::from_raw(input.run_as_uid),
        Gid::from_raw(input.run_as_gid),
    )?;
    let root = real_path(&input.workspace);
    let ctx = con_runner::tools::ToolContext {
        workspace: input.workspace.clone(),
        env: input.env.clone(),
        stop: stop.clone(),
    };
    say(&WorkerReady {
        read_only,
        still_writable,
    })?;
    for call in &input.calls {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let answer = match &call.path {
            Some(path) if !real_path(path).starts_with(&root) => WorkerOutput {
                result: None,
                outside: Some(real_path(path).display().to_string()),
                failed: None,
            },
            _ => {
                let t0 = Instant::now();
                let out = con_runner::tools::run(
                    &ctx,
                    &call.tool,
                    &call.arguments,
                    con_runner::tools::EXEC_MAX_TIMEOUT,
                );
                if stop.load(Ordering::SeqCst) {
                    WorkerOutput {
                        result: None,
                        outside: None,
                        failed: Some("interrupted by a signal while it ran".into()),
                    }
                } else {
                    WorkerOutput {
                        result: Some(RerunResult {
                            exit_code: out.exit_code,
                            output: out.content,
                            duration_ms: u64::try_from(t0.elapsed().as_millis())
                                .unwrap_or(u64::MAX),
                        }),
                        outside: None,
                        failed: None,
                    }
                }
            }
        };
        say(&answer)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `line` as one JSON line on standard output, at once.
fn say(line: &impl Serialize) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    serde_json::to_writer(&mut lock, line)?;
    lock.write_all(b"\n")?;
    lock.flush()?;
    Ok(())
}

/// In the worker's own mount namespace: `keep` bound onto itself (so it
/// stays writable), then every other mount point remounted read-only
/// (keeping its nosuid, nodev, noexec and atime options). Returns the
/// mount points that could not be, with why.
fn read_only_but(keep: &Path) -> anyhow::Result<Vec<String>> {
    use nix::mount::{MsFlags, mount};
    mount(
        Some(keep),
        keep,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("binding {}", keep.display()))?;
    let info = fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    let mut failed = Vec::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let point = PathBuf::from(unescape_mountinfo(point));
        if point.starts_with(keep) {
            continue;
        }
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        for option in options.split(',') {
            flags |= match option {
                "nosuid" => MsFlags::MS_NOSUID,
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                "noatime" => MsFlags::MS_NOATIME,
                "nodiratime" => MsFlags::MS_NODIRATIME,
                "relatime" => MsFlags::MS_RELATIME,
                _ => MsFlags::empty(),
            };
        }
        if let Err(e) = mount(None::<&str>, &point, None::<&str>, flags, None::<&str>) {
            failed.push(format!("{}: {e}", point.display()));
        }
    }
    Ok(failed)
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Becomes `uid`/`gid` with no supplementary groups, for good: no
/// capabilities are kept, no set-user-ID program can raise them again
/// (`PR_SET_NO_NEW_PRIVS`), and the worker dies with `con replay`.
fn drop_privileges(uid: Uid, gid: Gid) -> anyhow::Result<()> {
    nix::unistd::setgroups(&[]).context("setgroups")?;
    nix::unistd::setresgid(gid, gid, gid).context("setresgid")?;
    nix::unistd::setresuid(uid, uid, uid).context("setresuid")?;
    nix::sys::prctl::set_no_new_privs().context("PR_SET_NO_NEW_PRIVS")?;
    // After the change of user, which clears it.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("PR_SET_PDEATHSIG")?;
    if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
        anyhow::bail!("still root after dropping privileges");
    }
    Ok(())
}

/// Where `path` leads, every symlink followed as the kernel would
/// (`realpath -m`): components that do not exist are taken as spelled.
fn real_path(path: &Path) -> PathBuf {
    let mut pending: Vec<OsString> = Vec::new();
    let push_all = |pending: &mut Vec<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_owned()),
                Component::ParentDir => pending.push("..".into()),
                _ => {}
            }
        }
    };
    push_all(&mut pending, path);
    let mut out = PathBuf::from("/");
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&c);
        match fs::read_link(&next) {
            // The kernel's own limit on links in one lookup.
            Ok(target) if hops < 40 => {
                hops += 1;
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                push_all(&mut pending, &target);
            }
            _ => out = next,
        }
    }
    out
}

/// A fresh temporary directory (removed when dropped) holding `workspace/`,
/// a copy of the agent's workspace as it is now, and `home/`, an empty
/// home, both the rerun user's.
struct Scratch {
    dir: tempfile::TempDir,
    not_copied: Vec<String>,
}

impl Scratch {
    fn new(live: &Path, run_as: &RunAs, agent: Option<(Uid, Gid)>) -> anyhow::Result<Self> {
        let meta = fs::symlink_metadata(live)
            .with_context(|| format!("--rerun: the agent's workspace {}", live.display()))?;
        if !meta.is_dir() {
            anyhow::bail!("--rerun: {} is not a directory", live.display());
        }
        let dir = tempfile::Builder::new()
            .prefix("con-rerun-")
            .tempdir()
            .context("--rerun: making a scratch directory")?;
        let mut scratch = Self {
            dir,
            not_copied: Vec::new(),
        };
        let top = scratch.dir.path().to_owned();
        fs::set_permissions(&top, fs::Permissions::from_mode(0o700))?;
        nix::unistd::chown(&top, Some(run_as.uid), Some(run_as.gid))?;
        fs::create_dir(scratch.home())?;
        nix::unistd::chown(&scratch.home(), Some(run_as.uid), Some(run_as.gid))?;
        let mut copy = Copy {
            live,
            scratch: scratch.workspace(),
            owner: (run_as.uid, run_as.gid),
            agent,
            left: COPY_LIMIT,
            not_copied: Vec::new(),
        };
        copy.tree(live, &scratch.workspace())?;
        scratch.not_copied = copy.not_copied;
        Ok(scratch)
    }

    fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
}

/// Copies a tree without following a symlink (each is copied as a link,
/// one into the live workspace pointed at the copy instead), keeping modes
/// and times; what the agent's user owned becomes the rerun user's, other
/// owners stay. Sockets, FIFOs and devices are listed, not copied.
struct Copy<'a> {
    live: &'a Path,
    scratch: PathBuf,
    owner: (Uid, Gid),
    agent: Option<(Uid, Gid)>,
    left: u64,
    not_copied: Vec<String>,
}

impl Copy<'_> {
    fn ids(&self, meta: &fs::Metadata) -> (Uid, Gid) {
        let (mut uid, mut gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
        if let Some((au, ag)) = self.agent {
            if uid == au {
                uid = self.owner.0;
            }
            if gid == ag {
                gid = self.owner.1;
            }
        }
        (uid, gid)
    }

    fn times(meta: &fs::Metadata, to: &Path) -> anyhow::Result<()> {
        let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
        let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        utimensat(
            nix::fcntl::AT_FDCWD,
            to,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .with_context(|| format!("setting the times of {}", to.display()))
    }

    fn tree(&mut self, from: &Path, to: &Path) -> anyhow::Result<()> {
        let meta = fs::symlink_metadata(from).with_context(|| from.display().to_string())?;
        let (uid, gid) = self.ids(&meta);
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(to).with_context(|| to.display().to_string())?;
            let mut entries: Vec<_> = fs::read_dir(from)
                .with_context(|| format!("--rerun: reading {}", from.display()))?
                .collect::<Result<_, _>>()?;
            entries.sort_by_key(fs::DirEntry::file_name);
            for entry in entries {
                self.tree(&entry.path(), &to.join(entry.file_name()))?;
            }
            nix::unistd::chown(to, Some(uid), Some(gid))?;
            // No set-user-ID on anything in the copy.
            fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o3777))?;
        } else if kind.is_symlink() {
            let target = fs::read_link(from)?;
            let target = match target.strip_prefix(self.live) {
                Ok(rest) if target.is_absolute() => self.scratch.join(rest),
                _ => target,
            };
            std::os::unix::fs::symlink(&target, to)?;
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                to,
                Some(uid),
                Some(gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        } else if kind.is_file() {
            // O_NOFOLLOW: a file swapped for a link since it was listed is
            // not followed out of the workspace.
            let mut src = OpenOptions::new()
                .read(true)
                .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
                .open(from)
                .with_context(|| format!("--rerun: copying {}", from.display()))?;
            let size = src.metadata()?.len();
            if size > self.left {
                anyhow::bail!(
                    "--rerun: the workspace {} holds more than the {} MiB a rerun copies",
                    self.live.display(),
                    COPY_LIMIT / (1024 * 1024)
                );
            }
            let mut dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(to)
                .with_context(|| to.display().to_string())?;
            let copied = std::io::copy(&mut (&mut src).take(self.left), &mut dst)?;
            self.left -= copied;
            drop(dst);
            nix::unistd::chown(to, Some(uid), Some(gid))?;
            // No set-user-ID or set-group-ID program in the copy: a root
            // one would be root's in a directory others may use.
            fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o1777))?;
        } else {
            let rel = from.strip_prefix(self.live).unwrap_or(from);
            self.not_copied.push(rel.display().to_string());
            return Ok(());
        }
        Self::times(&meta, to)
    }
}
