//! Running one shell command in its own process group, with a deadline, an
//! environment built from scratch and capped output.
//!
//! Agent runs use it for the `exec` tool and for external agent CLIs; it is
//! meant for anything else con runs on a host's behalf (contract checks)
//! under the same rules: when the command ends, times out or is told to
//! stop, every process still in its group is killed, and a command that
//! writes without end costs memory only up to the cap.

use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// After the command's group is killed, how long its output pipes may take
/// to reach end of file. A process that left the group (`setsid`) and kept
/// a pipe open would otherwise hold the session forever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// One command to run with `/bin/sh -c`; [`ShellCommand::run`] runs it.
#[derive(Debug)]
pub struct ShellCommand<'a> {
    /// The script.
    pub script: &'a str,
    /// Working directory.
    pub cwd: &'a Path,
    /// The whole environment (nothing is inherited).
    pub env: &'a [(String, String)],
    /// Bytes for standard input (`None`: `/dev/null`).
    pub stdin: Option<Vec<u8>>,
    /// Deadline, from the start.
    pub timeout: Duration,
    /// Bytes of standard output kept.
    pub stdout_cap: usize,
    /// Standard error: merged into standard output, or kept separately up to
    /// this many bytes.
    pub stderr: StderrMode,
    /// When set, the command is killed as on a timeout (an agent run told
    /// to stop).
    pub stop: Option<&'a AtomicBool>,
}

/// Where standard error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrMode {
    /// Into the same pipe as standard output, interleaved as written.
    Merged,
    /// Its own pipe, keeping this many bytes.
    Separate(usize),
}

/// Output read from one pipe: the first bytes up to a cap, and the total.
#[derive(Debug, Default)]
pub struct Captured {
    /// The bytes kept.
    pub bytes: Vec<u8>,
    /// Everything the command wrote.
    pub total: u64,
}

impl Captured {
    /// Whether more was written than kept.
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit code, or 128 + signal number.
    pub exit_code: i32,
    /// Whether the deadline killed it.
    pub timed_out: bool,
    /// Whether the run's stop signal killed it.
    pub stopped: bool,
    /// Standard output (with standard error when merged).
    pub stdout: Captured,
    /// Standard error when kept separately.
    pub stderr: Captured,
    /// Wall-clock duration.
    pub duration: Duration,
}

impl ShellCommand<'_> {
    /// Runs the command to completion, its deadline, or the stop flag.
    /// Whichever comes first, every process still in its process group is
    /// then SIGKILLed, so nothing it started in the background outlives it
    /// (a process that made itself a new session escapes; Linux permissions
    /// bound what it can do).
    pub fn run(self) -> io::Result<Finished> {
        let started = Instant::now();
        let (out_read, out_write) = io::pipe()?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(self.script)
            .current_dir(self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(out_write.try_clone()?);
        let err_read = match self.stderr {
            StderrMode::Merged => {
                cmd.stderr(out_write);
                None
            }
            StderrMode::Separate(cap) => {
                drop(out_write);
                let (r, w) = io::pipe()?;
                cmd.stderr(w);
                Some((r, cap))
            }
        };
        let spawned = cmd.spawn();
        // The command holds the parent's copies of the pipes' write ends; they
        // must be closed, or the readers never see end of file.
        drop(cmd);
        let mut child = spawned?;
        let pgid = i32::try_from(child.id()).map_err(|e| io::Error::other(e.to_string()))?;

        if let (Some(input), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // A command that does not read its input must not block the run.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let stdout = Reader::start(out_read, self.stdout_cap);
        let stderr = err_read.map(|(r, cap)| Reader::start(r, cap));

        let pid = Pid::from_raw(pgid);
        let deadline = started + self.timeout;
        let mut pause = Duration::from_millis(1);
        let mut stopped = false;
        let timed_out = loop {
            // WNOWAIT: the shell stays a zombie until the group is killed, so its
            // pid (the group id) cannot be reused by another process meanwhile.
            match waitid(
                Id::Pid(pid),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
            ) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                Ok(_) => break false,
                Err(e) => return Err(e.into()),
            }
            if self.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                stopped = true;
                break false;
            }
            let now = Instant::now();
            if now >= deadline {
                break true;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        // ESRCH (nobody left) is the normal case after a clean exit.
        let _ = killpg(pid, Signal::SIGKILL);
        let status = child.wait()?;
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        Ok(Finished {
            exit_code,
            timed_out,
            stopped,
            stdout: stdout.finish(),
            stderr: stderr.map(Reader::finish).unwrap_or_default(),
            duration: started.elapsed(),
        })
    }
}

/// A thread reading one pipe to its end, keeping the first `cap` bytes.
struct Reader {
    captured: Arc<Mutex<Captured>>,
    done: mpsc::Receiver<()>,
}

impl Reader {
    fn start(mut pipe: io::PipeReader, cap: usize) -> Self {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let (tx, done) = mpsc::channel();
        let shared = captured.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let Ok(mut c) = shared.lock() else { break };
                        let keep = cap.saturating_sub(c.bytes.len()).min(n);
                        c.bytes.extend_from_slice(&buf[..keep]);
                        c.total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Self { captured, done }
    }

    /// What was read, once the pipe ended or the grace period passed.
    fn finish(self) -> Captured {
        let _ = self.done.recv_timeout(DRAIN_GRACE);
        match self.captured.lock() {
            Ok(mut c) => std::mem::take(&mut *c),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use con_test_support::{live_in_group, pgid_of};

    const ENV: &[(&str, &str)] = &[("PATH", "/usr/bin:/bin"), ("ONLY", "this")];

    fn env() -> Vec<(String, String)> {
        ENV.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn run(script: &str, timeout: Duration, stop: Option<&AtomicBool>) -> Finished {
        let dir = tempfile::tempdir().unwrap();
        ShellCommand {
            script,
            cwd: dir.path(),
            env: &env(),
            stdin: None,
            timeout,
            stdout_cap: 1000,
            stderr: StderrMode::Merged,
            stop,
        }
        .run()
        .unwrap()
    }

    #[test]
    fn the_deadline_kills_a_grandchild_holding_the_output_pipe() {
        let started = Instant::now();
        // The grandchild (a subshell's sleep) keeps stdout open: had it
        // survived, reading the output would wait for it.
        let f = run(
            "echo $$; (sleep 30; echo late) & sleep 30",
            Duration::from_millis(300),
            None,
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(f.timed_out && !f.stopped);
        assert_eq!(f.exit_code, 128 + 9);
        let pgid = pgid_of(&f.stdout.bytes);
        assert!(live_in_group(pgid).is_empty(), "{:?}", live_in_group(pgid));
    }

    #[test]
    fn background_processes_do_not_outlive_a_clean_exit() {
        let f = run(
            "echo $$; sleep 30 & echo started",
            Duration::from_secs(20),
            None,
        );
        assert!(!f.timed_out);
        assert_eq!(f.exit_code, 0);
        assert!(f.stdout.bytes.ends_with(b"\nstarted\n"));
        assert!(live_in_group(pgid_of(&f.stdout.bytes)).is_empty());
    }

    #[test]
    fn the_stop_flag_kills_the_group() {
        let stop = AtomicBool::new(false);
        let f = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::SeqCst);
            });
            run(
                "echo $$; sleep 30 & sleep 30",
                Duration::from_secs(60),
                Some(&stop),
            )
        });
        assert!(f.stopped && !f.timed_out);
        assert!(f.duration < Duration::from_secs(10));
        assert!(live_in_group(pgid_of(&f.stdout.bytes)).is_empty());
    }

    #[test]
    fn output_is_capped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let f = ShellCommand {
            script: "head -c 25000 /dev/zero | tr '\\0' x; head -c 3000 /dev/zero | tr '\\0' e >&2",
            cwd: dir.path(),
            env: &env(),
            stdin: None,
            timeout: Duration::from_secs(30),
            stdout_cap: 100,
            stderr: StderrMode::Separate(10),
            stop: None,
        }
        .run()
        .unwrap();
        assert_eq!(f.stdout.bytes, vec![b'x'; 100]);
        assert_eq!(f.stdout.total, 25_000);
        assert!(f.stdout.truncated());
        assert_eq!(f.stderr.bytes, vec![b'e'; 10]);
        assert_eq!(f.stderr.total, 3000);
    }

    #[test]
    fn input_cwd_and_environment_are_exactly_what_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let f = ShellCommand {
            script: "pwd; env | grep -v '^PWD=\\|^SHLVL=\\|^_=' | sort; cat",
            cwd: dir.path(),
            env: &env(),
            stdin: Some(b"from stdin".to_vec()),
            timeout: Duration::from_secs(30),
            stdout_cap: 1000,
            stderr: StderrMode::Merged,
            stop: None,
        }
        .run()
        .unwrap();
        let expected = format!(
            "{}\nONLY=this\nPATH=/usr/bin:/bin\nfrom stdin",
            dir.path().display()
        );
        assert_eq!(String::from_utf8_lossy(&f.stdout.bytes), expected);
        assert!(!f.stdout.truncated());
    }
}
