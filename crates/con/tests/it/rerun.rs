//! `con replay --rerun`: a recorded session's tool calls run again in a
//! scratch copy of the workspace, on a live system (the real daemon, a
//! real agent user, a scripted model server) and offline from the
//! database the daemon wrote.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use con_event::SessionId;
use con_llm_script::{ScriptedServer, Step};
use con_test_support::all_events;
use serde_json::{Value, json};

use crate::CON;
use crate::runs::{Conspiracy, agent, con, ok, sessions_of};

/// `con replay --rerun SESSION --json [extra]`: the exit code and the
/// report.
fn rerun_json(c: &Conspiracy, session: SessionId, extra: &[&str]) -> (i32, Value) {
    let out = con(
        c,
        &[&["replay", "--rerun", "--json", &session.to_hex()], extra].concat(),
    );
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 1,
        "exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    (code, report)
}

fn verdicts(report: &Value) -> Vec<String> {
    report["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["verdict"].as_str().unwrap().to_owned())
        .collect()
}

/// What [`tree`] keeps of a file: mode, owner, group, mtime (s, ns) and
/// content.
type Stat = (u32, u32, u32, i64, i64, Vec<u8>);

/// Every file and directory under `dir`.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Stat> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(
                path,
                (
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    content,
                ),
            );
        }
    }
    out
}

/// The log's last seq and hash, through the daemon.
fn head(c: &Conspiracy) -> (u64, String) {
    let events = all_events(&c.root.socket());
    let last = events.last().unwrap();
    (last.seq(), last.hash.to_hex())
}

/// One sysadmin whose session reads a note with exec, reads a workspace
/// file, writes a report, cats it, and reads /etc/hostname; run with the
/// daemon still up.
fn recorded_session() -> (Conspiracy, ScriptedServer, SessionId) {
    let model = ScriptedServer::start(vec![
        Step::tool_call(
            "exec",
            json!({"command": "cat notes.txt", "timeout_secs": 20}),
        ),
        Step::tool_call("read_file", json!({"path": "data/other.txt"})),
        Step::tool_call(
            "write_file",
            json!({"path": "report.txt", "content": "/var is 42% full\n"}),
        ),
        Step::tool_call("exec", json!({"command": "cat report.txt; ls"})),
        Step::tool_call("read_file", json!({"path": "/etc/hostname"})),
        Step::text("/var is 42% full."),
    ]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("sysadmin", "operator", "")],
    );
    let ws = c.agent_dir("sysadmin", "workspace");
    std::fs::write(ws.join("notes.txt"), "disk: 42% of /var used\n").unwrap();
    std::fs::create_dir(ws.join("data")).unwrap();
    std::fs::write(ws.join("data/other.txt"), "other\n").unwrap();
    // The agent's own, readable by no one else: the copy is the rerun
    // user's.
    for p in ["notes.txt", "data", "data/other.txt"] {
        c.user("sysadmin").chown(&ws.join(p));
    }
    std::fs::set_permissions(
        ws.join("notes.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let session = {
        let _daemon = c.daemon();
        c.task("sysadmin", "t-1", "How full is /var?");
        ok(&c.run("sysadmin", &[]));
        sessions_of(&all_events(&c.root.socket()), "sysadmin")[0]
    };
    (c, model, session)
}

#[test]
fn a_rerun_matches_then_names_the_call_a_changed_file_changes_and_changes_nothing() {
    let (c, model, session) = recorded_session();
    let _daemon = c.daemon();
    let ws = c.agent_dir("sysadmin", "workspace");
    let requests = model.requests().len();
    let log_before = head(&c);
    let tree_before = tree(&ws);

    // Nothing changed since: every call that can run again matches.
    let (code, report) = rerun_json(&c, session, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        verdicts(&report),
        ["same", "same", "same", "same", "not_reproduced"],
        "{report:#}"
    );
    let outside = &report["calls"][4];
    assert_eq!(outside["tool"], "read_file");
    assert_eq!(outside["reason_kind"], "outside_workspace");
    assert_eq!(
        outside["reason"],
        "reads /etc/hostname outside the workspace"
    );
    assert!(outside["rerun"].is_null(), "{outside}");
    // The commands ran in the copy, with the recorded timeout, and their
    // output reads as in the session (the copy's paths put back).
    assert_eq!(
        report["calls"][0]["rerun"]["output"],
        "disk: 42% of /var used\n\n[exit code 0]"
    );
    assert!(
        report["calls"][2]["rerun"]["output"]
            .as_str()
            .unwrap()
            .contains(ws.to_str().unwrap()),
        "{report:#}"
    );
    assert!(
        report["user"].as_str().unwrap().starts_with("nobody"),
        "{report:#}"
    );

    // The text view: one line per call, and the reasons at the end.
    let out = con(&c, &["replay", "--rerun", &session.to_hex()]);
    ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" same")).count(),
        4,
        "{text}"
    );
    for expected in [
        "as nobody (uid ",
        "network: none (a network namespace of its own, made by unshare --net)",
        "file system: read-only but the copy",
        "not reproduced: reads /etc/hostname outside the workspace",
        "5 tool calls: 4 same, 0 differ, 1 not reproduced",
        "1 call could not be reproduced:\n  1 × reads /etc/hostname outside the workspace",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    // Reruns changed nothing: not the log, not the workspace (whose
    // report.txt each rerun wrote again, in its copy), and no model call.
    assert_eq!(head(&c), log_before);
    assert_eq!(tree(&ws), tree_before);
    assert_eq!(model.requests().len(), requests);

    // The note the session read changed since: exactly that call differs.
    std::fs::write(ws.join("notes.txt"), "disk: 97% of /var used\n").unwrap();
    let tree_changed = tree(&ws);
    let (code, report) = rerun_json(&c, session, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        verdicts(&report),
        ["differs", "same", "same", "same", "not_reproduced"],
        "{report:#}"
    );
    let differs = &report["calls"][0];
    assert_eq!(differs["tool"], "exec");
    assert_eq!(
        differs["difference"],
        json!({
            "exit_codes": null,
            "line": {"number": 1, "recorded": "disk: 42% of /var used", "now": "disk: 97% of /var used"}
        })
    );
    let out = con(&c, &["replay", "--rerun", &session.to_hex()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "differs\n         output line 1:\n           recorded | disk: 42% of /var used\n           now      | disk: 97% of /var used\n",
        "5 tool calls: 3 same, 1 differs, 1 not reproduced",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert_eq!(head(&c), log_before);
    assert_eq!(tree(&ws), tree_changed);
    assert_eq!(model.requests().len(), requests);
}

#[test]
fn a_rerun_needs_no_daemon_and_only_root_may_rerun() {
    let (c, model, session) = recorded_session();
    let requests = model.requests().len();
    {
        let _daemon = c.daemon();
        // The agent may replay its session but not rerun it.
        let refused = c
            .user("sysadmin")
            .command(CON)
            .args(c.root.con_flags())
            .args(["replay", "--rerun", &session.to_hex()])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir("/")
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(1));
        assert!(refused.stdout.is_empty());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            err.contains("--rerun") && err.contains("root only"),
            "{err}"
        );
        // Nor through sudo on an agent's behalf (the global flags are
        // refused through sudo, so this is the default layout, checked
        // before anything is read: a uid with no passwd entry is no one
        // sudo could vouch for).
        let sudo = Command::new(CON)
            .args(["replay", "--rerun", &session.to_hex()])
            .env_remove("CON_ROOT")
            .env_remove("CON_CONFIG")
            .env_remove("CON_USER_PREFIX")
            .env_remove("CON_GROUP_PREFIX")
            .env("SUDO_UID", "3999999999")
            .output()
            .unwrap();
        assert!(!sudo.status.success());
        let err = String::from_utf8_lossy(&sudo.stderr);
        assert!(
            err.contains("--rerun through sudo for uid 3999999999 (no passwd entry): refused"),
            "{err}"
        );
    }
    // The daemon stopped: the database it wrote is enough.
    let db = c.root.db();
    let (code, report) = rerun_json(&c, session, &["--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        verdicts(&report),
        ["same", "same", "same", "same", "not_reproduced"]
    );
    assert_eq!(model.requests().len(), requests);
}

#[test]
fn rerun_commands_run_as_nobody_without_network_on_a_read_only_host() {
    let probe = std::env::temp_dir().join(format!("con-rerun-probe-{}", std::process::id()));
    let model = ScriptedServer::start(vec![
        Step::tool_call(
            "exec",
            json!({"command": format!(
                "id -un; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; touch {} && echo touched",
                probe.display()
            )}),
        ),
        Step::tool_call("exec", json!({"command": "ln -s /etc/hostname link"})),
        Step::tool_call("read_file", json!({"path": "link"})),
        Step::text("done"),
    ]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("sysadmin", "operator", "")],
    );
    let _daemon = c.daemon();
    c.task("sysadmin", "t-1", "Look around.");
    ok(&c.run("sysadmin", &[]));
    let session = sessions_of(&all_events(&c.root.socket()), "sysadmin")[0];
    assert!(probe.exists());
    std::fs::remove_file(&probe).unwrap();
    let ws = c.agent_dir("sysadmin", "workspace");
    std::fs::remove_file(ws.join("link")).unwrap();

    let (code, report) = rerun_json(&c, session, &[]);
    assert_eq!(code, 1, "{report:#}");
    let out = report["calls"][0]["rerun"]["output"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "nobody", "{out}");
    // Only the loopback interface of a namespace of its own.
    assert_eq!(lines[1], "lo", "{out}");
    assert!(
        out.contains("Read-only file system") && !out.contains("touched"),
        "{out}"
    );
    assert!(!probe.exists(), "the rerun wrote {}", probe.display());
    // The link made in the copy leads out of it: not followed.
    assert_eq!(
        verdicts(&report),
        ["differs", "same", "not_reproduced"],
        "{report:#}"
    );
    assert!(
        report["calls"][2]["reason"]
            .as_str()
            .unwrap()
            .starts_with("reads /etc/hostname outside the workspace (through a symlink"),
        "{report:#}"
    );
    assert!(!ws.join("link").exists());
}

#[test]
fn a_signal_stops_the_rerun_kills_its_command_and_removes_the_copy() {
    let model = ScriptedServer::start(vec![
        Step::tool_call("exec", json!({"command": "sleep \"$(cat delay)\""})),
        Step::text("done"),
    ]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("sysadmin", "operator", "")],
    );
    let ws = c.agent_dir("sysadmin", "workspace");
    std::fs::write(ws.join("delay"), "0").unwrap();
    let _daemon = c.daemon();
    c.task("sysadmin", "t-1", "Wait.");
    ok(&c.run("sysadmin", &[]));
    let session = sessions_of(&all_events(&c.root.socket()), "sysadmin")[0];
    // Now the command takes long enough to be interrupted.
    std::fs::write(ws.join("delay"), "37").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut rerun = Command::new(CON)
        .args(c.root.con_flags())
        .args(["replay", "--rerun", "--json", &session.to_hex()])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sleeping = || {
        Command::new("pgrep")
            .args(["-u", "nobody", "-f", "^sleep 37$"])
            .output()
            .unwrap()
            .status
            .success()
    };
    crate::runs::wait_for(
        "the rerun's sleep",
        std::time::Duration::from_secs(20),
        sleeping,
    );
    let t0 = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rerun.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = rerun.wait().unwrap();
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    assert!(!sleeping(), "the command outlived the rerun");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut rerun.stdout.take().unwrap(), &mut out).unwrap();
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verdicts(&report), ["not_reproduced"], "{report:#}");
    assert_eq!(
        report["calls"][0]["reason"],
        "the rerun failed: interrupted by a signal while it ran"
    );
}
