//! Agent runs, measured side by side in one run (see BENCHMARKS.md):
//!
//! 1. runner overhead per tool-loop iteration: one `con run` session of 100
//!    iterations (each a model call answered at once by the scripted server
//!    plus a `list_dir` tool call), wall time minus the time the daemon
//!    spent in model calls (`llm.response` latency), per iteration — against
//!    the model-call latency itself as the baseline;
//! 2. end to end: a task renamed into an agent's inbox → its response file,
//!    for a one-call task, with the daemon supervising (p50/p99) — against
//!    the model-call latency of the same sessions;
//! 3. what one long session adds to the record: 200 tool-loop iterations
//!    whose `exec` outputs are 4 KiB each, bytes added to the event log
//!    (records + distinct blobs, and the database directory on disk) and to
//!    the journal (`journalctl -o export` of the log's entries) — against
//!    the sum of the distinct conversation message bytes.
//!
//! Run as root: `cargo bench -p con --bench runs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use con_event::{Event, Payload};
use con_llm_script::{ScriptedServer, Step};

use con_test_support::{Daemon, Root, TestUser, all_events};

const CON: &str = env!("CARGO_BIN_EXE_con");
const ITERATIONS: usize = 100;
const SAMPLES: usize = 30;

struct Setup {
    root: Root,
    user: TestUser,
}

fn setup(base_url: &str) -> Setup {
    let root = Root::new();
    let user = TestUser::create(&root.user("bench"));
    std::fs::write(
        root.path().join("etc/con/con.toml"),
        format!(
            "[base]\nprovider = \"openai-compatible\"\nmodel = \"bench\"\nbase_url = \"{base_url}\"\nmax_iterations = 1000\n\n[[agents]]\nname = \"bench\"\ntier = \"operator\"\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("srv/con/inbox")).unwrap();
    let base = root.path().join("srv/con/agents/bench");
    for sub in ["", "inbox", "outbox", "processed", "workspace", "sessions"] {
        let d = base.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        user.chown(&d);
    }
    Setup { root, user }
}

fn daemon(setup: &Setup, supervise: bool) -> Daemon {
    let supervisor = if supervise { "daemon" } else { "systemd" };
    Daemon::start_with(CON, &setup.root, &["--supervisor", supervisor], &[])
}

fn events(setup: &Setup) -> Vec<Event> {
    all_events(&setup.root.socket())
}

fn model_latencies_ms(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::LlmResponse(r) => Some(r.latency_ms),
            _ => None,
        })
        .collect()
}

fn drop_task(setup: &Setup, id: &str) -> PathBuf {
    let inbox = setup.root.path().join("srv/con/agents/bench/inbox");
    std::fs::write(inbox.join(format!(".{id}.tmp")), "ping").unwrap();
    std::fs::rename(
        inbox.join(format!(".{id}.tmp")),
        inbox.join(format!("{id}.task")),
    )
    .unwrap();
    setup
        .root
        .path()
        .join(format!("srv/con/agents/bench/outbox/{id}.response"))
}

/// `con run bench` as the agent's user, to the end of its inbox.
fn run_agent(bench: &Setup) {
    let out = bench
        .user
        .command(CON)
        .args([
            "--root",
            bench.root.path().to_str().unwrap(),
            "--user-prefix",
            bench.root.user_prefix(),
            "run",
            "bench",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes of every entry of this log in the journal, as `journalctl -o
/// export` prints them (0 when journald is not running).
fn journal_bytes(log_id: &str) -> u64 {
    let _ = Command::new("journalctl").arg("--sync").status();
    Command::new("journalctl")
        .args(["-o", "export", &format!("CON_LOG_ID={log_id}")])
        .output()
        .map(|o| o.stdout.len() as u64)
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

const LONG_SESSION: usize = 200;

/// 3. One session of `LONG_SESSION` iterations with 4 KiB tool outputs.
fn long_session_record() {
    let model = ScriptedServer::start(vec![]);
    for n in 0..LONG_SESSION {
        // Distinct output per call, 4096 bytes.
        let command = format!("head -c 3072 /dev/urandom | base64 -w0; echo ' {n}'");
        model.push(Step::tool_call(
            "exec",
            serde_json::json!({ "command": command }),
        ));
    }
    model.push(Step::text("done"));
    let bench = setup(&model.base_url());
    let d = daemon(&bench, false);
    let db = bench.root.db();
    let disk_before = dir_bytes(&db);
    drop_task(&bench, "long");
    run_agent(&bench);
    let mut client = con_protocol::Client::connect(&bench.root.socket()).unwrap();
    let log_id = client.status().unwrap().log.unwrap().log_id;
    let mut record_bytes = 0u64;
    let mut blobs = std::collections::HashMap::new();
    let mut distinct_messages = std::collections::HashMap::new();
    client
        .query(con_protocol::Query::default(), |raw| {
            record_bytes += raw.len() as u64;
            let event = Event::from_stored(&raw).unwrap();
            for b in event.payload.blob_refs() {
                blobs.insert(b.digest, b.len);
            }
            if let Payload::LlmRequest(r) = event.payload {
                for m in r.messages {
                    distinct_messages.insert(m.digest, m.len);
                }
            }
            true
        })
        .unwrap();
    let message_bytes: u64 = distinct_messages.values().sum();
    let blob_bytes: u64 = blobs.values().sum();
    let log_bytes = record_bytes + blob_bytes;
    let disk = dir_bytes(&db).saturating_sub(disk_before);
    let journal = journal_bytes(&log_id);
    println!(
        "long session ({LONG_SESSION} iterations, 4 KiB tool outputs): distinct message bytes {message_bytes}"
    );
    println!(
        "  event log: {record_bytes} record bytes + {blob_bytes} distinct blob bytes = {log_bytes} ({:.2}x the messages); database directory grew {disk} bytes ({:.2}x)",
        log_bytes as f64 / message_bytes as f64,
        disk as f64 / message_bytes as f64
    );
    println!(
        "  journal: {journal} bytes of export ({:.2}x the messages)",
        journal as f64 / message_bytes as f64
    );
    drop(d);
    drop(bench);
}

fn main() {
    if std::env::args().any(|a| a == "--long-session-only") {
        long_session_record();
        return;
    }
    // 1. Overhead per iteration.
    let model = ScriptedServer::start(vec![]);
    for _ in 0..ITERATIONS {
        model.push(Step::tool_call("list_dir", serde_json::json!({})));
    }
    model.push(Step::text("done"));
    let bench = setup(&model.base_url());
    let d = daemon(&bench, false);
    drop_task(&bench, "loop");
    let start = Instant::now();
    run_agent(&bench);
    let wall = start.elapsed();
    let evs = events(&bench);
    let model_ms: u64 = model_latencies_ms(&evs).iter().sum();
    let calls = ITERATIONS + 1;
    let overhead_ms = (ms(wall) - model_ms as f64) / calls as f64;
    let model_per_call = model_ms as f64 / calls as f64;
    println!(
        "tool loop: {calls} model calls + {ITERATIONS} tool calls in {:.0} ms",
        ms(wall)
    );
    println!(
        "  per iteration: {:.2} ms not spent in the model call (runner + daemon + tool), model call {:.2} ms; ratio {:.2}x",
        overhead_ms,
        model_per_call,
        overhead_ms / model_per_call.max(0.001)
    );
    drop(d);
    drop(bench);

    // 2. Task drop → response, supervised.
    let model = ScriptedServer::start((0..SAMPLES).map(|_| Step::text("pong")).collect());
    let bench = setup(&model.base_url());
    let d = daemon(&bench, true);
    let mut samples = Vec::with_capacity(SAMPLES);
    for n in 0..SAMPLES {
        let start = Instant::now();
        let response = drop_task(&bench, &format!("t{n:03}"));
        while !response.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no response for t{n:03}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(start.elapsed());
        // Let the run exit before the next task, so each sample starts a run.
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut model_lat: Vec<u64> = model_latencies_ms(&events(&bench));
    model_lat.sort_unstable();
    samples.sort();
    println!(
        "task dropped -> response file ({SAMPLES} one-call tasks): p50 {:.1} ms, p99 {:.1} ms; model call p50 {} ms (ratio p50 {:.1}x)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        model_lat[model_lat.len() / 2],
        ms(percentile(&samples, 0.5)) / (model_lat[model_lat.len() / 2].max(1) as f64)
    );
    drop(d);
    drop(bench);

    long_session_record();
}
