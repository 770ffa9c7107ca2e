//! The tools as the kernel sees them: this test binary re-runs its own
//! `probe` as a real unprivileged user (through `setpriv`), or with a
//! secret in its environment, and reads back what the tools returned.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use con_runner::tools::{self, ToolContext, scrubbed_env};
use con_test_support::TestUser;
use serde_json::{Value, json};

const PROBE: &str = "CON_RUNNER_PROBE";
const PROBE_DIR: &str = "CON_RUNNER_PROBE_DIR";
const FAKE_SECRET: &str = "CON_RUNNER_TEST_API_KEY";

/// Runs `probe` in a child of this test binary: `setpriv` as `user` when
/// given, with `env` as its whole environment.
fn run_probe(user: Option<&TestUser>, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match user {
        Some(u) => u.command_with_groups(&exe),
        None => Command::new(&exe),
    };
    let out = cmd
        .args(["--exact", "as_user::probe", "--ignored", "--test-threads=1"])
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "probe failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A dir the test user can traverse (tempfile's 0700 would deny everything
/// for the wrong reason).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn results(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("workspace/results.json")).unwrap()).unwrap()
}

#[test]
fn permission_errors_are_tool_errors_for_an_unprivileged_user() {
    let user = TestUser::unique("crn");
    let dir = open_dir();
    let ws = dir.path().join("workspace");
    fs::create_dir(&ws).unwrap();
    user.chown(&ws);
    let secret = dir.path().join("secret.txt");
    fs::write(&secret, "root only").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();

    run_probe(
        Some(&user),
        &[
            (PROBE, "permissions"),
            (PROBE_DIR, dir.path().to_str().unwrap()),
        ],
    );

    let r = results(dir.path());
    for tool in [
        "read_file",
        "edit_file",
        "append_file",
        "write_file",
        "list_dir",
    ] {
        assert_eq!(r[tool]["is_error"], true, "{tool}: {}", r[tool]);
        assert!(
            r[tool]["content"]
                .as_str()
                .unwrap()
                .contains("Permission denied"),
            "{tool}: {}",
            r[tool]
        );
    }
    // exec itself works; the kernel refuses the command, which the model
    // sees as its output and exit code.
    assert_eq!(r["exec"]["is_error"], false);
    assert_eq!(r["exec"]["exit_code"], 1);
    assert!(
        r["exec"]["content"]
            .as_str()
            .unwrap()
            .contains("Permission denied")
    );
    assert!(
        r["exec"]["content"]
            .as_str()
            .unwrap()
            .contains(&format!("uid={}", user.uid))
    );
    // What the user may do still works.
    assert_eq!(r["own_write"]["is_error"], false, "{}", r["own_write"]);
    assert!(!locked.join("x").exists());
    assert_eq!(fs::read_to_string(&secret).unwrap(), "root only");
    // As this user, `con run` refuses to run an agent it is not.
    assert!(
        r["identity"]
            .as_str()
            .unwrap()
            .contains(&format!("must run as user a-worker1, not {}", user.name)),
        "{}",
        r["identity"]
    );
}

#[test]
fn commands_do_not_see_the_runs_environment() {
    let dir = open_dir();
    fs::create_dir(dir.path().join("workspace")).unwrap();
    run_probe(
        None,
        &[
            (PROBE, "env"),
            (PROBE_DIR, dir.path().to_str().unwrap()),
            (FAKE_SECRET, "sk-test-0123456789"),
            ("PATH", "/usr/bin:/bin"),
        ],
    );
    let r = results(dir.path());
    assert_eq!(
        r["parent_saw_secret"], true,
        "the probe must have had the secret"
    );
    let out = r["env"]["content"].as_str().unwrap();
    assert!(!out.contains("sk-test-0123456789"), "{out}");
    assert!(!out.contains(FAKE_SECRET), "{out}");
    assert!(out.contains("USER=probe-user"), "{out}");
}

#[test]
fn root_is_refused() {
    // The test suite runs as root (it creates users).
    let err = con_runner::check_identity(&con_layout::Layout::host(), "worker1").unwrap_err();
    assert!(
        err.to_string().starts_with("con run must not run as root"),
        "{err}"
    );
}

/// The probe itself: does nothing unless a parent test set `CON_RUNNER_PROBE`.
#[test]
#[ignore = "run by the other tests of this file, as another user or with another environment"]
fn probe() {
    let mode = std::env::var(PROBE).expect("run only through run_probe");
    let dir = std::path::PathBuf::from(std::env::var(PROBE_DIR).unwrap());
    let ws = dir.join("workspace");
    let ctx = ToolContext {
        env: scrubbed_env(Path::new("/nonexistent"), "probe-user", &ws),
        workspace: ws.clone(),
        stop: Default::default(),
    };
    let call = |tool: &str, args: Value| -> Value {
        let out = tools::run(&ctx, tool, &args, Duration::from_secs(30));
        json!({
            "content": out.content,
            "is_error": out.is_error,
            "exit_code": out.exit_code,
            "error": out.error,
        })
    };
    let secret = dir.join("secret.txt");
    let locked = dir.join("locked");
    let report = match mode.as_str() {
        "permissions" => json!({
            "read_file": call("read_file", json!({"path": secret})),
            "edit_file": call("edit_file", json!({"path": secret, "old_text": "root", "new_text": "mine"})),
            "append_file": call("append_file", json!({"path": secret, "content": "x"})),
            "write_file": call("write_file", json!({"path": locked.join("x"), "content": "x"})),
            "list_dir": call("list_dir", json!({"path": locked})),
            "exec": call("exec", json!({"command": format!("id; cat {}", secret.display())})),
            "own_write": call("write_file", json!({"path": "mine.txt", "content": "ok"})),
            "identity": con_runner::check_identity(&con_layout::Layout::host(), "worker1").unwrap_err().to_string(),
        }),
        "env" => json!({
            "parent_saw_secret": std::env::var(FAKE_SECRET).is_ok(),
            "env": call("exec", json!({"command": "env"})),
        }),
        other => panic!("unknown probe {other}"),
    };
    fs::write(
        ws.join("results.json"),
        serde_json::to_vec(&report).unwrap(),
    )
    .unwrap();
}
