//! Replay and verification on a 1,000,000-event log, measured from outside
//! as whole processes with `hyperfine` (see BENCHMARKS.md):
//!
//! 1. one 200-event session replayed with `con replay --json` through the
//!    daemon, from the database directory (`--db`: a cold open of sled in
//!    every process) and from the log's journal copy (`--journal
//!    --directory`), against `journalctl --directory … CON_SESSION=… -o
//!    json` on the same journal files;
//! 2. `con verify` offline (`--db`) and through the daemon, as events/s
//!    (with `CON_BENCH_JOURNAL_VERIFY=1` also `journalctl --verify` on the
//!    journal copy, for reference: minutes here).
//!
//! The log is written by the real writer (`GroupCommitWriter`): 5,000
//! sessions of 200 events (`session.started`, 49 tool-loop iterations of
//! `llm.request`, `llm.response`, `tool.call`, `tool.result`, a last
//! request and response, `session.ended`), each after its task's
//! `inbox.arrived`, ten agents' sessions interleaved, a `contract.result`
//! about one of them every 2,000 events; every content is an attachment of
//! its own except each agent's prompt and request frame. Its journal copy
//! holds the entries the mirror sends (`con_journal::entry_for` and
//! `blob_entries`, with the fields journald adds), written as an export
//! stream into `systemd-journal-remote --output`, so `con replay --journal
//! --directory` and `journalctl -D` read the same files.
//!
//! Run as root: `cargo bench -p con --bench replay`. The data is made once
//! in `CON_BENCH_DIR` (default `/var/tmp/con-bench-replay`, about 4 GB for
//! 1M events) and reused by later runs; delete it when done.
//! `CON_BENCH_EVENTS` changes the log's size, `CON_BENCH_RUNS` hyperfine's
//! runs per command (default 10), `CON_BENCH_CON` the `con` binary
//! measured (default: this build's). The daemon runs in a private mount
//! namespace with a journald of its own, so nothing reaches the host's
//! journal. Needs `hyperfine` and `systemd-journal-remote`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use con_event::payloads::*;
use con_event::{Actor, BlobRef, Digest, Event, NewEvent, Payload, Priority, SessionId};
use con_journal::{BLOB_INLINE_MAX, JournalEntry, MirrorContext, blob_entries, entry_for};
use con_store::{GroupCommitWriter, Store, WriterConfig};
use con_test_support::Daemon;

const AGENTS: usize = 10;
/// Tool-loop iterations with a tool call; one more request and response
/// end each session.
const ITERATIONS: u32 = 49;
const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const USER_PREFIX: &str = "cbr-";

fn agent_name(i: usize) -> String {
    format!("agent{i}")
}

/// A text of about `len` bytes that is unique to `seed`.
fn text(seed: &str, len: usize) -> String {
    let mut s = String::with_capacity(len + 64);
    let mut n = 0u64;
    while s.len() < len {
        s.push_str(&format!("{seed} line {n}: lorem ipsum dolor sit amet\n"));
        n += 1;
    }
    s
}

/// One event to submit and the contents it references.
fn event(
    actor: Actor,
    session: Option<SessionId>,
    task: Option<&str>,
    payload: impl Into<Payload>,
    attachments: Vec<Vec<u8>>,
) -> NewEvent {
    NewEvent {
        actor,
        session,
        task: task.map(str::to_owned),
        causation: None,
        payload: payload.into(),
        attachments,
    }
}

/// The events of one agent's sessions, generated one at a time: the
/// generator needs the seq each event will get (requests continue earlier
/// ones), which the caller, the only appender, knows.
struct AgentStream {
    agent: String,
    uid: u32,
    prompt: Vec<u8>,
    frame: Vec<u8>,
    /// Sessions started so far.
    sessions: u64,
    session: SessionId,
    task: String,
    /// Next step of the current session (0: the arrival).
    step: u32,
    /// Seq and conversation length of the session's last request.
    last_request: Option<(u64, u32)>,
}

impl AgentStream {
    fn new(i: usize) -> Self {
        let agent = agent_name(i);
        Self {
            prompt: text(&format!("You are {agent}."), 2000).into_bytes(),
            frame: format!(
                "{{\"model\":\"bench-model\",\"tools\":[{}],\"messages\":}}",
                text(&format!("tool schema of {agent}"), 1500).escape_default()
            )
            .into_bytes(),
            uid: 10_000 + i as u32,
            agent,
            sessions: 0,
            session: SessionId::default(),
            task: String::new(),
            step: 0,
            last_request: None,
        }
    }

    fn actor(&self) -> Actor {
        Actor {
            uid: self.uid,
            agent: Some(self.agent.clone()),
        }
    }

    /// The next event; `seq` is the one it will be stored at. Also says
    /// when it is a session's `session.started` (its session id).
    fn next(&mut self, seq: u64) -> (NewEvent, Option<SessionId>) {
        let daemon = Actor::system();
        let s = Some(self.session);
        let tag = format!("{}-s{}-e{}", self.agent, self.sessions, self.step);
        let step = self.step;
        self.step += 1;
        if step == 0 {
            self.sessions += 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(self.uid as u64).to_be_bytes());
            id[8..].copy_from_slice(&self.sessions.to_be_bytes());
            self.session = SessionId(id);
            self.task = format!("task-{}-{:06}", self.agent, self.sessions);
            self.last_request = None;
            let content = text(&format!("task {}", self.task), 300).into_bytes();
            let payload = InboxArrived {
                inbox: self.agent.clone(),
                path: format!("/srv/con/agents/{}/inbox/{}.task", self.agent, self.task),
                owner_uid: 0,
                owner_gid: 0,
                mode: 0o100644,
                nlink: 1,
                dev: 2049,
                inode: seq,
                ctime_unix_nanos: 1_795_000_000_000_000_000,
                symlink: false,
                trust: Trust::Verified,
                trust_reason: String::new(),
                content: BlobRef::of(&content),
            };
            let task = self.task.clone();
            return (
                event(daemon, None, Some(&task), payload, vec![content]),
                None,
            );
        }
        let task = self.task.clone();
        let task = Some(task.as_str());
        if step == 1 {
            let payload = SessionStarted {
                agent: self.agent.clone(),
                runner: "builtin".into(),
                provider: Some("openrouter".into()),
                model: Some("bench-model".into()),
                trust: Trust::Verified,
                prompt: BlobRef::of(&self.prompt),
            };
            let ev = event(self.actor(), s, task, payload, vec![self.prompt.clone()]);
            return (ev, s);
        }
        let last = 2 + 4 * ITERATIONS;
        if step == last + 2 {
            let response = text(&format!("final answer {tag}"), 400).into_bytes();
            let payload = SessionEnded {
                agent: self.agent.clone(),
                outcome: Outcome::Ok,
                iterations: ITERATIONS + 1,
                duration_ms: 95_000,
                response: Some(BlobRef::of(&response)),
                detail: String::new(),
            };
            self.step = 0;
            return (event(self.actor(), s, task, payload, vec![response]), None);
        }
        let ev = match (step - 2) % 4 {
            0 => {
                // The messages new since the last request: the task, or the
                // assistant's tool call and the tool's output.
                let new: Vec<Vec<u8>> = match self.last_request {
                    None => vec![
                        format!("{{\"role\":\"user\",\"content\":\"{}\"}}", self.task).into_bytes(),
                    ],
                    Some(_) => vec![
                        format!("{{\"role\":\"assistant\",\"tool_call\":\"{tag}\"}}").into_bytes(),
                        format!(
                            "{{\"role\":\"tool\",\"content\":{:?}}}",
                            text(&format!("output {tag}"), 400)
                        )
                        .into_bytes(),
                    ],
                };
                let (continues, repeated) = match self.last_request {
                    None => (None, 0),
                    Some((seq, len)) => (Some(seq), len),
                };
                let payload = LlmRequest {
                    agent: self.agent.clone(),
                    provider: "openrouter".into(),
                    model: "bench-model".into(),
                    iteration: (step - 2) / 4 + 1,
                    frame: BlobRef::of(&self.frame),
                    messages_at: self.frame.len() as u64 - 1,
                    continues,
                    repeated,
                    messages: new.iter().map(|m| BlobRef::of(m)).collect(),
                };
                self.last_request = Some((seq, repeated + new.len() as u32));
                let mut attachments = new;
                attachments.push(self.frame.clone());
                event(daemon, s, task, payload, attachments)
            }
            1 => {
                let reply = text(&format!("reply {tag}"), 250).into_bytes();
                let payload = LlmResponse {
                    agent: self.agent.clone(),
                    provider: "openrouter".into(),
                    model: "bench-model".into(),
                    status: Some(200),
                    attempts: 1,
                    latency_ms: 900,
                    input_tokens: 5000,
                    output_tokens: 120,
                    cost_micro_usd: 700,
                    response: Some(BlobRef::of(&reply)),
                    error: None,
                };
                event(daemon, s, task, payload, vec![reply])
            }
            2 => {
                let arguments = format!("{{\"command\":\"ls -la /srv/{tag}\"}}").into_bytes();
                let payload = ToolCall {
                    call_id: tag.clone(),
                    tool: "exec".into(),
                    arguments: BlobRef::of(&arguments),
                };
                event(self.actor(), s, task, payload, vec![arguments])
            }
            _ => {
                let output = text(&format!("output {tag}"), 400).into_bytes();
                let payload = ToolResult {
                    call_id: tag.clone(),
                    tool: "exec".into(),
                    exit_code: Some(0),
                    duration_ms: 12,
                    output: BlobRef::of(&output),
                    truncated: false,
                    error: None,
                };
                event(self.actor(), s, task, payload, vec![output])
            }
        };
        (ev, None)
    }
}

/// What a generated data set is: kept in `<dir>/ready`.
struct Data {
    events: u64,
    session: SessionId,
    log_id: String,
}

impl Data {
    fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("ready")).ok()?;
        let mut lines = text.lines();
        Some(Self {
            events: lines.next()?.parse().ok()?,
            session: SessionId::from_hex(lines.next()?)?,
            log_id: lines.next()?.to_owned(),
        })
    }

    fn write(&self, dir: &Path) {
        std::fs::write(
            dir.join("ready"),
            format!(
                "{}\n{}\n{}\n",
                self.events,
                self.session.to_hex(),
                self.log_id
            ),
        )
        .unwrap();
    }
}

/// Writes the log: `target` events through the real writer.
fn generate_log(db: &Path, target: u64) -> (SessionId, String) {
    let store = Store::open(db).unwrap();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let appender = writer.appender();
    let mut agents: Vec<AgentStream> = (0..AGENTS).map(AgentStream::new).collect();
    let mut starts: Vec<SessionId> = Vec::new();
    let mut tickets = Vec::with_capacity(4096);
    let started = Instant::now();
    let mut seq = store.head().seq;
    let mut turn = 0usize;
    while seq < target {
        seq += 1;
        let ev = if seq.is_multiple_of(2000) {
            let agent = agent_name((seq / 2000) as usize % AGENTS);
            event(
                Actor::system(),
                None,
                None,
                ContractResult {
                    contract: "CON-SYS-001".into(),
                    check: "disk".into(),
                    scope_agent: Some(agent),
                    status: CheckStatus::Pass,
                    detail: "42% used".into(),
                    duration_ms: 3,
                },
                Vec::new(),
            )
        } else {
            let (ev, start) = agents[turn % AGENTS].next(seq);
            turn += 1;
            starts.extend(start);
            ev
        };
        tickets.push(appender.submit(ev));
        if tickets.len() == 4096 {
            for t in tickets.drain(..) {
                t.wait().unwrap();
            }
        }
    }
    for t in tickets.drain(..) {
        t.wait().unwrap();
    }
    writer.shutdown().unwrap();
    store.catch_up_indexes().unwrap();
    // A daemon started on this log mirrors only what it appends itself.
    store
        .set_marker(con_journal::MARKER, store.head().seq)
        .unwrap();
    store.flush().unwrap();
    eprintln!(
        "wrote {} events in {:.0} s",
        store.head().seq,
        started.elapsed().as_secs_f64()
    );
    // A whole session from the middle of the log.
    let session = starts[starts.len() / 2];
    (session, store.log_id().unwrap())
}

/// Appends `name=value` as the export format has it (binary form when the
/// value has a newline or other control bytes).
fn export_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.iter().any(|&b| b < b' ' && b != b'\t') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// One entry as journald would store what the mirror sends: the entry's own
/// fields, what `systemd-journal-logger` adds, and journald's trusted
/// fields.
fn export_entry(out: &mut Vec<u8>, entry: &JournalEntry, ts_nanos: i64, n: u64, host: &Host) {
    let us = (ts_nanos / 1000).to_string();
    export_field(out, "__REALTIME_TIMESTAMP", us.as_bytes());
    export_field(out, "__MONOTONIC_TIMESTAMP", n.to_string().as_bytes());
    export_field(out, "_BOOT_ID", host.boot_id.as_bytes());
    let priority = match entry.priority {
        Priority::Err => "3",
        Priority::Warning => "4",
        Priority::Notice => "5",
        Priority::Info => "6",
        Priority::Debug => "7",
    };
    export_field(out, "PRIORITY", priority.as_bytes());
    export_field(out, "MESSAGE", entry.message.as_bytes());
    export_field(out, "SYSLOG_PID", b"4242");
    export_field(out, "SYSLOG_IDENTIFIER", b"con");
    export_field(out, "TARGET", b"con");
    for (name, value) in &entry.fields {
        export_field(out, name, value.as_bytes());
    }
    for (name, value) in [
        ("_TRANSPORT", "journal"),
        ("_UID", "0"),
        ("_GID", "0"),
        ("_PID", "4242"),
        ("_COMM", "con"),
        ("_HOSTNAME", host.hostname.as_str()),
        ("_MACHINE_ID", host.machine_id.as_str()),
    ] {
        export_field(out, name, value.as_bytes());
    }
    out.push(b'\n');
}

struct Host {
    hostname: String,
    machine_id: String,
    boot_id: String,
}

/// Writes the journal copy of the log into `journal_dir` through
/// `systemd-journal-remote`, as the mirror would have sent it: each
/// attachment with the first event that references it.
fn generate_journal(db: &Path, journal_dir: &Path, log_id: &str) {
    std::fs::create_dir_all(journal_dir).unwrap();
    let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().replace('-', "");
    let host = Host {
        hostname: read("/proc/sys/kernel/hostname"),
        machine_id: read("/etc/machine-id"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
    };
    let ctx = MirrorContext {
        log_id: log_id.to_owned(),
        system: "bench".into(),
    };
    let mut remote = Command::new(JOURNAL_REMOTE)
        .arg(format!(
            "--output={}",
            journal_dir.join("con.journal").display()
        ))
        .args(["--split-mode=none", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start systemd-journal-remote");
    let mut stdin = std::io::BufWriter::with_capacity(1 << 20, remote.stdin.take().unwrap());
    let store = Store::open_for_inspection(db).unwrap();
    let mut mirrored: HashSet<Digest> = HashSet::new();
    let mut n = 0u64;
    let started = Instant::now();
    let mut out = Vec::with_capacity(64 * 1024);
    for event in store.events_from(1) {
        let event: Event = event.unwrap();
        let mut inline = Vec::new();
        let mut refs = event.payload.blob_refs();
        refs.sort_unstable();
        refs.dedup();
        for blob in refs {
            if !mirrored.insert(blob.digest) {
                continue;
            }
            let Some(content) = store.blob(&blob.digest).unwrap() else {
                continue;
            };
            if content.len() <= BLOB_INLINE_MAX {
                inline.push((blob.digest, content));
            } else {
                for part in blob_entries(&blob.digest, &content, &event, &ctx) {
                    n += 1;
                    export_entry(&mut out, &part, event.envelope.ts_unix_nanos, n, &host);
                }
            }
        }
        n += 1;
        let entry = entry_for(&event, &inline, &ctx).unwrap();
        export_entry(&mut out, &entry, event.envelope.ts_unix_nanos, n, &host);
        stdin.write_all(&out).unwrap();
        out.clear();
    }
    drop(stdin);
    assert!(
        remote.wait().unwrap().success(),
        "systemd-journal-remote failed"
    );
    eprintln!(
        "wrote {n} journal entries in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The data set in `dir` for `events` events, made if missing.
fn data(dir: &Path, events: u64) -> Data {
    if let Some(data) = Data::read(dir).filter(|d| d.events == events) {
        return data;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc/con")).unwrap();
    let mut config = String::from("[system]\nname = \"bench\"\n");
    for i in 0..AGENTS {
        config.push_str(&format!(
            "\n[[agents]]\nname = \"{}\"\ntier = \"worker\"\n",
            agent_name(i)
        ));
    }
    std::fs::write(root.join("etc/con/con.toml"), config).unwrap();
    let db = root.join("var/lib/con/events");
    std::fs::create_dir_all(&db).unwrap();
    let (session, log_id) = generate_log(&db, events);
    generate_journal(&db, &dir.join("journal"), &log_id);
    let data = Data {
        events,
        session,
        log_id,
    };
    data.write(dir);
    data
}

/// The `con` under test: this build's, or `CON_BENCH_CON` (another
/// build's, to compare on the same data).
fn con_bin() -> &'static str {
    static CON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CON.get_or_init(|| {
        std::env::var("CON_BENCH_CON").unwrap_or_else(|_| env!("CARGO_BIN_EXE_con").to_owned())
    })
}

fn con_cmd(root: &Path) -> Command {
    let mut c = Command::new(con_bin());
    c.arg("--root")
        .arg(root)
        .args(["--user-prefix", USER_PREFIX]);
    c
}

/// Runs `con` and returns its standard output; fails loudly.
fn stdout_of(mut c: Command) -> Vec<u8> {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `con …` as one shell-free command line for hyperfine.
fn line(args: &[&str]) -> String {
    args.join(" ")
}

/// hyperfine's mean and standard deviation (seconds) of each command
/// (`warmup` runs first; `runs` timed).
fn hyperfine(
    name: &str,
    (warmup, runs): (u32, u32),
    commands: &[(&str, String)],
    dir: &Path,
) -> Vec<(f64, f64)> {
    let json = dir.join(format!("hyperfine-{name}.json"));
    let mut c = Command::new("hyperfine");
    c.args(["--shell=none", "--output=null", "--style=basic"])
        .args(["--warmup", &warmup.to_string(), "--runs", &runs.to_string()])
        .arg("--export-json")
        .arg(&json);
    if name == "journal-verify" {
        // Its verdict on journal-remote's files is not what is measured.
        c.arg("--ignore-failure");
    }
    for (label, command) in commands {
        c.args(["--command-name", label, command]);
    }
    let status = c
        .status()
        .expect("run hyperfine (apt-get install hyperfine)");
    assert!(status.success(), "hyperfine failed");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["mean"].as_f64().unwrap(),
                r["stddev"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        / 1024
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let _journald = con_test_support::in_private_journald();
    let dir = PathBuf::from(
        std::env::var("CON_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/con-bench-replay".into()),
    );
    let events: u64 = std::env::var("CON_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runs: u32 = std::env::var("CON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let data = data(&dir, events);
    let root = dir.join("root");
    let db = root.join("var/lib/con/events");
    let journal = dir.join("journal");
    let (r, d, j) = (
        root.to_str().unwrap(),
        db.to_str().unwrap(),
        journal.to_str().unwrap(),
    );
    let session = data.session.to_hex();
    let con = |rest: &[&str]| {
        line(
            &[
                &[con_bin(), "--root", r, "--user-prefix", USER_PREFIX],
                rest,
            ]
            .concat(),
        )
    };
    eprintln!("load average before: {}", load());

    // The same session from every source, byte for byte, before timing.
    let from_db = stdout_of({
        let mut c = con_cmd(&root);
        c.args(["replay", "--json", "--db", d, &session]);
        c
    });
    let from_journal = stdout_of({
        let mut c = con_cmd(&root);
        c.args(["replay", "--json", "--journal", "--directory", j, &session]);
        c
    });
    assert_eq!(from_db, from_journal, "--db and --journal differ");
    let shown = from_db.iter().filter(|&&b| b == b'\n').count();
    let journalctl_session = line(&[
        "journalctl",
        "--no-pager",
        "-D",
        j,
        &format!("CON_SESSION={session}"),
        "-o",
        "json",
    ]);
    let offline = hyperfine(
        "offline",
        (2, runs),
        &[
            (
                "journalctl CON_SESSION= -o json",
                journalctl_session.clone(),
            ),
            (
                "con replay --json --db",
                con(&["replay", "--json", "--db", d, &session]),
            ),
            (
                "con replay --json --journal",
                con(&["replay", "--json", "--journal", "--directory", j, &session]),
            ),
            ("con verify --db", con(&["verify", "--db", d])),
        ],
        &dir,
    );
    // Minutes on 1M entries here: only when asked for.
    let journal_verify = std::env::var_os("CON_BENCH_JOURNAL_VERIFY").map(|_| {
        hyperfine(
            "journal-verify",
            (0, 1),
            &[(
                "journalctl --verify",
                line(&["journalctl", "--verify", "-q", "-D", j]),
            )],
            &dir,
        )[0]
    });

    // Through the daemon (which appends a few events of its own on start).
    let daemon = Daemon::start_with(
        con_bin(),
        &bench_root(&root),
        &["--supervisor", "systemd"],
        &[],
    );
    // The status view needs the fleet projection folded through the head
    // (the ledger is folded at start too, for its files): on a log without
    // their checkpoints, a fold of every event.
    let catch_up = answered_since(&root, Instant::now());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let rss_started = rss_mib(daemon.pid());
    let from_daemon = stdout_of({
        let mut c = con_cmd(&root);
        c.args(["replay", "--json", &session]);
        c
    });
    assert_eq!(
        from_daemon, from_db,
        "the daemon's replay differs from --db"
    );
    let live = hyperfine(
        "daemon",
        (2, runs),
        &[
            ("journalctl CON_SESSION= -o json", journalctl_session),
            (
                "con replay --json (daemon)",
                con(&["replay", "--json", &session]),
            ),
            ("con verify (daemon)", con(&["verify"])),
        ],
        &dir,
    );
    let rss_after = rss_mib(daemon.pid());
    drop(daemon);
    // Started again on the same log: the projections it folds at start
    // now have the checkpoints the first run saved (at start and at its
    // clean stop).
    let restart = Instant::now();
    let restarted = Daemon::start_with(
        con_bin(),
        &bench_root(&root),
        &["--supervisor", "systemd"],
        &[],
    );
    let restart = answered_since(&root, restart);
    drop(restarted);
    eprintln!("load average after: {}", load());

    let ms = |(mean, sd): (f64, f64)| format!("{:.1} ± {:.1} ms", mean * 1e3, sd * 1e3);
    let rate = |(mean, _): (f64, f64)| format!("{:.0} events/s", events as f64 / mean);
    println!(
        "one session ({shown} events shown) out of {events} events; journalctl baseline {} (offline run) / {} (daemon run)",
        ms(offline[0]),
        ms(live[0])
    );
    println!("| measurement | value | baseline (same run) | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `con replay --json` through the daemon | {} | journalctl {} | {:.2} |",
        ms(live[1]),
        ms(live[0]),
        live[1].0 / live[0].0
    );
    println!(
        "| `con replay --json --db` (cold open) | {} | journalctl {} | {:.2} |",
        ms(offline[1]),
        ms(offline[0]),
        offline[1].0 / offline[0].0
    );
    println!(
        "| `con replay --json --journal --directory` | {} | journalctl {} | {:.2} |",
        ms(offline[2]),
        ms(offline[0]),
        offline[2].0 / offline[0].0
    );
    match journal_verify {
        Some(jv) => println!(
            "| `con verify --db` | {} ({}) | `journalctl --verify` {} ({}) | {:.1} |",
            rate(offline[3]),
            ms(offline[3]),
            rate(jv),
            ms(jv),
            jv.0 / offline[3].0
        ),
        None => println!(
            "| `con verify --db` | {} ({}) | target 500,000 events/s | {:.2} |",
            rate(offline[3]),
            ms(offline[3]),
            events as f64 / offline[3].0 / 500_000.0
        ),
    }
    println!(
        "| `con verify` through the daemon | {} ({}) | `con verify --db` {} | {:.2} |",
        rate(live[2]),
        ms(live[2]),
        rate(offline[3]),
        live[2].0 / offline[3].0
    );
    println!(
        "daemon RSS on this log: {rss_started} MiB once started (status answered after {:.1} s), {rss_after} MiB after the runs above; started again, status answered after {:.1} s",
        catch_up.as_secs_f64(),
        restart.as_secs_f64()
    );
    println!("log id {}, session {session}", data.log_id);
}

/// How long after `since` the daemon on `root` first answered `con status`
/// (asked until it does, for at most 10 minutes).
fn answered_since(root: &Path, since: Instant) -> std::time::Duration {
    while !con_cmd(root)
        .arg("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(
            since.elapsed().as_secs() < 600,
            "no status after 10 minutes"
        );
    }
    since.elapsed()
}

/// A `Root`-like handle on the bench's own root directory, for `Daemon`.
fn bench_root(root: &Path) -> con_test_support::Root {
    con_test_support::Root::at(root, USER_PREFIX)
}
