//! Contract files evaluated by the real daemon on a temp root: results
//! recorded, timeouts that kill the whole process group, broken files next
//! to good ones, files owned by an agent's user, the schedule, and the exit
//! codes of `con contracts check`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use con_event::Payload;
use con_event::payloads::{CheckStatus, ContractResult};
use con_test_support::{Daemon, Root, TestUser, all_events, live_in_group};

use crate::CON;

fn contracts_dir(root: &Root) -> PathBuf {
    let dir = root.path().join("srv/con/contracts");
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    for d in [
        root.path().join("srv"),
        root.path().join("srv/con"),
        dir.clone(),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn con(root: &Root, args: &[&str]) -> Output {
    Command::new(CON)
        .args(root.con_flags())
        .args(args)
        .output()
        .unwrap()
}

/// `con contracts check --json IDS`: exit code and rows.
fn check(root: &Root, ids: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut args = vec!["contracts", "check", "--json"];
    args.extend_from_slice(ids);
    let out = con(root, &args);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code(), rows.as_array().unwrap().clone())
}

fn row<'a>(rows: &'a [serde_json::Value], contract: &str, check: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["contract"] == contract && r["check"] == check)
        .unwrap_or_else(|| panic!("no {contract}/{check} in {rows:?}"))
}

fn recorded(root: &Root, contract: &str) -> Vec<ContractResult> {
    all_events(&root.socket())
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::ContractResult(r) if r.contract == contract => Some(r),
            _ => None,
        })
        .collect()
}

const IMPOSSIBLE: &str = r#"
id: T-IMPOSSIBLE
description: more than all the disk free
type: detective
scope: system
checks:
  - name: disk_free_pct
    command:
      run: "df -P \"$CON_SRV_DIR\" | awk 'NR == 2 { sub(\"%\", \"\", $5); print 100 - $5 }'"
      test: "[ \"$RESULT\" -ge 101 ]"
    on_fail:
      action: alert
      message: "not enough free space"
"#;

const HOLDS: &str = r#"
id: T-HOLDS
type: detective
checks:
  - name: env
    command:
      run: 'echo "$CON_ROOT|$CON_USER_PREFIX|$CON_CONTRACT|$CON_CHECK"'
      test: '[ "$RESULT" = "$CON_ROOT|$CON_USER_PREFIX|T-HOLDS|env" ]'
"#;

#[test]
fn an_impossible_threshold_fails_is_recorded_and_sets_the_exit_code() {
    let root = Root::new();
    let dir = contracts_dir(&root);
    write(&dir.join("impossible.yaml"), IMPOSSIBLE, 0o644);
    write(&dir.join("holds.yaml"), HOLDS, 0o644);
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);

    let (code, rows) = check(&root, &["T-IMPOSSIBLE"]);
    assert_eq!(code, Some(1), "{rows:?}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = row(&rows, "T-IMPOSSIBLE", "disk_free_pct");
    assert_eq!(r["status"], "fail");
    let detail = r["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("not enough free space: RESULT="),
        "{detail}"
    );
    let seq = r["seq"].as_u64().unwrap();

    let results = recorded(&root, "T-IMPOSSIBLE");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].status, CheckStatus::Fail);
    assert_eq!(results[0].check, "disk_free_pct");
    assert_eq!(results[0].detail, detail);
    let event = all_events(&root.socket())
        .into_iter()
        .find(|e| e.seq() == seq)
        .unwrap();
    assert!(matches!(event.payload, Payload::ContractResult(_)));

    // The environment names this host; a passing contract exits 0.
    let (code, rows) = check(&root, &["T-HOLDS"]);
    assert_eq!(code, Some(0), "{rows:?}");
    assert_eq!(row(&rows, "T-HOLDS", "env")["status"], "pass");

    // Everything: the built-in checks too, and the failure fails the run.
    let (code, rows) = check(&root, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        row(&rows, "CON-LOG-002", "database-permissions")["status"],
        "pass"
    );
    assert_eq!(rows.len(), 6, "{rows:?}");

    // An unknown id: nothing runs, one line on stderr, exit 1.
    let out = con(&root, &["contracts", "check", "T-NONE"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no contract \"T-NONE\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The text form: one line per check, then the summary.
    let out = con(&root, &["contracts", "check", "T-IMPOSSIBLE", "T-HOLDS"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(
        lines[2],
        "2 checks: 1 passed, 1 failed, 0 errors, 0 timed out, 0 skipped"
    );

    // The list tells the state from the log.
    let out = con(&root, &["contracts", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = list["checks"].as_array().unwrap();
    let failing = checks
        .iter()
        .find(|c| c["contract"] == "T-IMPOSSIBLE")
        .unwrap();
    assert_eq!(failing["state"], "failing");
    assert_eq!(failing["failing_since_seq"].as_u64(), Some(seq));
    let passing = checks.iter().find(|c| c["contract"] == "T-HOLDS").unwrap();
    assert_eq!(passing["state"], "passing");
}

#[test]
fn a_hanging_check_is_killed_with_its_whole_group_at_the_timeout() {
    let root = Root::new();
    let dir = contracts_dir(&root);
    write(
        &dir.join("hang.yaml"),
        "id: T-HANG\ntype: detective\nchecks:\n  - name: hang\n    script: {path: scripts/hang.sh, timeout: 1s}\n",
        0o644,
    );
    // The grandchild keeps the output pipe open: had it survived, reading
    // the output would wait for it.
    write(
        &dir.join("scripts/hang.sh"),
        "echo $$\n(sleep 300; echo late) &\nsleep 300\n",
        0o755,
    );
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let started = Instant::now();
    let (code, rows) = check(&root, &["T-HANG"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(1));
    let r = row(&rows, "T-HANG", "hang");
    assert_eq!(r["status"], "timeout");
    let detail = r["detail"].as_str().unwrap();
    let pgid: i32 = detail
        .strip_prefix("timed out after 1s, process group killed: ")
        .unwrap_or_else(|| panic!("{detail}"))
        .trim()
        .parse()
        .unwrap();
    assert!(live_in_group(pgid).is_empty(), "{:?}", live_in_group(pgid));
    assert_eq!(recorded(&root, "T-HANG")[0].status, CheckStatus::Timeout);
}

#[test]
fn a_malformed_file_is_a_failure_of_its_own_and_the_others_still_run() {
    let root = Root::new();
    let dir = contracts_dir(&root);
    write(&dir.join("a-holds.yaml"), HOLDS, 0o644);
    write(
        &dir.join("b-broken.yaml"),
        "id: T-BROKEN\ntype: detective\nchecks: [\n",
        0o644,
    );
    write(
        &dir.join("c-bad-field.yaml"),
        "id: T-BADFIELD\ntype: detective\nchecks:\n  - name: x\n    command: {run: 'echo 1', tset: 'true'}\n",
        0o644,
    );
    write(&dir.join("d-impossible.yaml"), IMPOSSIBLE, 0o644);
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);

    let out = con(&root, &["healthcheck", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row(&rows, "T-HOLDS", "env")["status"], "pass");
    assert_eq!(
        row(&rows, "T-IMPOSSIBLE", "disk_free_pct")["status"],
        "fail"
    );
    let broken = row(&rows, "b-broken.yaml", "load");
    assert_eq!(broken["status"], "error");
    let field = row(&rows, "T-BADFIELD", "load");
    assert_eq!(field["status"], "error");
    let message = field["detail"].as_str().unwrap();
    assert!(
        message.ends_with("c-bad-field.yaml: contract T-BADFIELD: checks[0].command.tset: unknown field (expected one of run, test)"),
        "{message}"
    );
    // Recorded like any other result.
    assert_eq!(recorded(&root, "T-BADFIELD")[0].status, CheckStatus::Error);
    assert_eq!(recorded(&root, "T-HOLDS")[0].status, CheckStatus::Pass);
}

#[test]
fn a_contract_owned_by_an_agent_user_runs_as_that_user() {
    let root = Root::new();
    let dir = contracts_dir(&root);
    let user = TestUser::unique("ct");
    let mine = dir.join("mine.yaml");
    write(
        &mine,
        "id: T-MINE\ntype: detective\nchecks:\n  - name: whoami\n    command: {run: 'id -u', test: 'true'}\n  - name: script\n    script: {path: scripts/mine.sh}\n",
        0o644,
    );
    user.chown(&mine);
    let script = dir.join("scripts/mine.sh");
    write(&script, "id -u\n", 0o755);
    user.chown(&script);
    // Root's contract running a script someone else owns: refused.
    write(
        &dir.join("theirs.yaml"),
        "id: T-THEIRS\ntype: detective\nchecks:\n  - name: script\n    script: {path: scripts/mine.sh}\n",
        0o644,
    );
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);

    let (_, rows) = check(&root, &["T-MINE", "T-THEIRS"]);
    let uid = user.uid.to_string();
    let r = row(&rows, "T-MINE", "whoami");
    assert_eq!(r["status"], "pass", "{r}");
    assert_eq!(r["detail"], format!("RESULT={uid}"));
    let r = row(&rows, "T-MINE", "script");
    assert_eq!(
        (r["status"].as_str(), r["detail"].as_str()),
        (Some("pass"), Some(uid.as_str()))
    );
    let r = row(&rows, "T-THEIRS", "script");
    assert_eq!(r["status"], "error");
    assert!(r["detail"].as_str().unwrap().contains("not run"), "{r}");
}

#[test]
fn the_supervising_daemon_evaluates_on_each_contracts_frequency() {
    let root = Root::new();
    let dir = contracts_dir(&root);
    write(
        &dir.join("often.yaml"),
        &HOLDS.replace("type: detective", "type: detective\nfrequency: 1s"),
        0o644,
    );
    // No frequency: only when asked.
    write(&dir.join("asked.yaml"), IMPOSSIBLE, 0o644);
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "daemon"], &[]);
    let started = Instant::now();
    while recorded(&root, "T-HOLDS").len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not evaluated on its own"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(recorded(&root, "T-IMPOSSIBLE").is_empty());
}
