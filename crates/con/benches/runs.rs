//! Agent runs, measured side by side in one run (see BENCHMARKS.md):
//!
//! 1. runner overhead per tool-loop iteration: one `con run` session of 100
//!    iterations (each a model call answered at once by the scripted server
//!    plus a `list_dir` tool call), wall time minus the time the daemon
//!    spent in model calls (`llm.response` latency), per iteration — against
//!    the model-call latency itself as the baseline;
//! 2. end to end: a task renamed into an agent's inbox → its response file,
//!    for a one-call task, with the daemon supervising (p50/p99) — against
//!    the model-call latency of the same sessions.
//!
//! Run as root: `cargo bench -p con --bench runs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use con_event::{Event, Payload};
use con_llm_script::{ScriptedServer, Step};

use common::{Daemon, Root, TestUser, all_events};

const PREFIX: &str = "cbr-";
const ITERATIONS: usize = 100;
const SAMPLES: usize = 30;

struct Setup {
    root: Root,
    user: TestUser,
}

fn setup(base_url: &str) -> Setup {
    let name = format!("{PREFIX}bench");
    // Left behind by an interrupted run.
    let _ = Command::new("userdel").arg(&name).output();
    let user = TestUser::create(&name);
    let root = Root::new();
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
        std::os::unix::fs::chown(&d, Some(user.uid), Some(user.gid)).unwrap();
    }
    Setup { root, user }
}

fn daemon(setup: &Setup, supervise: bool) -> Daemon {
    let supervisor = if supervise { "daemon" } else { "systemd" };
    Daemon::start_with(&setup.root, PREFIX, &["--supervisor", supervisor], &[])
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
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
    let out = bench
        .user
        .command(Path::new(env!("CARGO_BIN_EXE_con")))
        .args([
            "--root",
            bench.root.path().to_str().unwrap(),
            "--user-prefix",
            PREFIX,
            "run",
            "bench",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let wall = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
}
