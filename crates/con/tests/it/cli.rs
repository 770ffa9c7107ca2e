//! Black-box tests of the real `con` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use con_event::NewEvent;
use con_event::payloads::TaskRouted;
use con_store::{GroupCommitWriter, Store, WriterConfig};
use con_test_support::workspace;

use crate::CON;

/// `con` with a clean environment (no CON_* leaking in from the caller),
/// run from the workspace root so relative paths print stably.
fn con(args: &[&str]) -> Command {
    let mut cmd = Command::new(CON);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(workspace())
        .args(args);
    cmd
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_only_working_commands() {
    let out = con(&["--help"]).output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn config_check_prints_the_resolved_default_profile() {
    let out = con(&["config", "check", "configs/default/con.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    insta::assert_snapshot!(stdout(&out));
}

#[test]
fn config_check_json_of_the_minimal_profile() {
    let out = con(&["config", "check", "--json", "configs/minimal/con.toml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    insta::assert_json_snapshot!(json);
}

#[test]
fn environment_overrides_show_in_the_resolved_agents() {
    let out = con(&["config", "check", "--json", "configs/minimal/con.toml"])
        .env("CON_AGENT_CONCIERGE_MODEL", "local/llama")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["agents"][0]["model"], "local/llama");
}

#[test]
fn config_check_finds_the_config_under_the_root_prefix() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/con")).unwrap();
    std::fs::copy(
        workspace().join("configs/minimal/con.toml"),
        root.path().join("etc/con/con.toml"),
    )
    .unwrap();
    let out = con(&["config", "check"])
        .env("CON_ROOT", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("etc/con/con.toml: ok"));
}

#[test]
fn a_bad_config_is_one_line_naming_file_agent_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("con.toml");
    std::fs::write(
        &file,
        "[[agents]]\nname = \"ok\"\ntier = \"worker\"\n\n[[agents]]\nname = \"../etc\"\ntier = \"worker\"\n",
    )
    .unwrap();
    let out = con(&["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("con: error: "), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        err.contains("agents[1]") && err.contains("../etc") && err.contains("name"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = con(&["config", "check", "/nonexistent/con.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/con.toml"), "{err}");
}

fn make_log(dir: &Path, n: u64) -> PathBuf {
    let db = dir.join("events");
    let store = Store::open(&db).unwrap();
    let writer = GroupCommitWriter::spawn(store, WriterConfig::default(), None).unwrap();
    let app = writer.appender();
    for i in 0..n {
        app.append(NewEvent::system(TaskRouted {
            from: "outer".into(),
            to: "concierge".into(),
            path: format!("/srv/con/inbox/{i}.task"),
        }))
        .unwrap();
    }
    writer.shutdown().unwrap();
    db
}

#[test]
fn verify_accepts_an_intact_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_log(dir.path(), 50);
    let out = con(&["verify", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("chain ok: 50 events, head seq 50"),
        "{}",
        stdout(&out)
    );
}

/// The log for inspection once the writer that made it has let go: sled's
/// I/O threads may hold the database's lock for a moment after the last
/// handle is dropped.
fn open_when_released(db: &Path) -> Store {
    let start = std::time::Instant::now();
    loop {
        match Store::open_for_inspection(db) {
            Err(con_store::StoreError::Locked(_))
                if start.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

fn corrupt(db: &Path, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    // Inspection mode: derives nothing, so the corruption is the first thing
    // any later open meets.
    let store = open_when_released(db);
    let key = seq.to_be_bytes();
    let mut value = store.raw_log().get(key).unwrap().unwrap().to_vec();
    edit(&mut value);
    store.raw_log().insert(key, value).unwrap();
    store.flush().unwrap();
}

#[test]
fn verify_names_the_seq_of_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_log(dir.path(), 50);
    corrupt(&db, 17, |v| {
        let mid = v.len() / 2;
        v[mid] ^= 0x40;
    });
    let out = con(&["verify", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("chain broken at seq 17"),
        "{}",
        stdout(&out)
    );

    let out = con(&["verify", "--json", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["first_bad_seq"], 17);
    assert_eq!(json["events"], 16);
}

#[test]
fn verify_names_a_truncated_record_that_was_never_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_log(dir.path(), 50);
    corrupt(&db, 17, |v| v.truncate(20));
    let out = con(&["verify", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("chain broken at seq 17: undecodable record"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn verify_of_a_log_in_use_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_log(dir.path(), 3);
    let _held = open_when_released(&db);
    let out = con(&["verify", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("in use by another process"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn path_overrides_are_refused_under_sudo() {
    let out = con(&["config", "check", "--config", "/tmp/evil.toml"])
        .env("SUDO_UID", "1001")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refused when run through sudo"),
        "{}",
        stderr(&out)
    );
    let out = con(&["verify"])
        .env("SUDO_UID", "1001")
        .env("CON_ROOT", "/tmp/x")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("refused when run through sudo"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_non_utf8_environment_does_not_crash_config_check() {
    use std::os::unix::ffi::OsStrExt;
    let out = con(&["config", "check", "configs/minimal/con.toml"])
        .env("SOME_BINARY", std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = con(&["config", "check", "configs/minimal/con.toml"])
        .env("CON_BASE_MODEL", std::ffi::OsStr::from_bytes(b"\xff"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "con: error: env CON_BASE_MODEL: value is not valid UTF-8\n"
    );
}

#[test]
fn verify_defaults_to_the_log_under_the_root_prefix() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("var/lib/con")).unwrap();
    make_log(&root.path().join("var/lib/con"), 4);
    let out = con(&["verify", "--root", root.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("chain ok: 4 events"));
}

#[test]
fn completions_and_manpages_are_generated_from_the_cli() {
    let out = con(&["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = stdout(&out);
    assert!(
        script.contains("_con()") && script.contains("verify"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = con(&["manpages", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "con.1",
        "con-verify.1",
        "con-config-check.1",
        "con-daemon.1",
        "con-logs.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
}

/// A daemon that takes the connection and never answers: `con status` and
/// `con logs` give up after their timeout with one line saying so.
#[test]
fn a_daemon_that_never_answers_is_reported_within_the_timeout() {
    let root = tempfile::tempdir().unwrap();
    let socket = root.path().join("run/con/con.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    for args in [&["status"][..], &["logs"][..]] {
        let started = std::time::Instant::now();
        let out = con(&[&["--root", root.path().to_str().unwrap()][..], args].concat())
            .output()
            .unwrap();
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "the con daemon at {} did not answer within 5 s",
                socket.display()
            )),
            "{args:?}: {err}"
        );
        assert!(
            took < std::time::Duration::from_secs(15),
            "{args:?} took {took:?}"
        );
    }
    assert!(held.lock().unwrap().len() >= 2, "both connected");
}
