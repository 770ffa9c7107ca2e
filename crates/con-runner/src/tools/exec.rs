//! `exec`: one shell command in the workspace.

use std::time::Duration;

use serde::Deserialize;

use con_process::{ShellCommand, StderrMode};

use super::{ToolContext, ToolOutput};

/// Timeout when the model gives none.
pub const EXEC_DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest timeout the model may ask for.
pub const EXEC_MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes of output (standard output and error together) returned to the model.
pub const EXEC_OUTPUT_CAP: usize = 10_000;

/// `exec`'s arguments.
#[derive(Clone, Debug, Deserialize)]
pub struct ExecArgs {
    /// The shell command.
    pub command: String,
    /// Seconds before the command's process group is killed.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Runs `args.command` with `/bin/sh -c` in the workspace, in its own
/// process group, with the context's environment only. The timeout is the
/// model's (default [`EXEC_DEFAULT_TIMEOUT`], at most [`EXEC_MAX_TIMEOUT`]),
/// and never more than `time_left` in the session.
pub fn exec(ctx: &ToolContext, args: &ExecArgs, time_left: Duration) -> ToolOutput {
    let asked = args
        .timeout_secs
        .map_or(EXEC_DEFAULT_TIMEOUT, Duration::from_secs)
        .clamp(Duration::from_secs(1), EXEC_MAX_TIMEOUT);
    let timeout = asked.min(time_left);
    let command = ShellCommand {
        script: &args.command,
        cwd: &ctx.workspace,
        env: &ctx.env,
        stdin: None,
        timeout,
        stdout_cap: EXEC_OUTPUT_CAP,
        stderr: StderrMode::Merged,
        stop: Some(&ctx.stop),
    };
    let finished = match command.run() {
        Ok(f) => f,
        Err(e) => {
            return ToolOutput::error(format!(
                "cannot run the command in {}: {e}",
                ctx.workspace.display()
            ));
        }
    };
    let out = &finished.stdout;
    let mut content = String::from_utf8_lossy(&out.bytes).into_owned();
    if out.truncated() {
        content.push_str(&format!(
            "\n[output truncated: the first {} of {} bytes are shown (cap {EXEC_OUTPUT_CAP} bytes)]",
            out.bytes.len(),
            out.total
        ));
    }
    let (is_error, error) = if finished.stopped {
        let message = "the run was told to stop; the command's process group was killed".to_owned();
        content.push_str(&format!("\n[{message}]"));
        (true, Some(message))
    } else if finished.timed_out {
        let why = if timeout < asked {
            "the session's time ran out"
        } else {
            "its timeout"
        };
        let message = format!(
            "timed out after {} s ({why}); the command's process group was killed",
            timeout.as_secs_f64()
        );
        content.push_str(&format!("\n[{message}]"));
        (true, Some(message))
    } else {
        (false, None)
    };
    content.push_str(&format!("\n[exit code {}]", finished.exit_code));
    ToolOutput {
        content,
        is_error,
        exit_code: Some(finished.exit_code),
        truncated: out.truncated(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;
    use crate::tools::scrubbed_env;
    use con_test_support::{live_in_group, pgid_of};

    fn ctx(dir: &Path) -> ToolContext {
        ToolContext {
            workspace: dir.to_owned(),
            env: scrubbed_env(Path::new("/nonexistent-home"), "agentx", dir),
            stop: std::sync::Arc::default(),
        }
    }

    fn args(command: &str, timeout_secs: Option<u64>) -> ExecArgs {
        ExecArgs {
            command: command.into(),
            timeout_secs,
        }
    }

    #[test]
    fn runs_in_the_workspace_with_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let out = exec(
            &ctx(dir.path()),
            &args("pwd; echo err >&2; exit 3", None),
            Duration::from_secs(30),
        );
        assert!(!out.is_error, "{}", out.content);
        assert_eq!(out.exit_code, Some(3));
        assert!(
            out.content.contains(&dir.path().display().to_string()),
            "{}",
            out.content
        );
        assert!(
            out.content.contains("err"),
            "stderr is merged: {}",
            out.content
        );
        assert!(out.content.ends_with("[exit code 3]"), "{}", out.content);
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let out = exec(
            &ctx(dir.path()),
            &args("echo $$; sleep 30 & sleep 30", Some(1)),
            Duration::from_secs(30),
        );
        // The background grandchild kept the output pipe open: had it
        // survived, reading the output would have waited for it.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert!(out.is_error);
        assert!(
            out.content.contains("timed out after 1 s (its timeout)"),
            "{}",
            out.content
        );
        assert_eq!(out.exit_code, Some(128 + 9));
        let pgid = pgid_of(out.content.as_bytes());
        let survivors = live_in_group(pgid);
        assert!(
            survivors.is_empty(),
            "survivors of group {pgid}: {survivors:?}"
        );
    }

    #[test]
    fn the_stop_flag_kills_a_running_command() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path());
        let stop = c.stop.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let start = Instant::now();
        let out = exec(
            &c,
            &args("echo $$; sleep 30 & sleep 30", None),
            Duration::from_secs(60),
        );
        setter.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(out.is_error);
        assert!(
            out.content.contains("the run was told to stop"),
            "{}",
            out.content
        );
        assert!(live_in_group(pgid_of(out.content.as_bytes())).is_empty());
    }

    #[test]
    fn session_time_left_bounds_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let out = exec(
            &ctx(dir.path()),
            &args("sleep 30", Some(300)),
            Duration::from_millis(300),
        );
        assert!(out.is_error);
        assert!(
            out.content.contains("the session's time ran out"),
            "{}",
            out.content
        );
    }

    #[test]
    fn output_is_capped_and_the_total_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = exec(
            &ctx(dir.path()),
            &args("head -c 25000 /dev/zero | tr '\\0' x", None),
            Duration::from_secs(30),
        );
        assert!(out.truncated);
        assert!(!out.is_error);
        let (shown, _) = out.content.split_once('\n').unwrap();
        assert_eq!(shown, "x".repeat(EXEC_OUTPUT_CAP));
        assert!(
            out.content
                .contains("the first 10000 of 25000 bytes are shown (cap 10000 bytes)"),
            "{}",
            &out.content[EXEC_OUTPUT_CAP..]
        );
    }

    #[test]
    fn environment_is_built_from_scratch() {
        // Whatever this test process inherited, the command sees exactly the
        // six variables of the context (tests/it/as_user.rs plants a secret in
        // the runner's own environment and checks it does not leak).
        let dir = tempfile::tempdir().unwrap();
        let out = exec(
            &ctx(dir.path()),
            &args("env", None),
            Duration::from_secs(30),
        );
        let mut names: Vec<&str> = out
            .content
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["HOME", "LANG", "LOGNAME", "PATH", "PWD", "USER"],
            "{}",
            out.content
        );
        assert!(out.content.contains("USER=agentx"), "{}", out.content);
    }
}
