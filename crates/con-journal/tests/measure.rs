//! Measurements against a private systemd-journald (not tests: run as root
//! with `cargo test --release -p con-journal --test measure -- --ignored
//! --nocapture --test-threads=1`; README.md quotes the limits).
//!
//! Each one re-executes this binary in a private mount namespace where a
//! journald of its own listens and stores on tmpfs, so other journal
//! traffic on the host neither disturbs the numbers nor sees the entries.
//!
//! - `mirror_throughput_and_journal_bytes`: events/s through the real mirror
//!   (back-fill of a store) with complete entries, against the entries con
//!   wrote before (attachments inlined when UTF-8 and ≤ 64 KiB, no record),
//!   sent from memory; and journal bytes per event for both.
//! - `journald_limits`: largest datagram, largest field and entry, field
//!   count, and what happens past them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // measurements fail loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use con_event::payloads::*;
use con_event::*;
use con_journal::*;
use con_store::*;
use systemd_journal_logger::JournalLog;

const CHILD_ENV: &str = "CON_JOURNAL_MEASURE";
const SOCKET: &str = "/run/systemd/journal/socket";

fn in_private_journald(what: &str) {
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "private_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, what)
        .status()
        .unwrap();
    assert!(status.success(), "{what} failed");
}

#[test]
#[ignore = "measurement; needs root"]
fn mirror_throughput_and_journal_bytes() {
    in_private_journald("mirror");
}

#[test]
#[ignore = "measurement; needs root"]
fn journald_limits() {
    in_private_journald("limits");
}

#[test]
#[ignore = "child of the measurements"]
fn private_child() {
    let Ok(what) = std::env::var(CHILD_ENV) else {
        return;
    };
    let journald = PrivateJournald::start();
    match what.as_str() {
        "mirror" => measure_mirror(journald.0.id()),
        "limits" => measure_limits(journald.0.id()),
        other => panic!("unknown measurement {other}"),
    }
    drop(journald);
}

struct PrivateJournald(Child);

impl PrivateJournald {
    fn start() -> Self {
        for dir in [
            "/run/systemd/journal",
            "/run/log/journal",
            "/var/log/journal",
        ] {
            std::fs::create_dir_all(dir).unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs", dir])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount tmpfs over {dir}");
        }
        let child = Command::new("/lib/systemd/systemd-journald")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !Path::new(SOCKET).exists() {
            assert!(start.elapsed() < Duration::from_secs(5), "journald socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for PrivateJournald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn journalctl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("journalctl")
        .arg("--no-pager")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "journalctl {args:?}: {out:?}");
    out.stdout
}

fn sync() {
    journalctl(&["--sync"]);
}

/// Bytes in use per journal file: the end of its last object (files grow
/// in 8 MiB steps). Header layout: systemd's journal-def.h
/// (`tail_object_offset` at byte 136; an object's size at byte 8 of its
/// header).
fn journal_files() -> HashMap<PathBuf, u64> {
    sync();
    let dir = std::fs::read_dir("/run/log/journal")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|f| {
            let path = f.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let le64 = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            assert_eq!(&bytes[..8], b"LPKSHHRH", "journal file signature");
            let tail = le64(136) as usize;
            (path, tail as u64 + le64(tail + 8).div_ceil(8) * 8)
        })
        .collect()
}

/// Measures journal growth from now on: a fresh file first, then
/// [`Growth::bytes`] counts what was appended to it and to any file
/// journald rotated to meanwhile (it rotates when its hash table fills),
/// without the fixed header and hash tables of each new file.
struct Growth {
    before: HashMap<PathBuf, u64>,
    empty_file: u64,
}

impl Growth {
    fn start() -> Self {
        journalctl(&["--rotate"]);
        let before = journal_files();
        let empty_file = before
            .iter()
            .find(|(p, _)| p.ends_with("system.journal"))
            .map(|(_, used)| *used)
            .unwrap();
        Self { before, empty_file }
    }

    fn bytes(&self) -> u64 {
        journal_files()
            .iter()
            .map(|(path, used)| used - self.before.get(path).copied().unwrap_or(self.empty_file))
            .sum()
    }
}

// ---------------------------------------------------------------- mirror

/// The instructions every session of an agent starts with.
fn agents_md() -> Vec<u8> {
    "You are the sysadmin agent. Keep the host healthy; explain each command.\n"
        .repeat(110)
        .into_bytes()
}

/// One session as the runner records it: started (the shared prompt), five
/// turns of model call, tool call and tool result (the conversation blob
/// grows each turn), ended.
fn session(n: u64) -> Vec<NewEvent> {
    let session = SessionId(uuid_like(n));
    let actor = Actor {
        uid: 1001,
        agent: Some("sysadmin".into()),
    };
    let event = |payload: Payload, attachments: Vec<Vec<u8>>| NewEvent {
        actor: actor.clone(),
        session: Some(session),
        task: Some(format!("20261207-{n:06}")),
        causation: None,
        payload,
        attachments,
    };
    let prompt = agents_md();
    let mut out = vec![event(
        SessionStarted {
            agent: "sysadmin".into(),
            runner: "builtin".into(),
            provider: Some("openrouter".into()),
            model: Some("anthropic/claude-sonnet-4.6".into()),
            trust: Trust::Verified,
            prompt: BlobRef::of(&prompt),
        }
        .into(),
        vec![prompt],
    )];
    let mut conversation = format!("{{\"session\":{n},\"messages\":[");
    for turn in 1..=5u32 {
        conversation.push_str(&format!(
            "{{\"role\":\"user\",\"content\":\"turn {turn}: {}\"}},",
            "check the disk and the services; ".repeat(12)
        ));
        let request = conversation.clone().into_bytes();
        let reply = format!(
            "{{\"tool_calls\":[{{\"id\":\"call-{n}-{turn}\",\"name\":\"exec\"}}],\"usage\":{turn}}}"
        )
        .into_bytes();
        let args = format!("{{\"command\":\"df -h /srv/{n}/{turn}\"}}").into_bytes();
        let output = format!(
            "Filesystem Size Used Avail Use% Mounted on\n{}",
            format!("/dev/vda{turn} 252G 25G 67G 27% /srv/{n}\n").repeat(40)
        )
        .into_bytes();
        out.push(event(
            LlmRequest {
                agent: "sysadmin".into(),
                provider: "openrouter".into(),
                model: "anthropic/claude-sonnet-4.6".into(),
                iteration: turn,
                frame: BlobRef::of(&request),
                messages_at: 0,
                continues: None,
                repeated: 0,
                messages: Vec::new(),
            }
            .into(),
            vec![request],
        ));
        out.push(event(
            LlmResponse {
                agent: "sysadmin".into(),
                provider: "openrouter".into(),
                model: "anthropic/claude-sonnet-4.6".into(),
                status: Some(200),
                attempts: 1,
                latency_ms: 1200,
                input_tokens: 2000 * u64::from(turn),
                output_tokens: 40,
                cost_micro_usd: 900,
                response: Some(BlobRef::of(&reply)),
                error: None,
            }
            .into(),
            vec![reply],
        ));
        out.push(event(
            ToolCall {
                call_id: format!("call-{n}-{turn}"),
                tool: "exec".into(),
                arguments: BlobRef::of(&args),
            }
            .into(),
            vec![args],
        ));
        out.push(event(
            ToolResult {
                call_id: format!("call-{n}-{turn}"),
                tool: "exec".into(),
                exit_code: Some(0),
                duration_ms: 15,
                output: BlobRef::of(&output),
                truncated: false,
                error: None,
            }
            .into(),
            vec![output],
        ));
    }
    out.push(event(
        SessionEnded {
            agent: "sysadmin".into(),
            outcome: Outcome::Ok,
            iterations: 5,
            duration_ms: 30_000,
            response: None,
            detail: String::new(),
        }
        .into(),
        vec![],
    ));
    out
}

fn uuid_like(n: u64) -> [u8; 16] {
    let mut id = [0x5e; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

/// A store holding `sessions` sessions, committed with no mirror.
fn workload(sessions: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let app = writer.appender();
    let tickets: Vec<Ticket> = (0..sessions)
        .flat_map(session)
        .map(|e| app.submit(e))
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
    writer.shutdown().unwrap();
    (dir, store)
}

fn context(store: &Store) -> MirrorContext {
    MirrorContext {
        log_id: store.log_id().unwrap(),
        system: "measure".into(),
    }
}

/// The entry con wrote per event before entries were complete records
/// (kept here verbatim for the comparison).
fn legacy_entry(event: &Event, attachments: &[Vec<u8>], ctx: &MirrorContext) -> JournalEntry {
    let env = &event.envelope;
    let spec = event.payload.spec();
    let mut fields: Vec<(&'static str, String)> = vec![
        ("MESSAGE_ID", spec.message_id.to_owned()),
        ("CON_SEQ", env.seq.to_string()),
        ("CON_EVENT", spec.journal_name()),
        ("CON_KIND_VERSION", env.kind_version.to_string()),
        ("CON_EVENT_ID", env.id.to_hex()),
        ("CON_TS_UNIX_NS", env.ts_unix_nanos.to_string()),
        ("CON_UID", env.actor.uid.to_string()),
    ];
    if let Some(actor) = &env.actor.agent {
        fields.push(("CON_ACTOR", actor.clone()));
    }
    if let Some(agent) = event.payload.subject_agent().or(env.actor.agent.as_deref()) {
        fields.push(("CON_AGENT", agent.to_owned()));
    }
    if let Some(s) = &env.session {
        fields.push(("CON_SESSION", s.to_hex()));
    }
    if let Some(t) = &env.task {
        fields.push(("CON_TASK", t.clone()));
    }
    if let Some(c) = env.causation {
        fields.push(("CON_CAUSATION", c.to_string()));
    }
    fields.push(("CON_HASH", event.hash.to_hex()));
    fields.push(("CON_PREV_HASH", env.prev_hash.to_hex()));
    if !ctx.log_id.is_empty() {
        fields.push(("CON_LOG_ID", ctx.log_id.clone()));
    }
    if !ctx.system.is_empty() {
        fields.push(("CON_SYSTEM", ctx.system.clone()));
    }
    event.payload.journal_fields(&mut fields);
    if let Ok(json) = serde_json::to_string(&event.payload) {
        fields.push(("CON_PAYLOAD", json));
    }
    for blob in attachments {
        if blob.len() <= 64 * 1024
            && let Ok(text) = std::str::from_utf8(blob)
        {
            let digest = Digest::of(blob);
            fields.push(("CON_BLOB", format!("sha256:{digest} {text}")));
        }
    }
    JournalEntry {
        priority: event.payload.priority(),
        message: event.payload.message(),
        fields,
    }
}

/// Events with the attachments they were submitted with, as the old mirror
/// had them in its queue.
fn in_memory(store: &Store) -> Vec<(Event, Vec<Vec<u8>>)> {
    store
        .events_from(1)
        .map(|e| {
            let e = e.unwrap();
            let blobs = e
                .payload
                .blob_refs()
                .iter()
                .filter_map(|r| store.blob(&r.digest).unwrap())
                .collect();
            (e, blobs)
        })
        .collect()
}

/// Sends the old entries; returns the seconds until journald has written
/// them.
fn run_legacy(store: &Store) -> f64 {
    let events = in_memory(store);
    let ctx = context(store);
    let journal = JournalLog::empty()
        .unwrap()
        .with_syslog_identifier("con".into());
    let start = Instant::now();
    for (event, blobs) in &events {
        legacy_entry(event, blobs, &ctx).send(&journal).unwrap();
    }
    sync();
    start.elapsed().as_secs_f64()
}

/// Sends complete entries formatted from memory (each content once, with
/// its first reference), without the mirror's store reads: the part of the
/// difference that is journald's.
fn run_complete_in_memory(store: &Store) -> f64 {
    let events = in_memory(store);
    let ctx = context(store);
    let journal = JournalLog::empty()
        .unwrap()
        .with_syslog_identifier("con".into());
    let mut sent = std::collections::HashSet::new();
    let start = Instant::now();
    for (event, blobs) in &events {
        let mut inline = Vec::new();
        for blob in blobs {
            let digest = Digest::of(blob);
            if !sent.insert(digest) {
                continue;
            }
            if blob.len() <= BLOB_INLINE_MAX {
                inline.push((digest, blob.clone()));
            } else {
                for e in blob_entries(&digest, blob, event, &ctx) {
                    e.send(&journal).unwrap();
                }
            }
        }
        entry_for(event, &inline, &ctx)
            .unwrap()
            .send(&journal)
            .unwrap();
    }
    sync();
    start.elapsed().as_secs_f64()
}

/// Back-fills the store through the real mirror; returns the seconds until
/// journald has written everything.
fn run_mirror(store: &Store) -> f64 {
    let head = store.head().seq;
    let start = Instant::now();
    let (mirror, status) = JournalMirror::spawn(
        MirrorConfig {
            queue_capacity: 1024,
            context: context(store),
        },
        store.clone(),
    )
    .unwrap();
    while store.marker(MARKER).unwrap() < head {
        std::thread::sleep(Duration::from_millis(1));
    }
    sync();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(status.health(), MirrorHealth::Healthy);
    drop(mirror);
    secs
}

/// Bytes of an entry as sent through the native protocol, as
/// systemd-journal-logger 2.2.2 encodes it: `PRIORITY`, `SYSLOG_PID`,
/// `SYSLOG_IDENTIFIER` and `TARGET` as `NAME=value\n`, `MESSAGE` and every
/// key-value field length-prefixed (`NAME\n`, 8 bytes, value, `\n`).
fn field_bytes(entry: &JournalEntry) -> usize {
    let plain = "PRIORITY=5\n".len()
        + "SYSLOG_PID=12345\n".len()
        + "SYSLOG_IDENTIFIER=con\n".len()
        + "TARGET=con\n".len();
    let framed = |name: &str, value: &str| name.len() + 1 + 8 + value.len() + 1;
    plain
        + framed("MESSAGE", &entry.message)
        + entry
            .fields
            .iter()
            .map(|(k, v)| framed(k, v))
            .sum::<usize>()
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    // CLK_TCK is 100 on Linux.
    ticks as f64 / 100.0
}

/// Wall seconds of `run`, and CPU seconds per 1000 events of this process
/// and of journald meanwhile (the machine is shared: CPU time is the
/// steadier figure).
fn timed(journald: u32, n: u64, run: impl FnOnce() -> f64) -> (f64, f64, f64) {
    let j = journald.to_string();
    let (me0, j0) = (cpu_seconds("self"), cpu_seconds(&j));
    let wall = run();
    let (me1, j1) = (cpu_seconds("self"), cpu_seconds(&j));
    let per_k = |d: f64| d * 1e6 / n as f64;
    (n as f64 / wall, per_k(me1 - me0), per_k(j1 - j0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure_mirror(journald: u32) {
    const SESSIONS: u64 = 300;
    const ROUNDS: usize = 5;
    let events_per_session = session(0).len() as u64;
    let n = SESSIONS * events_per_session;
    println!(
        "workload: {SESSIONS} sessions x {events_per_session} events = {n} events (a shared 8 KiB prompt; per turn a growing conversation, a reply, tool arguments, a 2 KiB tool output)"
    );

    // Old and new alternate, each on a fresh store.
    let mut legacy = Vec::new();
    let mut from_memory = Vec::new();
    let mut complete = Vec::new();
    let mut legacy_bytes = Vec::new();
    let mut complete_bytes = Vec::new();
    for _ in 0..ROUNDS {
        let (_d, store) = workload(SESSIONS);
        let growth = Growth::start();
        legacy.push(timed(journald, n, || run_legacy(&store)));
        legacy_bytes.push(growth.bytes() as f64 / n as f64);

        let (_d, store) = workload(SESSIONS);
        from_memory.push(timed(journald, n, || run_complete_in_memory(&store)));

        let (_d, store) = workload(SESSIONS);
        let growth = Growth::start();
        complete.push(timed(journald, n, || run_mirror(&store)));
        complete_bytes.push(growth.bytes() as f64 / n as f64);
        // Everything it wrote is a complete record.
        let log_id = store.log_id().unwrap();
        let rebuilt = rebuild_from_export(
            &journalctl(&["-o", "export", &format!("CON_LOG_ID={log_id}")])[..],
        )
        .unwrap();
        let events = &rebuilt.logs[&log_id];
        assert_eq!(events.len() as u64, n);
        verify_chain(events).unwrap();
        assert!(rebuilt.missing_blobs(&log_id).is_empty());
    }
    let summary = |runs: &[(f64, f64, f64)]| {
        (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
            median(runs.iter().map(|r| r.2).collect()),
        )
    };
    let (l, m, c) = (summary(&legacy), summary(&from_memory), summary(&complete));
    println!(
        "medians of {ROUNDS} alternating rounds: events/s (wall clock), CPU ms per 1000 events in con / in journald"
    );
    for (name, (rate, me, j)) in [
        (
            "before: old entries from memory (UTF-8 attachments <= 64 KiB inlined per event)",
            l,
        ),
        ("after: complete entries from memory", m),
        (
            "after: complete entries through the real mirror (back-fill from the store)",
            c,
        ),
    ] {
        println!("  {name}: {rate:.0} events/s; {me:.0} ms / {j:.0} ms");
    }
    println!(
        "  rates per round: before {:.0?}, from memory {:.0?}, mirror {:.0?}",
        legacy.iter().map(|r| r.0).collect::<Vec<_>>(),
        from_memory.iter().map(|r| r.0).collect::<Vec<_>>(),
        complete.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    println!(
        "  after/before: wall clock {:.2} (mirror) {:.2} (from memory); CPU con+journald {:.2} (mirror) {:.2} (from memory)",
        c.0 / l.0,
        m.0 / l.0,
        (l.1 + l.2) / (c.1 + c.2),
        (l.1 + l.2) / (m.1 + m.2)
    );
    let (lb, cb) = (median(legacy_bytes), median(complete_bytes));
    println!(
        "journal file growth per event of this workload: before {lb:.0} B, after {cb:.0} B ({:.2}x)",
        cb / lb
    );

    // A typical small event, alone: its fields as sent, and the journal
    // growth over many of them.
    let (_d, store) = workload(1);
    let ctx = context(&store);
    for kind in ["tool.call", "session.ended"] {
        let event = store
            .events_from(1)
            .map(Result::unwrap)
            .find(|e| e.payload.spec().name == kind)
            .unwrap();
        let blobs: Vec<Vec<u8>> = event
            .payload
            .blob_refs()
            .iter()
            .filter_map(|r| store.blob(&r.digest).unwrap())
            .collect();
        let before = field_bytes(&legacy_entry(&event, &blobs, &ctx));
        let inline: Vec<(Digest, Vec<u8>)> = event
            .payload
            .blob_refs()
            .iter()
            .map(|r| r.digest)
            .zip(blobs.iter().cloned())
            .collect();
        let after = field_bytes(&entry_for(&event, &inline, &ctx).unwrap());
        println!(
            "{kind} (record {} B, attachments {} B, first reference): bytes sent before {before} B, after {after} B",
            event.envelope.encode_record().unwrap().len(),
            blobs.iter().map(Vec::len).sum::<usize>()
        );
    }
    // Journal growth for 20,000 small events without attachments.
    let small = |i: u64| {
        NewEvent::system(TaskRouted {
            from: "outer".into(),
            to: "concierge".into(),
            path: format!("/srv/con/agents/concierge/inbox/20261207-{i:06}.task"),
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let tickets: Vec<Ticket> = (0..20_000)
        .map(|i| writer.appender().submit(small(i)))
        .collect();
    for t in tickets {
        t.wait().unwrap();
    }
    writer.shutdown().unwrap();
    let growth = Growth::start();
    run_legacy(&store);
    let l = growth.bytes() as f64 / 20_000.0;
    let (_d2, store2) = {
        let dir = tempfile::tempdir().unwrap();
        let store2 = Store::open(&dir.path().join("log")).unwrap();
        let writer =
            GroupCommitWriter::spawn(store2.clone(), WriterConfig::default(), None).unwrap();
        let tickets: Vec<Ticket> = (0..20_000)
            .map(|i| writer.appender().submit(small(i)))
            .collect();
        for t in tickets {
            t.wait().unwrap();
        }
        writer.shutdown().unwrap();
        (dir, store2)
    };
    let growth = Growth::start();
    run_mirror(&store2);
    let c = growth.bytes() as f64 / 20_000.0;
    let event = store.get(1).unwrap().unwrap();
    println!(
        "task.routed (record {} B), 20,000 of them: journal file growth per event before {l:.0} B, after {c:.0} B (+{:.0} B); bytes sent before {} B, after {} B",
        event.envelope.encode_record().unwrap().len(),
        c - l,
        field_bytes(&legacy_entry(&event, &[], &context(&store))),
        field_bytes(&entry_for(&event, &[], &context(&store)).unwrap()),
    );
}

// ---------------------------------------------------------------- limits

fn send_probe(journal: &JournalLog, run: &str, n: &str, fields: &[(String, String)]) -> String {
    let mut kvs: Vec<(&str, &str)> = vec![("PROBE_RUN", run), ("PROBE_N", n)];
    kvs.extend(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let kvs = kvs.as_slice();
    let result = journal.journal_send(
        &log::Record::builder()
            .level(log::Level::Info)
            .target("probe")
            .args(format_args!("probe {n}"))
            .key_values(&kvs)
            .build(),
    );
    format!("{result:?}")
}

/// Per `PROBE_N` of the run: the `PROBE_V` lengths stored and the number of
/// fields of the entry.
fn stored(run: &str) -> Vec<(String, usize, usize)> {
    sync();
    read_export(&journalctl(&["-o", "export", &format!("PROBE_RUN={run}")])[..])
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8(e.get("PROBE_N").unwrap().to_vec()).unwrap(),
                e.get("PROBE_V").map_or(0, <[u8]>::len),
                e.fields.len(),
            )
        })
        .collect()
}

fn incompressible(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [(x % 64) as usize],
            )
        })
        .collect()
}

fn measure_limits(journald: u32) {
    let journal = JournalLog::empty().unwrap();

    // The largest datagram the socket takes (beyond it the logger falls
    // back to a memfd): bisect with plain datagrams.
    let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let (mut ok, mut too_big) = (1usize, 8 << 20);
    while too_big - ok > 1 {
        let mid = (ok + too_big) / 2;
        let mut msg = b"PROBE_RUN=dgram\nPROBE_V=".to_vec();
        msg.resize(mid - 1, b'x');
        msg.push(b'\n');
        match socket.send_to(&msg, SOCKET) {
            Ok(_) => ok = mid,
            Err(e) if e.raw_os_error() == Some(90) => too_big = mid, // EMSGSIZE
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "largest datagram: {ok} bytes (net.core.wmem_default {})",
        std::fs::read_to_string("/proc/sys/net/core/wmem_default")
            .unwrap()
            .trim()
    );

    // Field and entry size through systemd-journal-logger (memfd past the
    // datagram size).
    let sizes = [
        64 * 1024,
        212_000,
        300 * 1024,
        1 << 20,
        16 << 20,
        64 << 20,
        120 << 20,
        127 << 20,
        129 << 20,
        200 << 20,
    ];
    let mut results = Vec::new();
    for size in sizes {
        let value = incompressible(size);
        let result = send_probe(
            &journal,
            "size",
            &size.to_string(),
            &[("PROBE_V".into(), value)],
        );
        results.push((size, result));
    }
    let got = stored("size");
    for (size, result) in results {
        let kept = got.iter().find(|(n, _, _)| *n == size.to_string());
        println!(
            "field of {size} bytes: send {result}, stored: {}",
            kept.map_or("no".into(), |(_, len, _)| format!("yes, {len} bytes"))
        );
    }
    println!(
        "journald's own log: {}",
        String::from_utf8_lossy(&journalctl(&[
            "-t",
            "systemd-journald",
            &format!("SYSLOG_PID={journald}"),
            "-o",
            "cat"
        ]))
        .lines()
        .filter(|l| l.contains("max") || l.contains("too long") || l.contains("Failed"))
        .collect::<Vec<_>>()
        .join(" | ")
    );

    // Fields per entry: the logger adds PRIORITY, MESSAGE, SYSLOG_PID,
    // TARGET, plus PROBE_RUN and PROBE_N here.
    for extra in [1018usize, 1019, 1020, 2000] {
        let fields: Vec<(String, String)> = (0..extra)
            .map(|i| (format!("PROBE_F{i}"), "x".into()))
            .collect();
        let result = send_probe(&journal, "fields", &extra.to_string(), &fields);
        let got = stored("fields");
        let kept = got.iter().find(|(n, _, _)| *n == extra.to_string());
        println!(
            "entry with {} fields from the client: send {result}, stored: {}",
            extra + 6,
            kept.map_or("no".into(), |(_, _, n)| format!(
                "yes ({n} fields with journald's own)"
            ))
        );
    }

    // How journalctl shows big and binary values.
    for n in [4087usize, 4088] {
        send_probe(
            &journal,
            "json",
            &n.to_string(),
            &[("PROBE_V".into(), "a".repeat(n))],
        );
    }
    send_probe(
        &journal,
        "json",
        "control",
        &[("PROBE_V".into(), "a\u{1}b".into())],
    );
    send_probe(
        &journal,
        "json",
        "newline",
        &[("PROBE_V".into(), "a\nb".into())],
    );
    sync();
    for all in [false, true] {
        let mut args = vec!["-o", "json", "PROBE_RUN=json"];
        if all {
            args.push("--all");
        }
        for line in String::from_utf8(journalctl(&args)).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let shown = match &v["PROBE_V"] {
                serde_json::Value::String(s) => format!("string of {} bytes", s.len()),
                serde_json::Value::Array(a) => format!("array of {} numbers", a.len()),
                other => other.to_string(),
            };
            println!(
                "-o json{}: PROBE_V ({}): {shown}",
                if all { " --all" } else { "" },
                v["PROBE_N"]
            );
        }
    }
    let export = journalctl(&["-o", "export", "PROBE_RUN=json"]);
    for entry in read_export(&export[..]) {
        let e = entry.unwrap();
        let n = String::from_utf8_lossy(e.get("PROBE_N").unwrap()).into_owned();
        println!(
            "-o export: PROBE_V ({n}): {} bytes",
            e.get("PROBE_V").unwrap().len()
        );
    }
    let text = String::from_utf8_lossy(&export);
    println!(
        "-o export writes the control/newline values in binary form: {}",
        !text.contains("PROBE_V=a\u{1}b") && text.contains("PROBE_V\n")
    );
}
