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

/// `con --root R --user-prefix P <args>` as `user` through `su`, as a
/// person (or an agent's shell) on the host would run it.
fn su_con(c: &crate::runs::Conspiracy, user: &str, args: &str) -> Output {
    let flags: Vec<String> = c
        .root
        .con_flags()
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    Command::new("su")
        .args(["-s", "/bin/sh", user, "-c"])
        .arg(format!("cd / && {CON} {} {args}", flags.join(" ")))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .unwrap()
}

/// A directory any user can read, holding `name` with `text`.
fn readable_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join(name);
    write(&path, text, 0o644);
    (dir, path)
}

const WHOAMI: &str = "id: T-ADDED\ndescription: who runs me\ntype: detective\nchecks:\n  - name: whoami\n    command: {run: 'id -u', test: 'true'}\n";

fn added_events(root: &Root) -> Vec<(con_event::Event, con_event::payloads::ContractAdded)> {
    all_events(&root.socket())
        .into_iter()
        .filter_map(|e| match e.payload.clone() {
            Payload::ContractAdded(a) => Some((e, a)),
            _ => None,
        })
        .collect()
}

/// The `RESULT=` of T-ADDED's `whoami` check, run now.
fn runs_as(root: &Root) -> String {
    let (_, rows) = check(root, &["T-ADDED"]);
    let r = row(&rows, "T-ADDED", "whoami");
    assert_eq!(r["status"], "pass", "{r}");
    r["detail"]
        .as_str()
        .unwrap()
        .strip_prefix("RESULT=")
        .unwrap()
        .to_owned()
}

#[test]
fn the_sysadmin_adds_a_contract_that_runs_as_it_whatever_the_file_is_called() {
    use crate::runs::{Conspiracy, agent};
    use std::os::unix::fs::MetadataExt;

    let c = Conspiracy::new(
        "openai-compatible",
        "http://127.0.0.1:9",
        &[agent("sysadmin", "operator", "roles = [\"sysadmin\"]")],
    );
    let sysadmin = c.user("sysadmin");
    let _daemon = c.daemon();
    let (_tmp, file) = readable_file("f.yaml", WHOAMI);

    let out = su_con(
        &c,
        &sysadmin.name,
        &format!("contracts add {}", file.display()),
    );
    assert!(out.status.success(), "{out:?}");
    let stored = c.root.path().join("srv/con/contracts/T-ADDED.yaml");
    let meta = std::fs::metadata(&stored).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), WHOAMI);
    let added = added_events(&c.root);
    assert_eq!(added.len(), 1);
    let (event, payload) = &added[0];
    assert_eq!(payload.author_uid, sysadmin.uid);
    assert_eq!(payload.author_agent.as_deref(), Some("sysadmin"));
    assert_eq!(event.envelope.actor.uid, sysadmin.uid);
    assert_eq!(payload.content, con_event::BlobRef::of(WHOAMI.as_bytes()));
    assert_eq!(payload.path, stored.display().to_string());
    // The content is in the log.
    let blob = con_protocol::Client::connect(&c.root.socket())
        .unwrap()
        .blob(payload.content.digest)
        .unwrap();
    assert_eq!(blob, WHOAMI.as_bytes());

    // Root's file, the agent's check: it runs as the agent.
    let uid = sysadmin.uid.to_string();
    assert_eq!(runs_as(&c.root), uid);
    // Across a restart (the author comes from the log) and under another
    // name (whose it is goes with the content).
    drop(_daemon);
    let _daemon = c.daemon();
    std::fs::rename(&stored, stored.with_file_name("renamed.yaml")).unwrap();
    assert_eq!(runs_as(&c.root), uid);
    std::fs::rename(stored.with_file_name("renamed.yaml"), &stored).unwrap();

    // The agent may replace its own contract, not root's.
    let again = WHOAMI.replace("who runs me", "who runs me now");
    let (_tmp2, mine) = readable_file("mine.yaml", &again);
    let out = su_con(
        &c,
        &sysadmin.name,
        &format!("contracts add {}", mine.display()),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("replaced contract T-ADDED"));
    let (_tmp3, roots) = readable_file("root.yaml", &WHOAMI.replace("T-ADDED", "T-ROOT"));
    ok(&con(
        &c.root,
        &["contracts", "add", roots.to_str().unwrap()],
    ));
    let (_tmp4, theirs) = readable_file(
        "theirs.yaml",
        &WHOAMI.replace("T-ADDED", "T-ROOT").replace("who", "whom"),
    );
    let out = su_con(
        &c,
        &sysadmin.name,
        &format!("contracts add {}", theirs.display()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only root replaces another author's contract"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Root replaces the agent's: from then on it runs as root.
    ok(&con(&c.root, &["contracts", "add", file.to_str().unwrap()]));
    assert_eq!(runs_as(&c.root), "0");
    let authors: Vec<u32> = added_events(&c.root)
        .iter()
        .map(|(_, a)| a.author_uid)
        .collect();
    assert_eq!(authors, [sysadmin.uid, sysadmin.uid, 0, 0]);
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_worker_may_not_add_contracts_and_a_malformed_file_is_refused_whole() {
    use crate::runs::{Conspiracy, agent};

    let c = Conspiracy::new(
        "openai-compatible",
        "http://127.0.0.1:9",
        &[
            agent("scribe", "worker", "roles = [\"sysadmin\"]"),
            agent("concierge", "operator", ""),
        ],
    );
    let _daemon = c.daemon();
    let dir = c.root.path().join("srv/con/contracts");
    let (_tmp, file) = readable_file("f.yaml", WHOAMI);
    // A worker, even one given the role; an operator-tier agent without it.
    for agent in ["scribe", "concierge"] {
        let out = su_con(
            &c,
            &c.user(agent).name,
            &format!("contracts add {}", file.display()),
        );
        assert!(!out.status.success(), "{agent}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("only operators and agents of the sysadmin role"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().count() == 0);

    // Malformed: one line naming the file and the field; nothing stored,
    // nothing recorded.
    for (text, field) in [
        (
            "id: T-BAD\ntype: detective\nchecks:\n  - name: x\n    command: {run: 'echo 1', tset: 'true'}\n",
            "checks[0].command.tset: unknown field",
        ),
        ("id: T-BAD\ntype: detective\nchecks: [\n", "bad.yaml: "),
        (
            "id: -rf\ntype: detective\nchecks:\n  - name: x\n    command: {run: 'true', test: 'true'}\n",
            "id: \"-rf\" is not a safe file name",
        ),
        (
            "id: CON-LOG-001\ntype: detective\nchecks:\n  - name: x\n    command: {run: 'true', test: 'true'}\n",
            "id: con's built-in check of itself has this id",
        ),
    ] {
        let (_tmp, bad) = readable_file("bad.yaml", text);
        let out = con(&c.root, &["contracts", "add", bad.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&bad.display().to_string()) && err.contains(field),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().count() == 0);
    assert!(added_events(&c.root).is_empty());

    // A contract whose id another file already defines is refused too.
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir.join("by-hand.yaml"), WHOAMI, 0o644);
    let out = con(&c.root, &["contracts", "add", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already defined in"),
        "{out:?}"
    );
    assert!(!dir.join("T-ADDED.yaml").exists());
}
