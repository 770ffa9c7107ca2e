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

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use con_event::{Event, Payload};
use con_llm_script::{ScriptedServer, Step};
use con_protocol::{Client, Query};

const USER: &str = "cbr-bench";
const ITERATIONS: usize = 100;
const SAMPLES: usize = 30;

struct Setup {
    root: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(USER).output();
    }
}

fn setup(base_url: &str) -> Setup {
    let _ = Command::new("userdel").arg(USER).output();
    let out = Command::new("useradd")
        .args(["-M", "-U", "-s", "/usr/sbin/nologin", USER])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, USER]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (uid, gid) = (id("-u"), id("-g"));
    let root = tempfile::Builder::new()
        .prefix("con-bench-runs-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = root.path().join("etc/con");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("con.toml"),
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
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
    }
    Setup { root, uid, gid }
}

fn daemon(setup: &Setup, supervise: bool) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_con"))
        .args([
            "--root",
            setup.root.path().to_str().unwrap(),
            "--user-prefix",
            "cbr-",
            "daemon",
            "--supervisor",
            if supervise { "daemon" } else { "systemd" },
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = setup.root.path().join("run/con/con.sock");
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn events(setup: &Setup) -> Vec<Event> {
    let mut out = Vec::new();
    Client::connect(&setup.root.path().join("run/con/con.sock"))
        .unwrap()
        .query(
            Query {
                from_seq: 1,
                ..Query::default()
            },
            |b| {
                out.push(Event::from_stored(&b).unwrap());
                true
            },
        )
        .unwrap();
    out
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
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={}", bench.uid),
            &format!("--regid={}", bench.gid),
            "--clear-groups",
            "--",
            env!("CARGO_BIN_EXE_con"),
            "--root",
            bench.root.path().to_str().unwrap(),
            "--user-prefix",
            "cbr-",
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
    stop(d);
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
    stop(d);
    drop(bench);
}
