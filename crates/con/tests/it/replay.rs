//! `con replay` and `con verify` on a live system: the real daemon, real
//! agent users, scripted model servers, and the recorded delegation from
//! the concierge to the sysadmin read back through the daemon and from the
//! database directory.

use std::process::{Command, Output};

use con_event::{Payload, SessionId};
use con_llm_script::{ScriptedServer, Step};
use con_test_support::all_events;

use crate::CON;
use crate::runs::{Conspiracy, con, concierge_tasking_sysadmin, ok, stdout};

/// `con <args>` as an agent's user.
fn con_as(c: &Conspiracy, agent: &str, args: &[&str]) -> Output {
    c.user(agent)
        .command(CON)
        .args(c.root.con_flags())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .output()
        .unwrap()
}

/// `con replay --json --db <db> <session>` on the conspiracy's root: the
/// session's JSON view read from a database directly (no daemon).
fn replay_json_from_db(c: &Conspiracy, db: &std::path::Path, session: SessionId) -> String {
    stdout(&con(
        c,
        &[
            "replay",
            "--json",
            "--db",
            db.to_str().unwrap(),
            &session.to_hex(),
        ],
    ))
}

/// The concierge tasks the sysadmin with write_file; the sysadmin answers
/// after an exec. Both runs done, the daemon still running.
fn delegation() -> (Conspiracy, ScriptedServer, ScriptedServer) {
    let concierge_model = ScriptedServer::start(vec![]);
    let sysadmin_model = ScriptedServer::start(vec![]);
    let c = concierge_tasking_sysadmin("openai-compatible", &concierge_model, &sysadmin_model);
    let job = c.agent_dir("sysadmin", "inbox").join("job-1.task");
    concierge_model.push(Step::tool_call(
        "write_file",
        serde_json::json!({"path": job.to_str().unwrap(), "content": "How full is /var?"}),
    ));
    concierge_model.push(Step::text("Routed to the sysadmin as job-1."));
    sysadmin_model.push(Step::tool_call(
        "exec",
        serde_json::json!({"command": "printf '42%%\\n\\033[2Jforged line'"}),
    ));
    sysadmin_model.push(Step::text("/var is 42% full."));
    (c, concierge_model, sysadmin_model)
}

fn session_of(c: &Conspiracy, agent: &str) -> SessionId {
    all_events(&c.root.socket())
        .iter()
        .find_map(|e| match &e.payload {
            Payload::SessionStarted(p) if p.agent == agent => e.envelope.session,
            _ => None,
        })
        .unwrap()
}

/// `s` with every `marker` followed by a non-empty run of `allowed`
/// characters written as `with`.
fn replace_after(s: &str, marker: &str, allowed: fn(char) -> bool, with: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find(marker) {
        let after = &rest[at + marker.len()..];
        let run = after.find(|ch: char| !allowed(ch)).unwrap_or(after.len());
        out.push_str(&rest[..at]);
        if run == 0 {
            out.push_str(marker);
        } else {
            out.push_str(with);
        }
        rest = &after[run..];
    }
    out.push_str(rest);
    out
}

/// Runs of exactly 32 lowercase hex digits (session ids) as `<session>`.
fn redact_ids(s: &str) -> String {
    let hex = |ch: char| ch.is_ascii_digit() || ('a'..='f').contains(&ch);
    let mut out = String::new();
    let mut run = String::new();
    let mut alnum_before = false;
    for ch in s.chars().chain(std::iter::once(' ')) {
        if hex(ch) && !(run.is_empty() && alnum_before) {
            run.push(ch);
            continue;
        }
        let word = !ch.is_ascii_alphanumeric();
        out.push_str(if run.len() == 32 && word {
            "<session>"
        } else {
            &run
        });
        run.clear();
        alnum_before = ch.is_ascii_alphanumeric();
        out.push(ch);
    }
    out.pop();
    out
}

/// Ids, times, uids, seqs, costs and the temp root out of a view, so that
/// a snapshot holds only what is the same every run.
fn redact(text: &str, c: &Conspiracy) -> String {
    let digit = |ch: char| ch.is_ascii_digit();
    let time = |ch: char| ch.is_ascii_digit() || "-:T.Z".contains(ch);
    let hex = |ch: char| ch.is_ascii_hexdigit();
    let mut s = text.replace(c.root.path().to_str().unwrap(), "<root>");
    s = s.replace(c.root.user_prefix(), "<prefix>");
    s = redact_ids(&s);
    s = replace_after(&s, "sha256:", hex, "sha256:<digest>");
    s = replace_after(&s, "started ", time, "started <time>");
    s = replace_after(&s, "uid ", digit, "uid <uid>");
    s = replace_after(&s, "#", digit, "#<seq>");
    replace_after(&s, "$", |ch| ch.is_ascii_digit() || ch == '.', "$<cost>")
}

#[test]
fn replay_reads_the_delegation_back_as_sessions_a_tree_and_identical_json() {
    let (c, _cm, _sm) = delegation();
    let mut daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    ok(&c.run("sysadmin", &[]));
    let concierge = session_of(&c, "concierge");
    let sysadmin = session_of(&c, "sysadmin");

    // The story of the task, one tree across both agents.
    let tree = stdout(&con(&c, &["replay", "--trace", "t-1"]));
    insta::assert_snapshot!("trace_of_a_delegation", redact(&tree, &c));

    // One session's timeline, by session id and by task id alike.
    let text = stdout(&con(&c, &["replay", &sysadmin.to_hex()]));
    assert_eq!(text, stdout(&con(&c, &["replay", "job-1"])));
    for expected in [
        "inbox.arrived      in sysadmin, owner uid",
        "| How full is /var?",
        "session.started",
        "llm.request",
        "asks exec",
        "tool.call          exec",
        "tool.result        exec exit 0",
        "session.ended      ok after 2 iterations",
        "| /var is 42% full.",
        "2 model calls",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    // The output of the exec cannot draw on the terminal or forge a line.
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("forged")), "{text}");
    // The prompt only with --full.
    let full = stdout(&con(&c, &["replay", "--full", &sysadmin.to_hex()]));
    assert!(full.len() > text.len());
    assert!(
        full.contains("untrusted") || full.contains("UNVERIFIED"),
        "{full}"
    );

    // The list of an agent's sessions.
    let list = stdout(&con(
        &c,
        &["replay", "--agent", "concierge", "--since", "1h"],
    ));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains(&concierge.to_hex()) && list.contains("t-1"),
        "{list}"
    );
    assert!(list.contains(" ok "), "{list}");
    let none = stdout(&con(
        &c,
        &["replay", "--agent", "concierge", "--until", "1h"],
    ));
    assert_eq!(none.lines().count(), 1, "{none}");

    // An agent replays its own sessions, and nothing of another's.
    let own = con_as(&c, "sysadmin", &["replay", &sysadmin.to_hex()]);
    assert!(stdout(&own).contains("session.ended"));
    let theirs = con_as(&c, "sysadmin", &["replay", &concierge.to_hex()]);
    assert!(!theirs.status.success());
    let err = String::from_utf8_lossy(&theirs.stderr);
    assert!(
        err.contains("no session or task") && err.contains("among the events you may read"),
        "{err}"
    );
    assert!(theirs.stdout.is_empty());
    let listing = con_as(&c, "sysadmin", &["replay", "--agent", "concierge"]);
    assert!(!listing.status.success());
    assert!(
        String::from_utf8_lossy(&listing.stderr).contains("may not read the events of agent"),
        "{listing:?}"
    );

    // The JSON: one event view per line, with its contents.
    let live: Vec<String> = [concierge, sysadmin]
        .iter()
        .map(|s| stdout(&con(&c, &["replay", "--json", &s.to_hex()])))
        .collect();
    let first: serde_json::Value = serde_json::from_str(live[1].lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "inbox.arrived");
    assert_eq!(first["contents"][0]["utf8"], "How full is /var?");
    let kinds: Vec<String> = live[1]
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(kinds.len(), 11, "{kinds:?}");

    // The same, offline, from the database the daemon wrote.
    daemon.terminate();
    let db = c.root.db();
    for (s, live) in [concierge, sysadmin].iter().zip(&live) {
        let offline = replay_json_from_db(&c, &db, *s);
        assert_eq!(&offline, live);
    }
    let offline_tree = stdout(&con(
        &c,
        &["replay", "--trace", "t-1", "--db", db.to_str().unwrap()],
    ));
    assert_eq!(offline_tree, tree);
}

#[test]
fn verify_walks_the_chain_of_a_running_daemon() {
    let (c, _cm, _sm) = delegation();
    let _daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    let out = stdout(&con(&c, &["verify"]));
    assert!(out.contains("chain ok"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&con(&c, &["verify", "--json"]))).unwrap();
    assert_eq!(json["ok"], true);
    assert!(json["events"].as_u64().unwrap() >= 10, "{json}");
    // Operators only.
    let refused = con_as(&c, "concierge", &["verify"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only operators"),
        "{refused:?}"
    );
}

/// `con replay --json` of `session` through `args`, once the journal shows
/// what `expected` shows (the mirror trails the log by a moment).
fn journal_json(c: &Conspiracy, session: SessionId, args: &[&str], expected: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = con(
            c,
            &[
                &["replay", "--json", "--journal"],
                args,
                &[&session.to_hex()],
            ]
            .concat(),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if (out.status.success() && text == expected)
            || start.elapsed() > std::time::Duration::from_secs(15)
        {
            return stdout(&out);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The directory of this host's journal files.
fn host_journal_dir() -> std::path::PathBuf {
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap();
    ["/var/log/journal", "/run/log/journal"]
        .iter()
        .map(|d| std::path::Path::new(d).join(machine.trim()))
        .find(|d| d.is_dir())
        .expect("a journal directory for this machine")
}

#[test]
fn replay_from_the_journal_matches_the_daemon_and_a_database_copy() {
    let (c, _cm, _sm) = delegation();
    let mut daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    ok(&c.run("sysadmin", &[]));
    let sessions = [session_of(&c, "concierge"), session_of(&c, "sysadmin")];
    let live: Vec<String> = sessions
        .iter()
        .map(|s| stdout(&con(&c, &["replay", "--json", &s.to_hex()])))
        .collect();
    assert!(live.iter().all(|l| l.lines().count() >= 5), "{live:?}");
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&con(&c, &["status", "--json"]))).unwrap();
    let log_id = status["log"]["log_id"].as_str().unwrap().to_owned();
    assert_eq!(log_id.len(), 32, "{status}");

    // This host's journal, the running daemon's log by default.
    for (s, live) in sessions.iter().zip(&live) {
        assert_eq!(&journal_json(&c, *s, &[], live), live);
    }
    let tree = stdout(&con(&c, &["replay", "--trace", "t-1"]));
    let journal_tree = stdout(&con(
        &c,
        &["replay", "--journal", "--log-id", &log_id, "--trace", "t-1"],
    ));
    assert_eq!(journal_tree, tree);
    let list = stdout(&con(&c, &["replay", "--agent", "sysadmin"]));
    let journal_list = stdout(&con(&c, &["replay", "--journal", "--agent", "sysadmin"]));
    assert_eq!(journal_list, list);

    // With the daemon stopped: the database, and the journal again (the
    // log now found by the session's entries).
    daemon.terminate();
    let db = c.root.db();
    for (s, live) in sessions.iter().zip(&live) {
        let offline = replay_json_from_db(&c, &db, *s);
        assert_eq!(&offline, live);
        assert_eq!(&journal_json(&c, *s, &[], live), live);
    }

    // A directory of journal files, as a copy or a central server has it,
    // holding other logs too (every test run on this host).
    let dir = host_journal_dir();
    for (s, live) in sessions.iter().zip(&live) {
        let args = ["--directory", dir.to_str().unwrap()];
        assert_eq!(&journal_json(&c, *s, &args, live), live);
    }

    // An export stream of this log saved to a file.
    let export = c.root.path().join("con.export");
    let out = Command::new("journalctl")
        .args([
            "-o",
            "export",
            "--no-pager",
            &format!("CON_LOG_ID={log_id}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&export, &out.stdout).unwrap();
    for (s, live) in sessions.iter().zip(&live) {
        let args = ["--file", export.to_str().unwrap()];
        assert_eq!(&journal_json(&c, *s, &args, live), live);
    }
    let export_tree = stdout(&con(
        &c,
        &[
            "replay",
            "--journal",
            "--file",
            export.to_str().unwrap(),
            "--trace",
            "t-1",
        ],
    ));
    assert_eq!(export_tree, tree);

    // Not in the journal at all: said so, nothing printed.
    let missing = con(
        &c,
        &["replay", "--journal", "--log-id", &log_id, &"0".repeat(32)],
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("in the journal"),
        "{missing:?}"
    );
}

/// An edit of a database copy.
type Tamper = Box<dyn FnOnce(&con_store::Store)>;

/// A copy of the database `db` with `tamper` applied to it.
fn tampered_copy(
    db: &std::path::Path,
    name: &str,
    tamper: impl FnOnce(&con_store::Store),
) -> std::path::PathBuf {
    let copy = db.with_file_name(format!("events-{name}"));
    let out = Command::new("cp")
        .args(["-a", db.to_str().unwrap(), copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let store = con_store::Store::open_for_inspection(&copy).unwrap();
    tamper(&store);
    store.flush().unwrap();
    copy
}

/// `con verify --json <args>`: the exit code and the findings as (kind, seq).
fn verify_json(
    c: &Conspiracy,
    args: &[&str],
) -> (Option<i32>, serde_json::Value, Vec<(String, u64)>) {
    let out = con(c, &[&["verify", "--json"], args].concat());
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let findings = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    (out.status.code(), json, findings)
}

/// Rewrites every record from `from` on, the way someone who knows the
/// format would: a changed record, its hash and every later link
/// recomputed, so the log's own chain still verifies.
fn rewrite_from(store: &con_store::Store, from: u64) {
    let log = store.raw_log();
    let mut prev = match from {
        1 => con_event::Digest::default(),
        _ => {
            let v = log.get((from - 1).to_be_bytes()).unwrap().unwrap();
            con_event::decode_stored(&v).unwrap().hash
        }
    };
    let keys: Vec<u64> = log
        .iter()
        .map(|i| u64::from_be_bytes(i.unwrap().0.as_ref().try_into().unwrap()))
        .filter(|k| *k >= from)
        .collect();
    for key in keys {
        let v = log.get(key.to_be_bytes()).unwrap().unwrap();
        let stored = con_event::decode_stored(&v).unwrap();
        let mut env = con_event::Envelope::decode_record(stored.record).unwrap();
        env.ts_unix_nanos += 1;
        env.prev_hash = prev;
        let record = env.encode_record().unwrap();
        prev = con_event::chain_hash(&env.prev_hash, &record);
        log.insert(key.to_be_bytes(), con_event::encode_stored(&record, &prev))
            .unwrap();
    }
}

#[test]
fn verify_against_the_journal_names_each_tamper_and_its_seq() {
    let (c, _cm, _sm) = delegation();
    let mut daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    ok(&c.run("sysadmin", &[]));

    // Live: the daemon's log against this host's journal.
    let (code, json, findings) = verify_json(&c, &["--journal"]);
    assert_eq!((code, &findings[..]), (Some(0), &[][..]), "{json}");
    assert_eq!(json["by_daemon"], true);

    // Stopping cleanly writes a checkpoint of the head, mirrored too.
    daemon.terminate();
    let db = c.root.db();
    let events: Vec<con_event::Event> = {
        let store = con_store::Store::open_for_inspection(&db).unwrap();
        store.events_from(1).map(Result::unwrap).collect()
    };
    let head = events.len() as u64;
    match &events.last().unwrap().payload {
        Payload::ChainCheckpoint(cp) => {
            assert_eq!(cp.through_seq, head - 1);
            assert_eq!(cp.head, events[events.len() - 2].hash);
        }
        other => panic!("the last event is {other:?}"),
    }
    let db_arg = db.to_str().unwrap().to_owned();
    let start = std::time::Instant::now();
    let (code, json, findings) = loop {
        let v = verify_json(&c, &["--journal", "--db", &db_arg]);
        if v.0 == Some(0) || start.elapsed() > std::time::Duration::from_secs(15) {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!((code, &findings[..]), (Some(0), &[][..]), "{json}");
    assert_eq!(json["matching"], head);
    assert!(json["checkpoints"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["checkpoints"], json["checkpoints_matching"]);
    let log_id = json["log_id"].as_str().unwrap().to_owned();

    let blob_seq = events
        .iter()
        .find(|e| !e.payload.blob_refs().is_empty())
        .unwrap()
        .seq();
    let blob = events[blob_seq as usize - 1].payload.blob_refs()[0].digest;
    let cases: Vec<(&str, Tamper, &str, u64)> = vec![
        (
            "modified",
            Box::new(|s| {
                let key = 5u64.to_be_bytes();
                let mut v = s.raw_log().get(key).unwrap().unwrap().to_vec();
                let mid = v.len() / 2;
                v[mid] ^= 0x40;
                s.raw_log().insert(key, v).unwrap();
            }),
            "modified_event",
            5,
        ),
        (
            "deleted",
            Box::new(|s| {
                s.raw_log().remove(6u64.to_be_bytes()).unwrap();
            }),
            "deleted_event",
            6,
        ),
        (
            "reordered",
            Box::new(|s| {
                let log = s.raw_log();
                let a = log.get(7u64.to_be_bytes()).unwrap().unwrap();
                let b = log.get(8u64.to_be_bytes()).unwrap().unwrap();
                log.insert(7u64.to_be_bytes(), b).unwrap();
                log.insert(8u64.to_be_bytes(), a).unwrap();
            }),
            "reordered_events",
            7,
        ),
        (
            "truncated",
            Box::new(move |s| {
                for seq in head - 3..=head {
                    s.raw_log().remove(seq.to_be_bytes()).unwrap();
                }
            }),
            "truncated_tail",
            head - 3,
        ),
        (
            "blob",
            Box::new(move |s| {
                s.raw_blobs()
                    .insert(blob.0, b"not what was attached".to_vec())
                    .unwrap();
            }),
            "modified_blob",
            blob_seq,
        ),
        (
            "rewritten",
            Box::new(|s| rewrite_from(s, 9)),
            "rewritten_tail",
            9,
        ),
        (
            "replaced",
            Box::new(|s| rewrite_from(s, 1)),
            "replaced_database",
            1,
        ),
    ];
    for (name, tamper, kind, seq) in cases {
        let copy = tampered_copy(&db, name, tamper);
        let (code, json, findings) =
            verify_json(&c, &["--journal", "--db", copy.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{name}: {json}");
        assert!(
            findings.contains(&(kind.to_owned(), seq)),
            "{name}: expected {kind} at seq {seq}: {json}"
        );
        // The text names it the same way.
        let text = String::from_utf8(
            con(&c, &["verify", "--journal", "--db", copy.to_str().unwrap()]).stdout,
        )
        .unwrap();
        assert!(
            text.contains(&format!("{kind} at seq {seq}")),
            "{name}: {text}"
        );
    }

    // A rewrite with recomputed hashes passes the chain walk alone; the
    // checkpoints alone (a journal that kept nothing else) still catch it,
    // and a truncated tail.
    let rewritten = db.with_file_name("events-rewritten");
    let plain = con(&c, &["verify", "--db", rewritten.to_str().unwrap()]);
    assert!(plain.status.success(), "{plain:?}");
    let only_checkpoints = c.root.path().join("checkpoints.export");
    let out = Command::new("journalctl")
        .args([
            "-o",
            "export",
            "--no-pager",
            &format!("CON_LOG_ID={log_id}"),
            "CON_EVENT=chain_checkpoint",
        ])
        .output()
        .unwrap();
    assert!(out.status.success() && !out.stdout.is_empty());
    std::fs::write(&only_checkpoints, &out.stdout).unwrap();
    for (name, kind) in [
        ("rewritten", "rewritten_tail"),
        ("truncated", "truncated_tail"),
    ] {
        let copy = db.with_file_name(format!("events-{name}"));
        let (code, json, findings) = verify_json(
            &c,
            &[
                "--journal",
                "--file",
                only_checkpoints.to_str().unwrap(),
                "--db",
                copy.to_str().unwrap(),
            ],
        );
        assert_eq!(code, Some(1));
        assert!(findings.iter().any(|(k, _)| k == kind), "{name}: {json}");
    }

    // Another database in place of this one: another log id.
    let fresh = c.root.path().join("fresh");
    {
        let store = con_store::Store::open(&fresh).unwrap();
        let writer =
            con_store::GroupCommitWriter::spawn(store, con_store::WriterConfig::default(), None)
                .unwrap();
        writer
            .appender()
            .append(con_event::NewEvent::system(
                con_event::payloads::TaskRouted {
                    from: "outer".into(),
                    to: "concierge".into(),
                    path: "/srv/con/inbox/x.task".into(),
                },
            ))
            .unwrap();
        writer.shutdown().unwrap();
    }
    let start = std::time::Instant::now();
    let (code, json, findings) = loop {
        match verify_json(
            &c,
            &[
                "--journal",
                "--log-id",
                &log_id,
                "--db",
                fresh.to_str().unwrap(),
            ],
        ) {
            v if v.0.is_some() || start.elapsed() > std::time::Duration::from_secs(10) => break v,
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    assert_eq!(code, Some(1));
    assert!(
        findings.contains(&("replaced_database".to_owned(), 1)),
        "{json}"
    );
}

/// `systemd-journal-remote`, which a central log server runs (the Debian
/// package of that name; `scripts/install-deps.sh` installs it).
const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// One con instance of a fleet: the delegation run to its end under its
/// own `[system] name`, what it showed through its daemon, and its
/// journal entries exported to a file once the daemon stopped.
struct Instance {
    c: Conspiracy,
    _models: (ScriptedServer, ScriptedServer),
    system: String,
    log_id: String,
    sessions: [SessionId; 2],
    /// `con replay --json` of each session, through the daemon.
    live: Vec<String>,
    /// `con replay --list --json` through the daemon.
    list: String,
    /// `journalctl -o export CON_LOG_ID=<log_id>`, the whole log.
    export: std::path::PathBuf,
}

/// The whole log `log_id` (`head` events, attachments included) exported
/// from this host's journal, once the mirror has sent all of it.
fn export_log(log_id: &str, head: usize, to: &std::path::Path) {
    let start = std::time::Instant::now();
    loop {
        let out = Command::new("journalctl")
            .args([
                "-o",
                "export",
                "--no-pager",
                &format!("CON_LOG_ID={log_id}"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let rebuilt = con_journal::rebuild_from_export(&out.stdout[..]).unwrap();
        let have = rebuilt.logs.get(log_id).map_or(0, Vec::len);
        if have == head && rebuilt.missing_blobs(log_id).is_empty() {
            std::fs::write(to, &out.stdout).unwrap();
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the journal holds {have} of the {head} events of log {log_id}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn instance(system: &str) -> Instance {
    let (c, cm, sm) = delegation();
    let config = c.root.path().join("etc/con/con.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        toml.replace("name = \"runs-test\"", &format!("name = \"{system}\"")),
    )
    .unwrap();
    let mut daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    ok(&c.run("sysadmin", &[]));
    let sessions = [session_of(&c, "concierge"), session_of(&c, "sysadmin")];
    let live = sessions
        .iter()
        .map(|s| stdout(&con(&c, &["replay", "--json", &s.to_hex()])))
        .collect();
    let list = stdout(&con(&c, &["replay", "--list", "--json"]));
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&con(&c, &["status", "--json"]))).unwrap();
    let log_id = status["log"]["log_id"].as_str().unwrap().to_owned();
    // Stopping writes the last checkpoint; the export waits for it.
    daemon.terminate();
    let head = con_store::Store::open_for_inspection(&c.root.db())
        .unwrap()
        .events_from(1)
        .count();
    let export = c.root.path().join(format!("{system}.export"));
    export_log(&log_id, head, &export);
    Instance {
        c,
        _models: (cm, sm),
        system: system.to_owned(),
        log_id,
        sessions,
        live,
        list,
        export,
    }
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_journal_remote_directory_keeps_two_instances_apart() {
    if !std::path::Path::new(JOURNAL_REMOTE).exists() {
        eprintln!(
            "SKIPPED: {JOURNAL_REMOTE} is missing (apt-get install systemd-journal-remote; \
             scripts/install-deps.sh installs it)"
        );
        return;
    }
    let fleet = [instance("alpha"), instance("beta")];
    assert_ne!(fleet[0].log_id, fleet[1].log_id);

    // What a central server receives: both instances' entries, written by
    // systemd-journal-remote into one journal file.
    let dir = fleet[0].c.root.path().join("remote");
    std::fs::create_dir(&dir).unwrap();
    let out = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", dir.join("remote.journal").display()))
        .args(fleet.iter().map(|i| &i.export))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir_arg = dir.to_str().unwrap();
    let c = &fleet[0].c;

    // Every session of both, one line each, with its host and log.
    let listed = stdout(&con(
        c,
        &[
            "replay",
            "--journal",
            "--directory",
            dir_arg,
            "--list",
            "--json",
        ],
    ));
    let rows = json_lines(&listed);
    assert_eq!(rows.len(), 4, "{listed}");
    for i in &fleet {
        let mine: Vec<&serde_json::Value> =
            rows.iter().filter(|r| r["log_id"] == i.log_id).collect();
        // As its own daemon listed them: the same sessions, the same host.
        assert_eq!(
            mine.into_iter().cloned().collect::<Vec<_>>(),
            json_lines(&i.list),
            "{listed}"
        );
        let own = json_lines(&i.list);
        assert_eq!(own.len(), 2);
        for (row, session) in own.iter().zip(&i.sessions) {
            assert_eq!(row["session"], session.to_hex());
            assert_eq!(row["system"], i.system.as_str());
            assert_eq!(row["host"], i.system.as_str());
            assert!(row["hostname"].is_string() && row["machine_id"].is_string());
            assert_eq!(row["outcome"], "ok");
            assert_eq!(row["model_calls"], 2);
        }
        // A database directory does not know its host.
        let db = i.c.root.db();
        let offline = json_lines(&stdout(&con(
            c,
            &["replay", "--list", "--json", "--db", db.to_str().unwrap()],
        )));
        assert_eq!(offline.len(), 2);
        for (row, live) in offline.iter().zip(&own) {
            assert_eq!(row["host"], serde_json::Value::Null);
            assert_eq!(row["log_id"], i.log_id.as_str());
            assert_eq!(row["session"], live["session"]);
            assert_eq!(row["cost_micro_usd"], live["cost_micro_usd"]);
        }
    }
    let text = stdout(&con(
        c,
        &["replay", "--journal", "--directory", dir_arg, "--list"],
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let none = stdout(&con(
        c,
        &[
            "replay",
            "--journal",
            "--directory",
            dir_arg,
            "--list",
            "--until",
            "1h",
        ],
    ));
    assert_eq!(none.lines().count(), 1, "{none}");
    let recent = stdout(&con(
        c,
        &[
            "replay",
            "--journal",
            "--directory",
            dir_arg,
            "--list",
            "--since",
            "1h",
        ],
    ));
    assert_eq!(recent, text);
    assert!(
        lines[0].starts_with("HOST") && lines[0].contains("LOG"),
        "{text}"
    );
    for i in &fleet {
        for (s, agent) in i.sessions.iter().zip(["concierge", "sysadmin"]) {
            let line = lines
                .iter()
                .find(|l| l.contains(&s.to_hex()))
                .unwrap_or_else(|| panic!("{s} in {text}"));
            assert!(line.starts_with(&i.system), "{line}");
            assert!(line.contains(&i.log_id) && line.contains(agent), "{line}");
        }
    }

    // Each session replays from the central directory exactly as through
    // its own daemon and from its own database, whichever root asks.
    for i in &fleet {
        for (s, live) in i.sessions.iter().zip(&i.live) {
            let central = stdout(&con(
                c,
                &[
                    "replay",
                    "--json",
                    "--journal",
                    "--directory",
                    dir_arg,
                    &s.to_hex(),
                ],
            ));
            assert_eq!(&central, live);
            let db = i.c.root.db();
            let offline = replay_json_from_db(c, &db, *s);
            assert_eq!(&offline, live);
        }
        // Both logs have a task t-1: its trace is read from the log named.
        let tree = stdout(&con(
            &i.c,
            &[
                "replay",
                "--trace",
                "t-1",
                "--db",
                i.c.root.db().to_str().unwrap(),
            ],
        ));
        let central_tree = stdout(&con(
            c,
            &[
                "replay",
                "--journal",
                "--directory",
                dir_arg,
                "--log-id",
                &i.log_id,
                "--trace",
                "t-1",
            ],
        ));
        assert_eq!(central_tree, tree);
    }
    let ambiguous = con(
        c,
        &[
            "replay",
            "--journal",
            "--directory",
            dir_arg,
            "--trace",
            "t-1",
        ],
    );
    assert!(!ambiguous.status.success());
    assert!(
        String::from_utf8_lossy(&ambiguous.stderr).contains("choose one with --log-id"),
        "{ambiguous:?}"
    );

    // Each log's chain checked on its own.
    for i in &fleet {
        let out = con(
            c,
            &[
                "verify",
                "--journal",
                "--directory",
                dir_arg,
                "--log-id",
                &i.log_id,
                "--json",
            ],
        );
        let json: serde_json::Value = serde_json::from_slice(&stdout(&out).into_bytes()).unwrap();
        assert_eq!(json["ok"], true, "{json}");
        let logs = json["logs"].as_array().unwrap();
        assert_eq!(logs.len(), 1, "{json}");
        assert_eq!(logs[0]["log_id"], i.log_id.as_str());
        assert_eq!(logs[0]["host"], i.system.as_str());
        assert!(logs[0]["checkpoints"].as_u64().unwrap() >= 1, "{json}");
        assert_eq!(logs[0]["checkpoints"], logs[0]["checkpoints_matching"]);
        let head = con_store::Store::open_for_inspection(&i.c.root.db())
            .unwrap()
            .events_from(1)
            .count() as u64;
        assert_eq!(logs[0]["head_seq"], head, "{json}");
    }
    let both = stdout(&con(c, &["verify", "--journal", "--directory", dir_arg]));
    for i in &fleet {
        assert!(
            both.lines()
                .any(|l| l.starts_with(&format!("log {} on {}: chain ok", i.log_id, i.system))),
            "{both}"
        );
    }

    // The same session in two logs (here: one log's entries under a second
    // log id, as a copied database would run on): --log-id is required,
    // and then it is replayed from the log named.
    let copy = c.root.path().join("copy.export");
    let other = "0123456789abcdef0123456789abcdef";
    let bytes = std::fs::read_to_string(&fleet[0].export).unwrap();
    std::fs::write(
        &copy,
        bytes.replace(
            &format!("CON_LOG_ID={}", fleet[0].log_id),
            &format!("CON_LOG_ID={other}"),
        ),
    )
    .unwrap();
    let files = [
        "--file",
        fleet[0].export.to_str().unwrap(),
        "--file",
        copy.to_str().unwrap(),
    ];
    let session = fleet[0].sessions[1].to_hex();
    let ambiguous = con(
        c,
        &[&["replay", "--journal"], &files[..], &[session.as_str()]].concat(),
    );
    assert!(!ambiguous.status.success());
    assert!(ambiguous.stdout.is_empty());
    let err = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(
        err.contains("entries of 2 logs match")
            && err.contains(&format!("{} on alpha", fleet[0].log_id))
            && err.contains(&format!("{other} on alpha"))
            && err.contains("--log-id"),
        "{err}"
    );
    for id in [fleet[0].log_id.as_str(), other] {
        let chosen = stdout(&con(
            c,
            &[
                &["replay", "--json", "--journal", "--log-id", id],
                &files[..],
                &[session.as_str()],
            ]
            .concat(),
        ));
        assert_eq!(chosen, fleet[0].live[1]);
    }
}

/// Export-format bytes of `entries`, as `journalctl -o export` writes
/// them (values with control characters in the binary form).
fn to_export(entries: &[con_journal::ReadEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        for (name, value) in &entry.fields {
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

#[test]
fn replay_verify_vouches_for_what_it_shows_and_names_the_seq_of_a_tamper() {
    let (c, _cm, _sm) = delegation();
    let mut daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    ok(&c.run("sysadmin", &[]));
    let sysadmin = session_of(&c, "sysadmin").to_hex();
    let json = stdout(&con(&c, &["replay", "--json", &sysadmin]));
    let seqs: Vec<u64> = json_lines(&json)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let last = *seqs.last().unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&con(&c, &["status", "--json"]))).unwrap();
    let log_id = status["log"]["log_id"].as_str().unwrap().to_owned();

    // Through the daemon, which walks its log.
    let plain = stdout(&con(&c, &["replay", &sysadmin]));
    let verified = stdout(&con(&c, &["replay", "--verify", &sysadmin]));
    let line = format!(
        "verified through seq {last}: the log's chain, walked by the daemon holds from seq 1 ({} events shown)\n",
        seqs.len()
    );
    assert_eq!(verified, format!("{plain}{line}"));
    // With --json the line goes to standard error, the JSON is unchanged.
    let out = con(&c, &["replay", "--verify", "--json", &sysadmin]);
    assert_eq!(stdout(&out), json);
    assert_eq!(String::from_utf8_lossy(&out.stderr), line);
    let traced = stdout(&con(&c, &["replay", "--verify", "--trace", "t-1"]));
    assert!(
        traced
            .lines()
            .last()
            .unwrap()
            .starts_with("verified through seq "),
        "{traced}"
    );
    // Walking the chain is for operators.
    let refused = con_as(&c, "sysadmin", &["replay", "--verify", &sysadmin]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only operators"),
        "{refused:?}"
    );

    daemon.terminate();
    let db = c.root.db();
    let head = con_store::Store::open_for_inspection(&db)
        .unwrap()
        .events_from(1)
        .count();
    let db_line = format!(
        "verified through seq {last}: the chain of {} holds from seq 1",
        db.display()
    );
    let offline = stdout(&con(
        &c,
        &[
            "replay",
            "--verify",
            "--db",
            db.to_str().unwrap(),
            &sysadmin,
        ],
    ));
    assert!(
        offline.lines().last().unwrap().starts_with(&db_line),
        "{offline}"
    );

    // A copy with a record of the session changed (its hash left as it
    // was): the view is refused, naming the seq.
    let tool_result = json_lines(&json)
        .iter()
        .find(|e| e["kind"] == "tool.result")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    let bump = |seq: u64| {
        move |s: &con_store::Store| {
            let key = seq.to_be_bytes();
            let v = s.raw_log().get(key).unwrap().unwrap();
            let stored = con_event::decode_stored(&v).unwrap();
            let mut env = con_event::Envelope::decode_record(stored.record).unwrap();
            env.ts_unix_nanos += 1;
            let record = env.encode_record().unwrap();
            s.raw_log()
                .insert(key, con_event::encode_stored(&record, &stored.hash))
                .unwrap();
        }
    };
    let copy = tampered_copy(&db, "in-session", bump(tool_result));
    // Without --verify the edit goes unnoticed.
    ok(&con(
        &c,
        &["replay", "--db", copy.to_str().unwrap(), &sysadmin],
    ));
    let refused = con(
        &c,
        &[
            "replay",
            "--verify",
            "--db",
            copy.to_str().unwrap(),
            &sysadmin,
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stdout.is_empty());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("not verified: chain broken at seq {tool_result}:"))
            && err.contains("content does not match"),
        "{err}"
    );
    // A change after the last event shown leaves it verified, and says so.
    let later = tampered_copy(&db, "later", bump(head as u64));
    let verified = stdout(&con(
        &c,
        &[
            "replay",
            "--verify",
            "--db",
            later.to_str().unwrap(),
            &sysadmin,
        ],
    ));
    let line = verified.lines().last().unwrap();
    assert!(
        line.starts_with(&format!("verified through seq {last}:"))
            && line.contains(&format!("it breaks later, at seq {head}")),
        "{verified}"
    );

    // The journal's copy: the rebuilt records' chain.
    let export = c.root.path().join("log.export");
    export_log(&log_id, head, &export);
    let from_journal = stdout(&con(
        &c,
        &[
            "replay",
            "--verify",
            "--journal",
            "--file",
            export.to_str().unwrap(),
            &sysadmin,
        ],
    ));
    assert_eq!(
        from_journal,
        format!(
            "{plain}verified through seq {last}: the journal's copy of log {log_id}, CON_HASH and \
             CON_PREV_HASH of each record holds from seq 1 ({} events shown)\n",
            seqs.len()
        )
    );
    // Without one entry of the session: the replay still shows the rest,
    // --verify refuses it and names the missing seq; so does con verify.
    let entries: Vec<con_journal::ReadEntry> =
        con_journal::read_export(&std::fs::read(&export).unwrap()[..])
            .map(Result::unwrap)
            .filter(|e| {
                e.get("CON_SEQ") != Some(tool_result.to_string().as_bytes())
                    || e.get("CON_RECORD").is_none()
            })
            .collect();
    let cut = c.root.path().join("cut.export");
    std::fs::write(&cut, to_export(&entries)).unwrap();
    let cut_arg = cut.to_str().unwrap();
    ok(&con(
        &c,
        &["replay", "--journal", "--file", cut_arg, &sysadmin],
    ));
    let refused = con(
        &c,
        &[
            "replay",
            "--verify",
            "--journal",
            "--file",
            cut_arg,
            &sysadmin,
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stdout.is_empty());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!(
            "not verified: chain broken at seq {tool_result}: missing from the journal"
        )),
        "{err}"
    );
    let journal_alone = con(&c, &["verify", "--journal", "--file", cut_arg]);
    assert_eq!(journal_alone.status.code(), Some(1));
    let text = String::from_utf8_lossy(&journal_alone.stdout);
    assert!(
        text.starts_with(&format!(
            "log {log_id} on runs-test: chain broken at seq {tool_result}: missing from the journal"
        )),
        "{text}"
    );
    // Without the attachments (their part entries and the contents carried
    // inline): the chain holds, and each one is named with the first event
    // that references it.
    let all: Vec<con_journal::ReadEntry> =
        con_journal::read_export(&std::fs::read(&export).unwrap()[..])
            .map(Result::unwrap)
            .collect();
    let intact_log = con_journal::rebuild_from_export(&std::fs::read(&export).unwrap()[..])
        .unwrap()
        .logs
        .remove(&log_id)
        .unwrap();
    let mut first_reference: std::collections::BTreeMap<String, u64> = Default::default();
    for event in &intact_log {
        for b in event.payload.blob_refs() {
            first_reference
                .entry(b.digest.to_hex())
                .or_insert(event.seq());
        }
    }
    assert!(!first_reference.is_empty());
    let stripped: Vec<con_journal::ReadEntry> = all
        .iter()
        .filter(|e| e.get("CON_RECORD").is_some())
        .map(|e| {
            let mut e = e.clone();
            e.fields.retain(|(k, _)| k != "CON_BLOB_INLINE");
            e
        })
        .collect();
    let no_blobs = c.root.path().join("no-blobs.export");
    std::fs::write(&no_blobs, to_export(&stripped)).unwrap();
    let out = con(
        &c,
        &[
            "verify",
            "--json",
            "--journal",
            "--file",
            no_blobs.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = &json["logs"][0];
    assert!(log["first_bad_seq"].is_null(), "the chain holds: {log}");
    let named: std::collections::BTreeMap<String, u64> = log["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["kind"], "missing_blob");
            let detail = f["detail"].as_str().unwrap();
            let digest = detail
                .strip_prefix("attachment sha256:")
                .and_then(|d| d.strip_suffix(" is not in the journal"))
                .unwrap();
            (digest.to_owned(), f["seq"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(named, first_reference);
    let intact = stdout(&con(
        &c,
        &["verify", "--journal", "--file", export.to_str().unwrap()],
    ));
    assert!(
        intact.starts_with(&format!(
            "log {log_id} on runs-test: chain ok: {head} events, head seq {head}"
        )),
        "{intact}"
    );
}

/// Lines a child writes to its standard output, each with when it came.
fn lines_of(
    child: &mut std::process::Child,
) -> std::sync::mpsc::Receiver<(std::time::Instant, String)> {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send((std::time::Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn replay_follow_prints_a_session_as_it_is_recorded_and_exits_when_it_ends() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let concierge_model = ScriptedServer::start(vec![]);
    let sysadmin_model = ScriptedServer::start(vec![]);
    let c = crate::runs::concierge_tasking_sysadmin(
        "openai-compatible",
        &concierge_model,
        &sysadmin_model,
    );
    // The model takes its time over the first step.
    sysadmin_model.push(
        Step::tool_call("exec", serde_json::json!({"command": "echo 42%"}))
            .delayed(Duration::from_secs(3)),
    );
    sysadmin_model.push(Step::text("/var is 42% full."));
    let _daemon = c.daemon();
    c.task("sysadmin", "job-1", "How full is /var?");
    let mut run = c
        .run_command("sysadmin", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The run is waiting for the model.
    let mut session = None;
    crate::runs::wait_for("the first model call", Duration::from_secs(20), || {
        let events = all_events(&c.root.socket());
        session = events.iter().find_map(|e| match &e.payload {
            Payload::SessionStarted(_) => e.envelope.session,
            _ => None,
        });
        events
            .iter()
            .any(|e| matches!(e.payload, Payload::LlmRequest(_)))
    });
    let session = session.unwrap().to_hex();
    let follower = |json: bool| {
        let mut args = vec!["replay", "--follow", session.as_str()];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(CON)
            .args(c.root.con_flags())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(&mut child);
        (child, lines)
    };
    let (mut text_child, text_lines) = follower(false);
    let (mut json_child, json_lines_rx) = follower(true);

    // What was recorded comes at once, while the model still thinks.
    let (first_at, header) = text_lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        header.starts_with(&format!("session {session}")),
        "{header}"
    );
    let responded = all_events(&c.root.socket())
        .iter()
        .any(|e| matches!(e.payload, Payload::LlmResponse(_)));
    assert!(!responded, "the model answered before the follower started");

    // Then each event as it is appended, and an exit after the end.
    let wait = |child: &mut std::process::Child| {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the follower did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(wait(&mut text_child).success());
    assert!(wait(&mut json_child).success());
    assert!(run.wait().unwrap().success());
    let text: Vec<(Instant, String)> = text_lines.iter().collect();
    let response = text
        .iter()
        .find(|(_, l)| l.contains("llm.response"))
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        response.0.duration_since(first_at) > Duration::from_secs(1),
        "the response was printed when it was recorded"
    );
    let all: String = text.iter().map(|(_, l)| format!("{l}\n")).collect();
    for expected in [
        "not ended",
        "llm.request",
        "asks exec",
        "tool.call          exec",
        "tool.result        exec exit 0",
        "session.ended      ok after 2 iterations",
        "| /var is 42% full.",
    ] {
        assert!(all.contains(expected), "{expected:?} in:\n{all}");
    }
    assert!(text.last().unwrap().1.starts_with("2 model calls"), "{all}");
    // Each event once: the same JSON as a replay of the finished session.
    let followed: String = json_lines_rx
        .iter()
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    assert_eq!(followed, stdout(&con(&c, &["replay", "--json", &session])));
    assert!(
        followed
            .lines()
            .last()
            .unwrap()
            .contains("\"session.ended\"")
    );

    // A session that has ended: printed, and done.
    let done = stdout(&con(&c, &["replay", "--follow", &session]));
    assert_eq!(done, stdout(&con(&c, &["replay", &session])));
}

#[test]
fn rerun_of_the_delegation_runs_the_exec_again_and_never_the_write_into_an_inbox() {
    let (c, concierge_model, sysadmin_model) = delegation();
    let _daemon = c.daemon();
    c.task("concierge", "t-1", "Ask the sysadmin how full /var is.");
    ok(&c.run("concierge", &[]));
    ok(&c.run("sysadmin", &[]));
    let concierge = session_of(&c, "concierge");
    let sysadmin = session_of(&c, "sysadmin");
    let requests = (
        concierge_model.requests().len(),
        sysadmin_model.requests().len(),
    );
    let inbox = c.agent_dir("sysadmin", "inbox");
    let processed = c.agent_dir("sysadmin", "processed");
    let listing = |d: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = (listing(&inbox), listing(&processed));

    // The concierge's write_file went to another agent's inbox: not run.
    let text = stdout(&con(&c, &["replay", "--rerun", &concierge.to_hex()]));
    let job = inbox.join("job-1.task");
    assert!(
        text.contains(&format!(
            "not reproduced: writes {} outside the workspace",
            job.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("1 tool call: 0 same, 0 differ, 1 not reproduced"),
        "{text}"
    );
    // The sysadmin's exec runs again and prints the same bytes.
    let text = stdout(&con(&c, &["replay", "--rerun", &sysadmin.to_hex()]));
    assert!(
        text.contains("1 tool call: 1 same, 0 differ, 0 not reproduced"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text}");

    assert_eq!((listing(&inbox), listing(&processed)), before);
    assert_eq!(
        (
            concierge_model.requests().len(),
            sysadmin_model.requests().len()
        ),
        requests
    );
}
