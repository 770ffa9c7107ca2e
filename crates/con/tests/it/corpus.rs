//! The forensic corpus in `replay/`: logs recorded by con itself (the real
//! daemon, real agent users, scripted models), one directory per event
//! format version, each replayed from its database directory and from its
//! journal export and compared byte for byte with what it showed when it
//! was recorded. `replay/README.md` says how to record a new one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use con_event::{Event, Payload};
use con_llm_script::{Reply, ScriptedServer, Step};

use crate::CON;
use crate::runs::{concierge_tasking_sysadmin, ok, stdout};

/// The corpus, at the repository's root.
fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay")
}

/// Every recording: `replay/v<format>/<name>/`, each with `db/`,
/// `journal.export` and `expected/`.
fn recordings() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for version in std::fs::read_dir(corpus_dir()).unwrap() {
        let version = version.unwrap().path();
        let is_version = version
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('v'));
        if !version.is_dir() || !is_version {
            continue;
        }
        for recording in std::fs::read_dir(&version).unwrap() {
            let recording = recording.unwrap().path();
            if recording.join("expected").is_dir() {
                out.push(recording);
            }
        }
    }
    out.sort();
    out
}

/// `con <args>` on an empty root (no daemon, no configuration: only the
/// sources named in `args` are read).
fn con(root: &Path, args: &[&str]) -> Output {
    Command::new(CON)
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

/// A copy of `from` in `to` (sled writes to a database it opens, even for
/// inspection: the checked-in one is never opened in place).
fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The views a recording's `expected/` holds, as (file name, arguments of
/// `con replay` before the source).
fn views(recording: &Path) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for file in std::fs::read_dir(recording.join("expected")).unwrap() {
        let name = file.unwrap().file_name().into_string().unwrap();
        let args = if let Some(task) = name
            .strip_prefix("trace-")
            .and_then(|n| n.strip_suffix(".txt"))
        {
            vec!["--trace".to_owned(), task.to_owned()]
        } else if let Some(session) = name.strip_suffix(".json") {
            vec!["--json".to_owned(), session.to_owned()]
        } else if let Some(session) = name.strip_suffix(".txt") {
            vec![session.to_owned()]
        } else {
            panic!("{}: unexpected file {name}", recording.display());
        };
        out.push((name, args));
    }
    out.sort();
    out
}

/// Every recording replays, from its database and from its journal
/// export alike, exactly as it did when it was recorded, and its chain
/// verifies. With `CON_CORPUS_UPDATE=1` the expected files are written
/// from the database instead (after a deliberate change of a view: review
/// the diff).
#[test]
fn every_recording_replays_as_recorded_from_its_database_and_its_journal() {
    let update = std::env::var_os("CON_CORPUS_UPDATE").is_some();
    let recordings = recordings();
    assert!(!recordings.is_empty(), "no recording in {:?}", corpus_dir());
    for recording in recordings {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        copy_dir(&recording.join("db"), &db);
        let export = recording.join("journal.export");
        let sources: [(&str, Vec<&str>); 2] = [
            ("db", vec!["--db", db.to_str().unwrap()]),
            (
                "journal",
                vec!["--journal", "--file", export.to_str().unwrap()],
            ),
        ];
        let views = views(&recording);
        assert!(views.len() >= 3, "{}: {views:?}", recording.display());
        for (file, args) in &views {
            let path = recording.join("expected").join(file);
            for (source, source_args) in &sources {
                let mut all: Vec<&str> = vec!["replay"];
                all.extend(args.iter().map(String::as_str));
                all.extend(source_args);
                let shown = stdout(&con(tmp.path(), &all));
                if update && *source == "db" {
                    std::fs::write(&path, &shown).unwrap();
                }
                let expected = std::fs::read_to_string(&path).unwrap();
                assert!(
                    shown == expected,
                    "{}: `con {}` from the {source} differs from expected/{file}:\n{shown}",
                    recording.display(),
                    all.join(" ")
                );
            }
        }
        // The chain holds, from both, through every event a trace shows.
        let (_, trace) = views
            .iter()
            .find(|(_, args)| args[0] == "--trace")
            .unwrap_or_else(|| panic!("{}: no trace expected", recording.display()));
        for (source, source_args) in &sources {
            let mut all = vec!["replay", "--verify"];
            all.extend(trace.iter().map(String::as_str));
            all.extend(source_args);
            let shown = stdout(&con(tmp.path(), &all));
            assert!(
                shown
                    .lines()
                    .last()
                    .is_some_and(|l| l.starts_with("verified through seq ")),
                "{}: from the {source}: {shown}",
                recording.display()
            );
        }
        let out = con(
            tmp.path(),
            &["verify", "--journal", "--file", export.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}: {}",
            recording.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        let out = con(tmp.path(), &["verify", "--db", db.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {out:?}", recording.display());
    }
}

/// The bytes of a journal export, with the fields that only say how this
/// host's journald stored the entries (cursors, boot and process ids,
/// command lines, …) left out: what `con` reads is `CON_*`, the
/// attachments, and `_HOSTNAME`/`_MACHINE_ID` for the host.
fn trimmed_export(raw: &[u8]) -> Vec<u8> {
    let keep = |name: &str| {
        !name.starts_with('_')
            || matches!(
                name,
                "_HOSTNAME" | "_MACHINE_ID" | "__REALTIME_TIMESTAMP" | "__MONOTONIC_TIMESTAMP"
            )
    };
    let mut out = Vec::new();
    for entry in con_journal::read_export(raw) {
        let entry = entry.unwrap();
        for (name, value) in entry.fields.iter().filter(|(n, _)| keep(n)) {
            out.extend_from_slice(name.as_bytes());
            if value.iter().any(|&b| b < b' ' && b != b'\t') || value.contains(&0x7f) {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            } else {
                out.push(b'=');
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Records a new recording of the current event format: a delegation
/// (the concierge hands a task to the sysadmin, who runs a command) and a
/// task the concierge answers itself, three sessions, with the real
/// daemon. Writes `replay/v<format>/<CON_CORPUS_NAME or "delegation">/`
/// and refuses to replace one that exists: old recordings stay as they
/// were recorded. `make corpus` runs it.
#[test]
#[ignore = "records a new corpus entry: make corpus"]
fn record_a_corpus_entry() {
    let name = std::env::var("CON_CORPUS_NAME").unwrap_or_else(|_| "delegation".into());
    let target = corpus_dir()
        .join(format!("v{}", con_event::FORMAT_V1))
        .join(&name);
    assert!(
        !target.exists(),
        "{} exists: a recording is never replaced (CON_CORPUS_NAME=<name> records another)",
        target.display()
    );

    let concierge_model = ScriptedServer::start(vec![]);
    let sysadmin_model = ScriptedServer::start(vec![]);
    let c = concierge_tasking_sysadmin("openai-compatible", &concierge_model, &sysadmin_model);
    let job = c.agent_dir("sysadmin", "inbox").join("job-1.task");
    // Usage on every reply, so that costs are recorded and summed.
    let reply = |r: Reply, input: u64| Step::Reply(r.with_usage(input, 40));
    concierge_model.push(reply(
        Reply::tool_calls([(
            "write_file",
            serde_json::json!({"path": job.to_str().unwrap(), "content": "How full is /var?"}),
        )]),
        1200,
    ));
    concierge_model.push(reply(Reply::text("Routed to the sysadmin as job-1."), 1400));
    concierge_model.push(reply(
        Reply::text("con keeps a hash-chained log of everything."),
        1100,
    ));
    sysadmin_model.push(reply(
        Reply::tool_calls([("exec", serde_json::json!({"command": "printf '42%%\\n'"}))]),
        1300,
    ));
    sysadmin_model.push(reply(Reply::text("/var is 42% full."), 1500));
    let mut daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    ok(&c.run("sysadmin", &[]));
    c.task("concierge", "t-2", "What does con record?");
    ok(&c.run("concierge", &[]));
    let status: serde_json::Value = serde_json::from_slice(
        &Command::new(CON)
            .args(c.root.con_flags())
            .args(["status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let log_id = status["log"]["log_id"].as_str().unwrap().to_owned();
    // A clean stop: the last event is the checkpoint of the head.
    daemon.terminate();

    let events: Vec<Event> = con_store::Store::open_for_inspection(&c.root.db())
        .unwrap()
        .events_from(1)
        .map(Result::unwrap)
        .collect();
    let sessions: Vec<String> = events
        .iter()
        .filter(|e| matches!(e.payload, Payload::SessionStarted(_)))
        .map(|e| e.envelope.session.unwrap().to_hex())
        .collect();
    assert_eq!(sessions.len(), 3);

    let staging = tempfile::tempdir().unwrap();
    let out = staging.path().join(&name);
    std::fs::create_dir(&out).unwrap();
    copy_dir(&c.root.db(), &out.join("db"));
    // The journal's copy, once the mirror has sent all of it.
    let start = std::time::Instant::now();
    let export = loop {
        let raw = Command::new("journalctl")
            .args([
                "-o",
                "export",
                "--no-pager",
                &format!("CON_LOG_ID={log_id}"),
            ])
            .output()
            .unwrap();
        assert!(raw.status.success());
        let rebuilt = con_journal::rebuild_from_export(&raw.stdout[..]).unwrap();
        if rebuilt.logs.get(&log_id).map_or(0, Vec::len) == events.len()
            && rebuilt.missing_blobs(&log_id).is_empty()
        {
            break trimmed_export(&raw.stdout);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    std::fs::write(out.join("journal.export"), export).unwrap();

    // What it shows, from the database.
    let expected = out.join("expected");
    std::fs::create_dir(&expected).unwrap();
    let db = out.join("db");
    let view = |args: &[&str]| {
        let copy = staging.path().join("view-db");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&db, &copy);
        let mut all = vec!["replay"];
        all.extend(args);
        all.extend(["--db", copy.to_str().unwrap()]);
        stdout(&con(staging.path(), &all))
    };
    for s in &sessions {
        std::fs::write(expected.join(format!("{s}.json")), view(&["--json", s])).unwrap();
        std::fs::write(expected.join(format!("{s}.txt")), view(&[s])).unwrap();
    }
    for task in ["t-1", "t-2"] {
        std::fs::write(
            expected.join(format!("trace-{task}.txt")),
            view(&["--trace", task]),
        )
        .unwrap();
    }
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    copy_dir(&out, &target);
    let du = Command::new("du")
        .args(["-sh", "--apparent-size"])
        .arg(&target)
        .output()
        .unwrap();
    eprintln!(
        "recorded {}: {}",
        target.display(),
        String::from_utf8_lossy(&du.stdout).trim()
    );
}
