//! Running one check (IO): through `con-process`, in its own process group
//! with a deadline that kills the whole group, an environment built from
//! scratch and capped output. A contract whose file is not root's runs as
//! its owner through `setpriv`, never as root.

use std::path::Path;
use std::time::{Duration, Instant};

use con_event::payloads::CheckStatus;
use con_process::{Finished, ShellCommand, StderrMode};
use nix::unistd::{Uid, User};

use crate::decide::{is_failure, outcome_of_exit};
use crate::load::{LoadedContract, read_trusted};
use crate::model::{Check, Probe};

/// Bytes of a check's output kept while it runs.
const CAPTURE_BYTES: usize = 16 * 1024;

/// Characters of output recorded in a result.
pub const RECORDED_CHARS: usize = 2048;

/// The setpriv that drops to a contract owner's user.
const SETPRIV: &str = "/usr/bin/setpriv";

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// Contract id.
    pub contract: String,
    /// Check name.
    pub check: String,
    /// The contract's scope agent, if any.
    pub scope_agent: Option<String>,
    /// Outcome.
    pub status: CheckStatus,
    /// What it printed (capped), or why it could not run.
    pub output: String,
    /// How long it took.
    pub duration: Duration,
}

/// Runs `check` of `loaded` with `env` (the whole environment, to which
/// `CON_CONTRACT`, `CON_CHECK` and, for a non-root owner, `HOME`, `USER`
/// and `LOGNAME` are added). Never fails: what goes wrong is the result.
pub fn run_check(loaded: &LoadedContract, check: &Check, env: &[(String, String)]) -> CheckResult {
    let started = Instant::now();
    let (status, output) = evaluate(loaded, check, env);
    let output = match check.on_fail.as_ref().and_then(|o| o.message.as_deref()) {
        Some(message) if is_failure(status) => {
            if output.is_empty() {
                message.to_owned()
            } else {
                format!("{message}: {output}")
            }
        }
        _ => output,
    };
    CheckResult {
        contract: loaded.contract.id.clone(),
        check: check.name.clone(),
        scope_agent: loaded.contract.scope.agent().map(str::to_owned),
        status,
        output: cap(&output),
        duration: started.elapsed(),
    }
}

/// Who a check runs as.
enum RunAs {
    Root,
    User(User),
}

fn evaluate(
    loaded: &LoadedContract,
    check: &Check,
    env: &[(String, String)],
) -> (CheckStatus, String) {
    let run_as = if loaded.owner == 0 {
        RunAs::Root
    } else {
        match User::from_uid(Uid::from_raw(loaded.owner)) {
            // A user in group root would get root's group's files.
            Ok(Some(u)) if u.gid.as_raw() != 0 => RunAs::User(u),
            Ok(Some(u)) => {
                return (
                    CheckStatus::Error,
                    format!("owner {} is in group root; not run", u.name),
                );
            }
            Ok(None) => {
                return (
                    CheckStatus::Error,
                    format!("owner uid {} has no user; not run", loaded.owner),
                );
            }
            Err(e) => return (CheckStatus::Error, format!("looking up the owner: {e}")),
        }
    };
    let mut env: Vec<(String, String)> = env.to_vec();
    env.push(("CON_CONTRACT".into(), loaded.contract.id.clone()));
    env.push(("CON_CHECK".into(), check.name.clone()));
    if let RunAs::User(u) = &run_as {
        env.retain(|(k, _)| !matches!(k.as_str(), "HOME" | "USER" | "LOGNAME"));
        env.push(("HOME".into(), u.dir.display().to_string()));
        env.push(("USER".into(), u.name.clone()));
        env.push(("LOGNAME".into(), u.name.clone()));
    }
    let deadline = Instant::now() + check.timeout;
    match &check.probe {
        Probe::Script { path } => {
            let file = loaded.dir.join(path);
            // Read now, through one descriptor, and run what was read: a
            // script swapped after the check would otherwise run unjudged.
            let body = match read_trusted(&file) {
                Ok((_, owner)) if owner != loaded.owner => {
                    return (
                        CheckStatus::Error,
                        format!(
                            "{}: owned by uid {owner}, the contract by uid {}; not run",
                            file.display(),
                            loaded.owner
                        ),
                    );
                }
                Ok((bytes, _)) => match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(_) => {
                        return (
                            CheckStatus::Error,
                            format!("{}: not valid UTF-8", file.display()),
                        );
                    }
                },
                Err(e) => return (CheckStatus::Error, format!("{}: {e}", file.display())),
            };
            match shell(
                &run_as,
                &loaded.dir,
                &body,
                &env,
                deadline,
                StderrMode::Merged,
            ) {
                Ok(f) => {
                    let status = outcome_of_exit(f.exit_code, f.timed_out);
                    let out = text(&f.stdout.bytes);
                    (status, describe(status, &f, check.timeout, out))
                }
                Err(e) => (CheckStatus::Error, format!("cannot run: {e}")),
            }
        }
        Probe::Command { run, test } => {
            let produced = match shell(
                &run_as,
                &loaded.dir,
                run,
                &env,
                deadline,
                StderrMode::Separate(CAPTURE_BYTES),
            ) {
                Ok(f) => f,
                Err(e) => return (CheckStatus::Error, format!("cannot run: {e}")),
            };
            let result = text(&produced.stdout.bytes);
            let errors = text(&produced.stderr.bytes);
            if produced.timed_out {
                return (
                    CheckStatus::Timeout,
                    describe(CheckStatus::Timeout, &produced, check.timeout, errors),
                );
            }
            env.push(("RESULT".into(), result.clone()));
            let tested = match shell(
                &run_as,
                &loaded.dir,
                test,
                &env,
                deadline,
                StderrMode::Merged,
            ) {
                Ok(f) => f,
                Err(e) => return (CheckStatus::Error, format!("cannot run the test: {e}")),
            };
            let status = outcome_of_exit(tested.exit_code, tested.timed_out);
            let mut out = format!("RESULT={result}");
            for extra in [errors, text(&tested.stdout.bytes)] {
                if !extra.is_empty() {
                    out.push_str("; ");
                    out.push_str(&extra);
                }
            }
            (status, describe(status, &tested, check.timeout, out))
        }
    }
}

/// Runs `body` with `/bin/sh -c` as `run_as`, in `cwd`, until `deadline`.
fn shell(
    run_as: &RunAs,
    cwd: &Path,
    body: &str,
    env: &[(String, String)],
    deadline: Instant,
    stderr: StderrMode,
) -> std::io::Result<Finished> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let mut env = env.to_vec();
    let wrapped;
    let script = match run_as {
        RunAs::Root => body,
        RunAs::User(u) => {
            // setpriv replaces the group leader's shell in place, so the
            // check stays in the group the deadline kills. The body travels
            // in the environment: nothing in it is parsed by this shell.
            env.push(("CON_CHECK_BODY".into(), body.to_owned()));
            wrapped = format!(
                "exec {SETPRIV} --reuid={} --regid={} --init-groups -- /bin/sh -c \"$CON_CHECK_BODY\" con-check",
                u.uid, u.gid
            );
            &wrapped
        }
    };
    ShellCommand {
        script,
        cwd,
        env: &env,
        stdin: None,
        timeout,
        stdout_cap: CAPTURE_BYTES,
        stderr,
        stop: None,
    }
    .run()
}

/// The recorded text of an outcome.
fn describe(status: CheckStatus, f: &Finished, timeout: Duration, out: String) -> String {
    let suffix = if f.stdout.truncated() {
        format!(" [{} bytes of output in all]", f.stdout.total)
    } else {
        String::new()
    };
    let head = match status {
        CheckStatus::Timeout => format!(
            "timed out after {}s, process group killed",
            timeout.as_secs_f64()
        ),
        CheckStatus::Error => format!("exit {}", f.exit_code),
        _ => String::new(),
    };
    match (head.is_empty(), out.is_empty()) {
        (true, _) => format!("{out}{suffix}"),
        (false, true) => format!("{head}{suffix}"),
        (false, false) => format!("{head}: {out}{suffix}"),
    }
}

/// Output as text, trimmed.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// At most [`RECORDED_CHARS`] characters.
fn cap(s: &str) -> String {
    match s.char_indices().nth(RECORDED_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::load::load_dir;

    fn env() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/bin:/bin".into())]
    }

    fn results(yaml: &str, script: Option<&str>) -> Vec<CheckResult> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), yaml).unwrap();
        if let Some(s) = script {
            std::fs::create_dir(dir.path().join("scripts")).unwrap();
            let p = dir.path().join("scripts/s.sh");
            std::fs::write(&p, s).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let loaded = load_dir(dir.path()).unwrap();
        assert!(loaded.broken.is_empty(), "{:?}", loaded.broken);
        let c = &loaded.contracts[0];
        c.contract
            .checks
            .iter()
            .map(|check| run_check(c, check, &env()))
            .collect()
    }

    #[test]
    fn commands_test_their_trimmed_result() {
        let r = results(
            r#"
id: T
type: detective
checks:
  - name: ok
    command: {run: "echo '  7 '", test: '[ "$RESULT" = 7 ]'}
  - name: low
    command: {run: "echo 3", test: "[ $RESULT -ge 15 ]"}
    on_fail: {action: alert, message: "too low"}
  - name: broken-test
    command: {run: "true", test: "[ $RESULT -ge 15 ]"}
  - name: env
    command: {run: 'echo "$CON_CONTRACT/$CON_CHECK"', test: '[ "$RESULT" = T/env ]'}
"#,
            None,
        );
        let got: Vec<(&str, CheckStatus)> =
            r.iter().map(|r| (r.check.as_str(), r.status)).collect();
        assert_eq!(
            got,
            [
                ("ok", CheckStatus::Pass),
                ("low", CheckStatus::Fail),
                ("broken-test", CheckStatus::Error),
                ("env", CheckStatus::Pass),
            ]
        );
        assert_eq!(r[1].output, "too low: RESULT=3");
        assert_eq!(r[0].output, "RESULT=7");
    }

    #[test]
    fn scripts_run_from_the_contract_dir_and_time_out_whole() {
        let r = results(
            "id: S\ntype: detective\nchecks:\n  - name: s\n    script: {path: scripts/s.sh, timeout: 1s}\n",
            Some("echo started\nsleep 30 &\nsleep 30\n"),
        );
        assert_eq!(r[0].status, CheckStatus::Timeout);
        assert!(
            r[0].duration < Duration::from_secs(10),
            "{:?}",
            r[0].duration
        );
        assert_eq!(
            r[0].output,
            "timed out after 1s, process group killed: started"
        );
        let r = results(
            "id: S\ntype: detective\nchecks:\n  - name: s\n    script: {path: scripts/s.sh}\n  - name: missing\n    script: {path: scripts/none.sh}\n",
            Some("echo bad; exit 1\n"),
        );
        assert_eq!(
            (r[0].status, r[0].output.as_str()),
            (CheckStatus::Fail, "bad")
        );
        assert_eq!(r[1].status, CheckStatus::Error);
        assert!(r[1].output.contains("none.sh: "), "{}", r[1].output);
    }

    #[test]
    fn long_output_is_capped() {
        let r = results(
            "id: L\ntype: detective\nchecks:\n  - name: l\n    script: {path: scripts/s.sh}\n",
            Some("head -c 100000 /dev/zero | tr '\\0' x\n"),
        );
        assert_eq!(r[0].status, CheckStatus::Pass);
        assert!(r[0].output.chars().count() <= RECORDED_CHARS + 1);
    }
}
