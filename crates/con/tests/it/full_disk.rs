//! The daemon on a full disk, black-box: the state directory of a test's
//! root is a small tmpfs of its own, filled up with a filler file while the
//! real daemon runs. Appends are refused with one clear line, everything
//! acknowledged before is still there, no run starts and no session opens,
//! and once the filler is gone the daemon records again by itself (no
//! restart), records the outage, and the waiting task is answered.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use con_event::payloads::ProvisionApplied;
use con_event::{Digest, Payload};
use con_protocol::{Client, ClientError, ErrorCode};
use con_test_support::{Tmpfs, all_events, client_event};

use crate::CON;
use crate::runs::{Conspiracy, agent, ok, wait_for};

const MIB: u64 = 1024 * 1024;

/// An echoing worker (the exec runner: no model) on a root whose
/// `var/lib/con` is a 24 MiB tmpfs, mounted before the daemon starts.
fn echo_host(extra_system: &str) -> (Conspiracy, Tmpfs) {
    let c = Conspiracy::new(
        "openai-compatible",
        "http://127.0.0.1:9",
        &[agent("echo", "worker", "runner = \"exec:cat\"")],
    );
    if !extra_system.is_empty() {
        let config = c.root.path().join("etc/con/con.toml");
        let mut toml = std::fs::read_to_string(&config).unwrap();
        toml.push_str(&format!("\n[contracts.system]\n{extra_system}\n"));
        std::fs::write(&config, toml).unwrap();
    }
    let fs = Tmpfs::mount(&c.root.path().join("var/lib/con"), 24);
    (c, fs)
}

/// An operator's event carrying `n`, with a small attachment.
fn operator_event(n: u64) -> con_protocol::ClientEvent {
    let steps = format!("step {n} ").repeat(40).into_bytes();
    let mut event = client_event(
        ProvisionApplied {
            command: format!("full-disk {n}"),
            changes: 0,
            failed: vec![],
            disabled_agents: vec![],
            steps: con_event::BlobRef::of(&steps),
        }
        .into(),
        None,
    );
    event.attachments.push(steps);
    event
}

/// Appends operator events until one is refused: the acknowledged
/// (seq, hash) pairs and the refusal.
fn append_until_refused(socket: &Path, from: u64) -> (Vec<(u64, Digest)>, ErrorCode, String) {
    let mut client = Client::connect(socket).unwrap();
    let mut acked = Vec::new();
    for n in from.. {
        match client.append(operator_event(n)) {
            Ok(ack) => acked.push(ack),
            Err(ClientError::Refused { code, message }) => return (acked, code, message),
            Err(e) => panic!("append {n}: {e}"),
        }
        assert!(n < from + 1_000_000, "never refused");
    }
    unreachable!()
}

fn status_json(c: &Conspiracy) -> serde_json::Value {
    let out = Command::new(CON)
        .args(c.root.con_flags())
        .args(["status", "--json"])
        .output()
        .unwrap();
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn con_verify(c: &Conspiracy) -> String {
    let out = Command::new(CON)
        .args(c.root.con_flags())
        .arg("verify")
        .output()
        .unwrap();
    ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every event acknowledged is in the log with the hash it was
/// acknowledged with.
fn all_still_there(c: &Conspiracy, acked: &[(u64, Digest)]) {
    let events = all_events(&c.root.socket());
    for (seq, hash) in acked {
        let event = events
            .iter()
            .find(|e| e.seq() == *seq)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} is gone"));
        assert_eq!(&event.hash, hash, "seq {seq} changed");
    }
}

/// The log's outage records: (degraded, recovered).
fn outage_records(
    c: &Conspiracy,
) -> (
    con_event::payloads::LogDegraded,
    con_event::payloads::LogRecovered,
) {
    let events = all_events(&c.root.socket());
    let degraded = events.iter().find_map(|e| match &e.payload {
        Payload::LogDegraded(d) => Some(d.clone()),
        _ => None,
    });
    let recovered = events.iter().find_map(|e| match &e.payload {
        Payload::LogRecovered(r) => Some(r.clone()),
        _ => None,
    });
    (
        degraded.expect("log.degraded recorded"),
        recovered.expect("log.recovered recorded"),
    )
}

fn assert_refusal(c: &Conspiracy, code: ErrorCode, message: &str) {
    assert_eq!(code, ErrorCode::Unavailable, "{message}");
    let db = c.root.db();
    assert!(
        message.starts_with(&format!(
            "the event log at {} cannot record: no space left on device (",
            db.display()
        )) && message.contains(" MiB free")
            && !message.contains('\n'),
        "{message}"
    );
}

#[test]
fn on_a_full_disk_nothing_starts_and_the_daemon_records_again_by_itself() {
    let (c, fs) = echo_host("");
    let _daemon = c.supervising_daemon();
    let response = |task: &str| {
        c.agent_dir("echo", "outbox")
            .join(format!("{task}.response"))
    };
    // Working: a task is answered.
    c.task("echo", "t-before", "before the disk filled up");
    wait_for("the first answer", Duration::from_secs(30), || {
        response("t-before").exists()
    });
    let mut acked = Vec::new();
    let mut client = Client::connect(&c.root.socket()).unwrap();
    for n in 0..20 {
        acked.push(client.append(operator_event(n)).unwrap());
    }

    // Full: 3 MiB left, below the 8 MiB the daemon keeps free by default.
    let filler = fs.fill("filler", 3 * MIB);
    let (more, code, message) = append_until_refused(&c.root.socket(), 100);
    acked.extend(more);
    assert_refusal(&c, code, &message);
    assert!(
        message.ends_with(" MiB free, 8.0 MiB kept free)"),
        "{message}"
    );
    // Shown in `con status` while it lasts (text and JSON).
    let view = status_json(&c);
    assert_eq!(view["recording"]["state"], "not_recording", "{view}");
    assert!(
        view["recording"]["reason"]
            .as_str()
            .unwrap()
            .contains("no space left on device"),
        "{view}"
    );
    let text = Command::new(CON)
        .args(c.root.con_flags())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("NOT RECORDING:  since ") && text.contains("no space left on device"),
        "{text}"
    );
    // A task dropped meanwhile starts no run.
    c.task("echo", "t-during", "while the disk is full");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !response("t-during").exists(),
        "a run started while the log could not record"
    );
    assert!(c.agent_dir("echo", "inbox").join("t-during.task").exists());
    let head_during = view["log"]["head_seq"].as_u64().unwrap();

    // Space returns: no restart.
    std::fs::remove_file(filler).unwrap();
    let back = Instant::now();
    wait_for("appends to work again", Duration::from_secs(10), || {
        Client::connect(&c.root.socket())
            .unwrap()
            .append(operator_event(1_000_000))
            .is_ok()
    });
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "{:?}",
        back.elapsed()
    );
    wait_for("the waiting task's answer", Duration::from_secs(30), || {
        response("t-during").exists()
    });
    let answer = std::fs::read_to_string(response("t-during")).unwrap();
    assert!(answer.contains("while the disk is full"), "{answer}");
    assert_eq!(status_json(&c)["recording"]["state"], "recording");
    all_still_there(&c, &acked);
    let (degraded, recovered) = outage_records(&c);
    assert!(
        degraded.reason.contains("no space left on device"),
        "{degraded:?}"
    );
    assert!(recovered.refused >= 1, "{recovered:?}");
    assert!(!recovered.reopened, "refused before sled met the full disk");
    // Nothing refused was stored: the outage's records come right after
    // the head the status showed while it lasted.
    let events = all_events(&c.root.socket());
    let kind_at = |seq: u64| {
        events
            .iter()
            .find(|e| e.seq() == seq)
            .map(|e| e.payload.spec().name)
    };
    assert_eq!(kind_at(head_during + 1), Some("log.degraded"));
    assert_eq!(kind_at(head_during + 2), Some("log.recovered"));
    let verified = con_verify(&c);
    assert!(verified.contains(": chain ok: "), "{verified}");
}

/// Under systemd a path unit starts `con run` whenever a task waits: the
/// run must open no session while the log cannot record. Here sled itself
/// meets the full disk (`log_min_free_mb = 0`), so the daemon reopens the
/// log in place once space returns.
#[test]
fn a_run_opens_no_session_until_the_log_records_and_sled_s_own_enospc_is_survived() {
    let (c, fs) = echo_host("log_min_free_mb = 0");
    let _daemon = c.daemon();
    let filler = fs.fill("filler", MIB);
    let (acked, code, message) = append_until_refused(&c.root.socket(), 0);
    assert!(!acked.is_empty());
    assert_refusal(&c, code, &message);
    assert!(message.ends_with(" MiB free)"), "{message}");
    assert!(
        fs.free_bytes() < MIB / 2,
        "sled wrote until the disk was full"
    );

    // A run started now (as a path unit would) waits and touches nothing.
    let task = c.task("echo", "t-wait", "answered after the disk has room");
    let mut run = c
        .run_command("echo", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    if let Some(status) = run.try_wait().unwrap() {
        let mut stderr = String::new();
        run.stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        panic!("the run did not wait: {status:?}: {stderr}");
    }
    assert!(task.exists(), "the task was touched");
    assert!(
        !c.agent_dir("echo", "outbox")
            .join("t-wait.response")
            .exists(),
        "answered without a record"
    );

    std::fs::remove_file(filler).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the run still waits"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("cannot record: no space left on device")
            && stderr.contains("waiting until it records again"),
        "{stderr}"
    );
    let answer =
        std::fs::read_to_string(c.agent_dir("echo", "outbox").join("t-wait.response")).unwrap();
    assert!(
        answer.contains("answered after the disk has room"),
        "{answer}"
    );
    all_still_there(&c, &acked);
    let (_, recovered) = outage_records(&c);
    assert!(recovered.reopened, "{recovered:?}");
    // One session, opened after the log recorded again.
    let events = all_events(&c.root.socket());
    let recovered_at = events
        .iter()
        .find(|e| matches!(e.payload, Payload::LogRecovered(_)))
        .unwrap()
        .seq();
    let sessions: Vec<u64> = events
        .iter()
        .filter(|e| matches!(e.payload, Payload::SessionStarted(_)))
        .map(|e| e.seq())
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions[0] > recovered_at);
    let verified = con_verify(&c);
    assert!(verified.contains(": chain ok: "), "{verified}");
}
