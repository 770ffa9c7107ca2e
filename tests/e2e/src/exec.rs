//! Running commands inside a container (through nsenter) with a time limit,
//! and what they leave behind.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

use crate::container::Container;
use crate::error::{Error, Result};

/// How long a command inside a container may run unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// `PATH` inside containers: Debian's root default, `/usr/local/bin` (con) first.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to wait for a killed command's pipes to close: a process that
/// double-forked may hold them open forever, and then we give up on its output.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What a finished command left: exit code and output (lossily decoded).
#[derive(Clone, PartialEq, Eq)]
pub struct Output {
    /// The command as it would be typed (for messages).
    pub command: String,
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Output {
    /// Whether it exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout without surrounding whitespace: what `$(cmd)` would give.
    pub fn stdout_trimmed(&self) -> &str {
        self.stdout.trim()
    }

    /// `Ok(self)` if it exited with 0, else [`Error::Failed`] carrying it all.
    pub fn ok(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Failed(Box::new(self)))
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ended = match (self.code, self.signal) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => String::from("did not finish"),
        };
        write!(f, "`{}` {ended}", self.command)?;
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.is_empty() {
                write!(f, "\n--- {name} ---\n{}", text.trim_end())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a command reads on stdin.
pub(crate) enum Input {
    Null,
    Bytes(Vec<u8>),
    Stdio(Stdio),
}

/// A command to run inside a container; see [`Container::command`].
///
/// It runs as root with a clean environment (`PATH`, `HOME=/root`,
/// `LANG=C.UTF-8` plus whatever [`Exec::env`] adds), in the container's mount,
/// UTS, IPC, network and PID namespaces, and is killed (with everything it
/// started in its process group) when [`Exec::timeout`] passes.
#[must_use = "an Exec does nothing until .output() or .ok()"]
pub struct Exec<'c> {
    container: &'c Container,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    user: Option<String>,
    stdin: Input,
    timeout: Duration,
}

impl<'c> Exec<'c> {
    pub(crate) fn new(container: &'c Container, argv: &[&str]) -> Self {
        Exec {
            container,
            argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
            env: Vec::new(),
            user: None,
            stdin: Input::Null,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs it as `user` (a name or uid inside the container) with that
    /// user's primary group and supplementary groups and a reset environment
    /// (`setpriv --init-groups --reset-env`): what the kernel lets that user do
    /// is what the command can do.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    /// Feeds `bytes` to the command's stdin (default: /dev/null).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Input::Bytes(bytes.into());
        self
    }

    pub(crate) fn stdin_from(mut self, stdio: Stdio) -> Self {
        self.stdin = Input::Stdio(stdio);
        self
    }

    /// Kills the command after `timeout` (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs it and returns what it left, whatever its exit code. Errors only
    /// when it cannot be started or times out.
    pub fn output(self) -> Result<Output> {
        let shown = shell_words(&self.argv);
        let command = match &self.user {
            Some(user) => format!("[{} as {user}] {shown}", self.container.name()),
            None => format!("[{}] {shown}", self.container.name()),
        };
        let mut inner: Vec<String> = Vec::new();
        if let Some(user) = &self.user {
            // setpriv wants a group for --regid; the user's primary one is
            // looked up inside the container, where the user exists.
            inner.extend(
                [
                    "/bin/sh",
                    "-c",
                    r#"u=$1; shift; g=$(id -g -- "$u") || exit 125; exec setpriv --reuid="$u" --regid="$g" --init-groups --reset-env -- "$@""#,
                    "sh",
                    user,
                ]
                .map(String::from),
            );
            if !self.env.is_empty() {
                // --reset-env dropped everything; put the caller's variables back.
                inner.push(String::from("env"));
                inner.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
            }
        }
        inner.extend(self.argv.iter().cloned());

        let mut cmd = Command::new(&self.container.tools().nsenter);
        cmd.env_clear()
            .env("PATH", CONTAINER_PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .arg(format!("--target={}", self.container.pid1()))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
            .args(&inner);
        if self.user.is_none() {
            cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        run(cmd, command, self.stdin, self.timeout)
    }

    /// Runs it and requires exit code 0 ([`Error::Failed`] otherwise, with
    /// both output streams in the message).
    pub fn ok(self) -> Result<Output> {
        self.output()?.ok()
    }
}

/// Runs `cmd` in its own process group, feeding `stdin`, collecting both
/// output streams, and killing the group after `timeout`.
pub(crate) fn run(
    mut cmd: Command,
    command: String,
    stdin: Input,
    timeout: Duration,
) -> Result<Output> {
    let (stdin, feed) = match stdin {
        Input::Null => (Stdio::null(), None),
        Input::Bytes(bytes) => (Stdio::piped(), Some(bytes)),
        Input::Stdio(stdio) => (stdio, None),
    };
    // Its own process group, so a timeout kills nsenter's forked child too.
    cmd.process_group(0)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {command}"), e))?;
    if let (Some(bytes), Some(mut pipe)) = (feed, child.stdin.take()) {
        // A command that exits without reading its input is its own business:
        // the broken pipe is ignored, its exit code tells the story.
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());

    let status = child
        .wait_timeout(timeout)
        .map_err(|e| Error::io(format!("waiting for {command}"), e))?;
    let (status, timed_out) = match status {
        Some(status) => (status, false),
        None => {
            let status =
                kill_group(&mut child).map_err(|e| Error::io(format!("reaping {command}"), e))?;
            (status, true)
        }
    };
    let output = Output {
        command,
        code: status.code(),
        signal: status.signal(),
        stdout: collect(&stdout),
        stderr: collect(&stderr),
    };
    if timed_out {
        return Err(Error::Timeout {
            after: timeout,
            output: Box::new(output),
        });
    }
    Ok(output)
}

/// Kills a command that ran out of time, and everything in its process group.
///
/// The leader (nsenter) goes last: a process it forked into the container
/// must die while nsenter can still reap it. Orphaned first, it would be
/// reparented to the host's init — outside the container — and on a host
/// whose init does not reap, stay a zombie in the container and stall its
/// shutdown.
fn kill_group(child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    let Ok(leader) = i32::try_from(child.id()) else {
        child.kill()?;
        return child.wait();
    };
    for pid in group_members(leader) {
        // ESRCH: it exited in the meantime.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Some(status) = child.wait_timeout(LEADER_GRACE)? {
        return Ok(status);
    }
    let _ = killpg(Pid::from_raw(leader), Signal::SIGKILL);
    child.wait()
}

/// How long the group leader gets to exit on its own once its members are dead.
const LEADER_GRACE: Duration = Duration::from_secs(5);

/// Host pids in process group `pgid`, the leader itself excepted.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != pgid)
        .filter(|pid| {
            // Fields after the parenthesised name: state, ppid, pgrp, ...
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                    .and_then(|pgrp| pgrp.parse::<i32>().ok())
                    == Some(pgid)
            })
        })
        .collect()
}

/// Reads a pipe to its end on a thread; the bytes arrive on the channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error ends the stream; what arrived so far is kept.
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
    }
    rx
}

fn collect(rx: &mpsc::Receiver<Vec<u8>>) -> String {
    match rx.recv_timeout(DRAIN_GRACE) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            String::from("<output unavailable: a leftover process still holds the pipe>")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => String::new(),
    }
}

/// `argv` as a shell would need it typed, for messages.
pub(crate) fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quotes_only_what_needs_it() {
        let argv = [
            "systemctl",
            "is-active",
            "con-agent@x.path",
            "a b",
            "it's",
            "",
        ]
        .map(String::from);
        assert_eq!(
            shell_words(&argv),
            r#"systemctl is-active con-agent@x.path 'a b' 'it'\''s' ''"#
        );
    }

    #[test]
    fn host_commands_report_output_codes_and_timeouts() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = run(
            cmd,
            "sh".into(),
            Input::Bytes(b"in".to_vec()),
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (Some(3), "in", "err\n")
        );
        let message = out.clone().ok().unwrap_err().to_string();
        assert!(message.contains("`sh` exited with 3") && message.contains("--- stderr ---\nerr"));

        let mut cmd = Command::new("/bin/sh");
        // The background sleep holds the pipes: killing the group must free them.
        cmd.args(["-c", "echo started; sleep 30 & sleep 30"]);
        let started = std::time::Instant::now();
        let err = run(cmd, "slow".into(), Input::Null, Duration::from_millis(300)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        match err {
            Error::Timeout { output, .. } => {
                // sh itself outlives its killed children and exits 128 + 9.
                assert_eq!(output.code, Some(137), "{output}");
                assert_eq!(output.stdout, "started\n");
            }
            other => panic!("expected a timeout, got {other}"),
        }
    }
}
