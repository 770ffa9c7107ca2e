//! The mirror against a real systemd-journald (`scripts/ensure-journald.sh`
//! starts one where PID 1 is not systemd; `make test` runs it first).
//!
//! Degradation scenarios run in a private mount namespace (the test binary
//! re-executes itself under `unshare --mount`) where journald's socket is
//! missing or is a socket nobody reads, so the host's journald is untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use con_event::payloads::*;
use con_event::*;
use con_journal::*;
use con_store::*;

const SCENARIO_ENV: &str = "CON_JOURNAL_SCENARIO";

fn start(
    capacity: usize,
) -> (
    tempfile::TempDir,
    Store,
    GroupCommitWriter,
    MirrorStatus,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let log_id = store.log_id().unwrap();
    let (mirror, status) = JournalMirror::spawn(
        MirrorConfig {
            queue_capacity: capacity,
            context: MirrorContext {
                log_id: log_id.clone(),
                system: "journald-test".into(),
            },
        },
        store.clone(),
    )
    .unwrap();
    let writer = GroupCommitWriter::spawn(
        store.clone(),
        WriterConfig::default(),
        Some(Box::new(mirror)),
    )
    .unwrap();
    (dir, store, writer, status, log_id)
}

fn journal_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("journalctl")
        .args(["-t", "con", "-o", "json", "--all", "--no-pager"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn committed_events_reach_journald_with_their_fields() {
    assert!(
        Path::new("/run/systemd/journal/socket").exists(),
        "journald is not running: run scripts/ensure-journald.sh (make test does)"
    );
    let (_dir, store, writer, status, log_id) = start(1024);
    let app = writer.appender();
    let session = SessionId([0xab; 16]);
    let prompt = b"You are the sysadmin. Check the disk.".to_vec();
    app.append(NewEvent::system(TaskRouted {
        from: "outer".into(),
        to: "sysadmin".into(),
        path: "/srv/con/agents/sysadmin/inbox/t1.task".into(),
    }))
    .unwrap();
    let started = app
        .append(NewEvent {
            actor: Actor {
                uid: 1234,
                agent: Some("sysadmin".into()),
            },
            session: Some(session),
            task: Some("t1".into()),
            causation: Some(1),
            payload: SessionStarted {
                agent: "sysadmin".into(),
                runner: "builtin".into(),
                provider: Some("openrouter".into()),
                model: Some("m1".into()),
                trust: Trust::Verified,
                prompt: BlobRef::of(&prompt),
            }
            .into(),
            attachments: vec![prompt.clone()],
        })
        .unwrap();
    app.append(NewEvent::system(ContractResult {
        contract: "CON-SYS-001".into(),
        check: "disk".into(),
        scope_agent: None,
        status: CheckStatus::Fail,
        detail: "5% free".into(),
        duration_ms: 3,
    }))
    .unwrap();

    let seq_filter = format!("CON_SEQ={}", started.seq);
    let log_filter = format!("CON_LOG_ID={log_id}");
    let entry = wait_for("the session.started entry", Duration::from_secs(10), || {
        journal_json(&[&log_filter, &seq_filter]).into_iter().next()
    });
    let field = |k: &str| {
        entry[k]
            .as_str()
            .unwrap_or_else(|| panic!("no {k} in {entry}"))
            .to_owned()
    };
    assert_eq!(field("SYSLOG_IDENTIFIER"), "con");
    assert_eq!(field("MESSAGE_ID"), "26f1dd5d8a7f4d0c80c62ed1fd1a34ed");
    assert_eq!(field("PRIORITY"), "5");
    assert_eq!(field("CON_EVENT"), "session_started");
    assert_eq!(field("CON_AGENT"), "sysadmin");
    assert_eq!(field("CON_UID"), "1234");
    assert_eq!(field("CON_SESSION"), session.to_hex());
    assert_eq!(field("CON_TASK"), "t1");
    assert_eq!(field("CON_CAUSATION"), "1");
    assert_eq!(field("CON_HASH"), started.hash.to_hex());
    assert_eq!(field("CON_SYSTEM"), "journald-test");
    assert_eq!(field("CON_MODEL"), "m1");
    assert!(field("MESSAGE").contains("agent sysadmin started a session"));
    assert!(field("CON_PAYLOAD").contains("\"runner\":\"builtin\""));
    assert_eq!(field("CON_KIND_VERSION"), "1");
    assert_eq!(field("CON_PAYLOAD_VERSION"), "1");
    let stored = store.raw(started.seq).unwrap().unwrap();
    let record = &stored[..stored.len() - 32];
    assert_eq!(field("CON_RECORD"), BASE64.encode(record));

    // The prompt travels inside the entry, findable by its digest.
    let digest = Digest::of(&prompt).to_hex();
    assert_eq!(field("CON_BLOB_DIGEST"), digest);
    assert_eq!(
        field("CON_BLOB_INLINE"),
        format!("{digest} {}", BASE64.encode(&prompt))
    );
    let by_digest = journal_json(&[&log_filter, &format!("CON_BLOB_DIGEST={digest}")]);
    assert_eq!(by_digest.len(), 1, "{by_digest:?}");
    assert_eq!(by_digest[0]["CON_SEQ"], started.seq.to_string());

    // The agent/kind query a sysadmin would type.
    let by_agent = journal_json(&[
        &log_filter,
        "CON_AGENT=sysadmin",
        "CON_EVENT=session_started",
    ]);
    assert_eq!(by_agent.len(), 1);

    let all = wait_for("all three entries", Duration::from_secs(10), || {
        let all: Vec<_> = journal_json(&[&log_filter])
            .into_iter()
            .filter(|e| e.get("CON_SEQ").is_some())
            .collect();
        (all.len() >= 3).then_some(all)
    });
    let seqs: HashSet<String> = all
        .iter()
        .map(|e| e["CON_SEQ"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seqs, HashSet::from(["1".into(), "2".into(), "3".into()]));
    let failed_check = all
        .iter()
        .find(|e| e["CON_EVENT"] == "contract_result")
        .unwrap();
    assert_eq!(failed_check["PRIORITY"], "4", "a failed check is a warning");
    assert_eq!(failed_check["CON_CONTRACT"], "CON-SYS-001");

    assert_eq!(status.health(), MirrorHealth::Healthy);
    writer.shutdown().unwrap();
    assert_eq!(
        store.verify().unwrap().unwrap().events,
        3,
        "no incident events"
    );
}

#[test]
fn events_committed_while_no_mirror_ran_are_backfilled_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    // A writer without a mirror: as if the daemon was killed with entries
    // still queued for journald.
    let store = Store::open(&path).unwrap();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    for i in 0..4 {
        writer.appender().append(routed(i)).unwrap();
    }
    writer.shutdown().unwrap();
    let log_id = store.log_id().unwrap();
    let context = MirrorContext {
        log_id: log_id.clone(),
        system: "journald-test".into(),
    };
    let config = MirrorConfig {
        queue_capacity: 64,
        context,
    };
    let (mirror, _status) = JournalMirror::spawn(config.clone(), store.clone()).unwrap();
    let writer = GroupCommitWriter::spawn(
        store.clone(),
        WriterConfig::default(),
        Some(Box::new(mirror)),
    )
    .unwrap();
    writer.appender().append(routed(4)).unwrap();
    let log_filter = format!("CON_LOG_ID={log_id}");
    let seqs = wait_for("five mirrored entries", Duration::from_secs(10), || {
        let all = journal_json(&[&log_filter]);
        (all.len() >= 5).then_some(all)
    });
    let mut seqs: Vec<u64> = seqs
        .iter()
        .map(|e| e["CON_SEQ"].as_str().unwrap().parse().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    wait_for("the marker to reach seq 5", Duration::from_secs(10), || {
        (store.marker(MARKER).unwrap() == 5).then_some(())
    });
    writer.shutdown().unwrap();

    // A second start has nothing to re-send.
    let (mirror, _status) = JournalMirror::spawn(config, store.clone()).unwrap();
    drop(mirror);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(journal_json(&[&log_filter]).len(), 5, "no duplicates");
}

/// `journalctl -o <format>` of every entry of one log, after journald has
/// written out what it received.
fn journal_of(log_id: &str, format: &[&str]) -> Vec<u8> {
    let sync = Command::new("journalctl").arg("--sync").status().unwrap();
    assert!(sync.success(), "journalctl --sync");
    let out = Command::new("journalctl")
        .args(["--no-pager", "-o"])
        .args(format)
        .arg(format!("CON_LOG_ID={log_id}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// Pseudo-random bytes: binary (NULs, invalid UTF-8) and incompressible.
fn binary(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A session's events: the task, the prompt (`prompt`), a model call, a tool
/// whose output is `output`, and the next model call.
fn session_events(session: SessionId, prompt: &[u8], output: &[u8]) -> Vec<NewEvent> {
    let actor = Actor {
        uid: 1234,
        agent: Some("sysadmin".into()),
    };
    let event = |payload: Payload, attachments: Vec<Vec<u8>>| NewEvent {
        actor: actor.clone(),
        session: Some(session),
        task: Some(format!("t-{session}")),
        causation: None,
        payload,
        attachments,
    };
    let request = format!(
        "{{\"messages\":[{{\"role\":\"system\",\"len\":{}}}]}}",
        prompt.len()
    );
    let args = br#"{"command":"cat /var/log/big.bin"}"#.to_vec();
    let reply = br#"{"content":"done"}"#.to_vec();
    vec![
        event(
            SessionStarted {
                agent: "sysadmin".into(),
                runner: "builtin".into(),
                provider: Some("openrouter".into()),
                model: Some("m1".into()),
                trust: Trust::Verified,
                prompt: BlobRef::of(prompt),
            }
            .into(),
            vec![prompt.to_vec()],
        ),
        event(
            LlmRequest {
                agent: "sysadmin".into(),
                provider: "openrouter".into(),
                model: "m1".into(),
                iteration: 1,
                frame: BlobRef::of(request.as_bytes()),
                messages_at: 0,
                continues: None,
                repeated: 0,
                messages: Vec::new(),
            }
            .into(),
            vec![request.clone().into_bytes()],
        ),
        event(
            ToolCall {
                call_id: "call-1".into(),
                tool: "exec".into(),
                arguments: BlobRef::of(&args),
            }
            .into(),
            vec![args],
        ),
        event(
            ToolResult {
                call_id: "call-1".into(),
                tool: "exec".into(),
                exit_code: Some(0),
                duration_ms: 40,
                output: BlobRef::of(output),
                truncated: false,
                error: None,
            }
            .into(),
            vec![output.to_vec()],
        ),
        event(
            LlmResponse {
                agent: "sysadmin".into(),
                provider: "openrouter".into(),
                model: "m1".into(),
                status: Some(200),
                attempts: 1,
                latency_ms: 900,
                input_tokens: 30_000,
                output_tokens: 20,
                cost_micro_usd: 1_000,
                response: Some(BlobRef::of(&reply)),
                error: None,
            }
            .into(),
            vec![reply],
        ),
        // The conversation so far is sent again with the next call.
        event(
            LlmRequest {
                agent: "sysadmin".into(),
                provider: "openrouter".into(),
                model: "m1".into(),
                iteration: 2,
                frame: BlobRef::of(request.as_bytes()),
                messages_at: 0,
                continues: None,
                repeated: 0,
                messages: Vec::new(),
            }
            .into(),
            vec![request.into_bytes()],
        ),
    ]
}

#[test]
fn the_journal_alone_rebuilds_every_event_and_attachment_exactly() {
    assert!(
        Path::new("/run/systemd/journal/socket").exists(),
        "journald is not running: run scripts/ensure-journald.sh (make test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let log_id = store.log_id().unwrap();
    let config = MirrorConfig {
        queue_capacity: 1024,
        context: MirrorContext {
            log_id: log_id.clone(),
            system: "journald-test".into(),
        },
    };
    // A 100 KiB UTF-8 prompt (multi-byte characters, newlines) and a 300 KiB
    // binary tool output.
    let prompt: Vec<u8> = "Prüfe die Platte — check the disk.\n"
        .repeat(3000)
        .into_bytes()[..100 * 1024]
        .to_vec();
    assert!(std::str::from_utf8(&prompt).is_ok());
    let output = binary(300 * 1024, 1);

    // Session 1, mirrored as it is committed.
    let (mirror, status) = JournalMirror::spawn(config.clone(), store.clone()).unwrap();
    let writer = GroupCommitWriter::spawn(
        store.clone(),
        WriterConfig::default(),
        Some(Box::new(mirror)),
    )
    .unwrap();
    for e in session_events(SessionId([1; 16]), &prompt, &output) {
        writer.appender().append(e).unwrap();
    }
    writer.shutdown().unwrap();
    let first = store.head().seq;
    wait_for("the mirror to catch up", Duration::from_secs(20), || {
        (store.marker(MARKER).unwrap() == first).then_some(())
    });
    assert_eq!(status.health(), MirrorHealth::Healthy);

    // Session 2 is committed while no mirror runs, as if the daemon was
    // killed before its mirror caught up. It reuses the prompt and has a
    // new 300 KiB binary output.
    let output2 = binary(300 * 1024, 2);
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    for e in session_events(SessionId([2; 16]), &prompt, &output2) {
        writer.appender().append(e).unwrap();
    }
    writer.shutdown().unwrap();

    // The next start back-fills session 2, then mirrors new events.
    let (mirror, status) = JournalMirror::spawn(config, store.clone()).unwrap();
    let writer = GroupCommitWriter::spawn(
        store.clone(),
        WriterConfig::default(),
        Some(Box::new(mirror)),
    )
    .unwrap();
    let reply = b"all clean".to_vec();
    writer
        .appender()
        .append(NewEvent {
            actor: Actor::system(),
            session: Some(SessionId([2; 16])),
            task: None,
            causation: None,
            payload: SessionEnded {
                agent: "sysadmin".into(),
                outcome: Outcome::Ok,
                iterations: 2,
                duration_ms: 5_000,
                response: Some(BlobRef::of(&reply)),
                detail: String::new(),
            }
            .into(),
            attachments: vec![reply],
        })
        .unwrap();
    let head = store.head();
    let rebuilt = wait_for(
        "every event in the journal",
        Duration::from_secs(20),
        || {
            let rebuilt = rebuild_from_export(&journal_of(&log_id, &["export"])[..]).unwrap();
            let n = rebuilt.logs.get(&log_id).map_or(0, Vec::len) as u64;
            (n == head.seq).then_some(rebuilt)
        },
    );
    writer.shutdown().unwrap();
    assert_eq!(status.health(), MirrorHealth::Healthy);

    // Same events (envelope, payload, hash) as the database, and a chain
    // that verifies from the journal alone.
    let stored: Vec<Event> = store.events_from(1).map(Result::unwrap).collect();
    assert_eq!(stored.len() as u64, head.seq, "no incident events");
    let events = &rebuilt.logs[&log_id];
    assert_eq!(events, &stored);
    let report = verify_chain(events).unwrap();
    assert_eq!(report.head, head);
    assert!(report.head.seq > first);

    // Every attachment, byte for byte.
    assert!(rebuilt.incomplete_blobs.is_empty());
    assert!(rebuilt.missing_blobs(&log_id).is_empty());
    let referenced: HashSet<Digest> = stored
        .iter()
        .flat_map(|e| e.payload.blob_refs())
        .map(|r| r.digest)
        .collect();
    assert_eq!(rebuilt.blobs.len(), referenced.len());
    for d in &referenced {
        assert_eq!(rebuilt.blobs[d], store.blob(d).unwrap().unwrap(), "{d}");
    }
    assert_eq!(rebuilt.blobs[&Digest::of(&output2)], output2);

    // Each content once, however many events reference it (the prompt by
    // both sessions, the first request twice per session): contents up to
    // BLOB_INLINE_MAX inside one event entry, larger ones in part entries.
    let mut inline: HashMap<String, usize> = HashMap::new();
    let mut parts_per_digest: HashMap<String, Vec<u64>> = HashMap::new();
    for entry in read_export(&journal_of(&log_id, &["export"])[..]) {
        let entry = entry.unwrap();
        let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
        for (name, value) in &entry.fields {
            if name == field::BLOB_INLINE {
                *inline.entry(text(&value[..64])).or_default() += 1;
            }
        }
        if entry.get(field::BLOB_DATA).is_some() {
            let digest = text(entry.get(field::BLOB_DIGEST).unwrap());
            let part = text(entry.get(field::BLOB_PART).unwrap());
            parts_per_digest
                .entry(digest)
                .or_default()
                .push(part.parse().unwrap());
        }
    }
    for d in &referenced {
        let len = store.blob(d).unwrap().unwrap().len();
        if len <= BLOB_INLINE_MAX {
            assert_eq!(inline.remove(&d.to_hex()), Some(1), "{d}: {len} bytes");
            continue;
        }
        let mut parts = parts_per_digest.remove(&d.to_hex()).unwrap();
        parts.sort_unstable();
        let n = len.div_ceil(BLOB_PART_BYTES) as u64;
        assert_eq!(parts, (1..=n).collect::<Vec<_>>(), "{d}: {len} bytes");
    }
    assert!(inline.is_empty() && parts_per_digest.is_empty());

    // `-o json --all` says the same.
    let from_json = rebuild_from_json(&journal_of(&log_id, &["json", "--all"])[..]).unwrap();
    assert_eq!(&from_json.logs[&log_id], events);
    assert_eq!(from_json.blobs, rebuilt.blobs);
}

/// Re-runs `scenario` as root in a private mount namespace.
fn in_private_mount_namespace(scenario: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "scenario_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO_ENV, scenario)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scenario {scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn missing_journald_degrades_the_mirror_but_never_the_log() {
    in_private_mount_namespace("missing");
}

#[test]
fn stuck_journald_never_blocks_appends_and_recovery_is_recorded() {
    in_private_mount_namespace("stuck");
}

fn mirror_events(store: &Store) -> Vec<Payload> {
    store
        .events_from(1)
        .map(|e| e.unwrap().payload)
        .filter(|p| {
            matches!(
                p,
                Payload::JournalMirrorDegraded(_) | Payload::JournalMirrorRecovered(_)
            )
        })
        .collect()
}

fn routed(i: u64) -> NewEvent {
    NewEvent::system(TaskRouted {
        from: "outer".into(),
        to: "concierge".into(),
        path: format!("/srv/con/inbox/{i}.task"),
    })
}

/// Appends `n` events with many in flight, failing (instead of hanging) if
/// the log stops acknowledging.
fn append_many(app: &Appender, n: u64) {
    let app = app.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let tickets: Vec<_> = (0..n).map(|i| app.submit(routed(i))).collect();
        for t in tickets {
            t.wait().unwrap();
        }
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("appends blocked: the journal mirror is on the write path");
}

#[test]
#[ignore = "child of the degradation tests; needs a private mount namespace"]
fn scenario_child() {
    let scenario = std::env::var(SCENARIO_ENV).expect("run by a degradation test");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", "/run/systemd/journal"])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs over /run/systemd/journal");
    match scenario.as_str() {
        "missing" => {
            let (_dir, store, writer, status, _) = start(1024);
            append_many(&writer.appender(), 500);
            let events = wait_for(
                "journal.mirror_degraded in the log",
                Duration::from_secs(10),
                || {
                    let ev = mirror_events(&store);
                    (!ev.is_empty()).then_some(ev)
                },
            );
            match &events[0] {
                Payload::JournalMirrorDegraded(d) => {
                    assert!(d.reason.contains("not reachable"), "{}", d.reason);
                    assert_eq!(d.first_unmirrored_seq, 1);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                events.len(),
                1,
                "one incident, not one per event: {events:?}"
            );
            // The mirror thread works through its queue after the appends
            // were acknowledged: every one of them is eventually counted lost.
            wait_for("500 dropped entries", Duration::from_secs(10), || {
                matches!(status.health(), MirrorHealth::Degraded { dropped, .. } if dropped >= 500)
                    .then_some(())
            });
            writer.shutdown().unwrap();
            assert!(store.verify().unwrap().unwrap().events >= 501);
        }
        "stuck" => {
            // A journald that accepts the connection but never reads.
            let socket =
                std::os::unix::net::UnixDatagram::bind("/run/systemd/journal/socket").unwrap();
            let (_dir, store, writer, _status, _) = start(64);
            append_many(&writer.appender(), 5_000);
            let events = wait_for(
                "journal.mirror_degraded in the log",
                Duration::from_secs(10),
                || {
                    let ev = mirror_events(&store);
                    (!ev.is_empty()).then_some(ev)
                },
            );
            match &events[0] {
                Payload::JournalMirrorDegraded(d) => {
                    assert!(d.reason.contains("queue full"), "{}", d.reason)
                }
                other => panic!("{other:?}"),
            }
            // journald starts reading again: the mirror catches up and says so.
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while socket.recv(&mut buf).is_ok() {}
            });
            // Recovery shows once entries newer than the last loss get through,
            // so keep the system busy as it would be.
            let app = writer.appender();
            let events = wait_for(
                "journal.mirror_recovered in the log",
                Duration::from_secs(20),
                || {
                    app.append(routed(0)).unwrap();
                    let ev = mirror_events(&store);
                    ev.iter()
                        .any(|p| matches!(p, Payload::JournalMirrorRecovered(_)))
                        .then_some(ev)
                },
            );
            // One incident: degraded once, recovered once, no flapping while
            // the backlog queued before the loss drained.
            assert_eq!(events.len(), 2, "{events:?}");
            match events.last() {
                Some(Payload::JournalMirrorRecovered(r)) => assert!(r.dropped > 0),
                other => panic!("{other:?}"),
            }
            writer.shutdown().unwrap();
            assert!(store.verify().unwrap().is_ok());
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn shipped_catalog_is_current_and_journalctl_accepts_it() {
    let shipped_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog/con.catalog");
    let generated = catalog();
    if std::env::var_os("CON_BLESS").is_some() {
        std::fs::write(&shipped_path, &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(&shipped_path).unwrap();
    assert_eq!(
        shipped, generated,
        "catalog/con.catalog is stale: regenerate with CON_BLESS=1"
    );

    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("usr/lib/systemd/catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("con.catalog"), &shipped).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let update = Command::new("journalctl")
        .args([&root_arg, "--update-catalog"])
        .output()
        .unwrap();
    assert!(
        update.status.success() && update.stderr.is_empty(),
        "{update:?}"
    );
    let list = Command::new("journalctl")
        .args([&root_arg, "--list-catalog"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for kind in KINDS {
        let line = format!("{} con: {}", kind.message_id, kind.subject);
        assert!(list.contains(&line), "catalog lacks {line}\n{list}");
    }
    let line = format!("{BLOB_MESSAGE_ID} con: Attachment @CON_BLOB_DIGEST@");
    assert!(list.contains(&line), "catalog lacks {line}\n{list}");
}
