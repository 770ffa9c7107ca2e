//! The daemon, measured side by side in one run (see BENCHMARKS.md):
//!
//! 1. durable appends/s through the socket with 1 and 8 clients, against the
//!    same appends straight into a store (same process, same concurrency),
//!    and with 8 clients also against a store whose writer has the journald
//!    mirror the daemon gives its writer;
//! 2. task file renamed into an inbox → its `inbox.arrived` seen by a
//!    follower (durable), p50/p99;
//! 3. task renamed into an inbox → `run.started` (agent process spawned as
//!    its user), p50/p99;
//! 4. daemon RSS idle and after 1,000,000 events.
//!
//! Run as root: `cargo bench -p con --bench daemon`. The daemon mirrors to a
//! journald of the benchmark's own (a private mount namespace, volatile,
//! capped), so the figures include mirroring whatever the host runs, and
//! the host's journal gets none of it; `CON_BENCH_HOST_JOURNAL=1` uses the
//! host's instead.
//!
//! `CON_BENCH_CON=PATH` measures another build's `con` daemon (the
//! in-process baselines stay this build's). For looking into the daemon
//! from outside: `CON_BENCH_PROFILE_SECS=N`
//! prints the daemon's pid and then only appends with 8 clients for N
//! seconds (attach `perf` to it); `CON_BENCH_HOLD=FILE` keeps the filled
//! daemon up, its pid in FILE, until FILE is removed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use con_event::payloads::ProvisionApplied;
use con_event::{BlobRef, Event, NewEvent, Payload};
use con_protocol::{Client, ClientEvent, Query};
use con_store::{GroupCommitWriter, Store, WriterConfig};

use con_test_support::{Daemon, Root, TestUser, client_event};

/// The content every bench event references (stored once).
const STEPS: &[u8] = b"{\"command\":\"true\"}";

/// A small operator event (what a root client may append), about the size
/// of a tool call.
fn small_event(n: u64) -> Payload {
    ProvisionApplied {
        command: format!("bench-{n:012}"),
        changes: 0,
        failed: Vec::new(),
        disabled_agents: Vec::new(),
        steps: BlobRef::of(STEPS),
    }
    .into()
}

/// `small_event(n)` as a client sends it, with its attachment.
fn small_client_event(n: u64) -> ClientEvent {
    let mut event = client_event(small_event(n), None);
    event.attachments = vec![STEPS.to_vec()];
    event
}

fn socket_rate(socket: &Path, clients: u64, per_client: u64) -> f64 {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.to_owned();
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket).unwrap();
                for n in 0..per_client {
                    client
                        .append(small_client_event(c * per_client + n))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (clients * per_client) as f64 / start.elapsed().as_secs_f64()
}

/// The same appends straight into a store's writer in this process; with
/// `mirror`, the writer also has the journald mirror the daemon gives it
/// (same queue length), so the difference to the socket is the socket.
fn direct_rate(clients: u64, per_client: u64, mirror: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let observer: Option<Box<dyn con_store::CommitObserver>> = mirror.then(|| {
        let (mirror, _status) = con_journal::JournalMirror::spawn(
            con_journal::MirrorConfig {
                queue_capacity: 65_536,
                context: con_journal::MirrorContext {
                    log_id: store.log_id().unwrap(),
                    system: "bench".into(),
                },
            },
            store.clone(),
        )
        .unwrap();
        Box::new(mirror) as Box<dyn con_store::CommitObserver>
    });
    let writer = GroupCommitWriter::spawn(store, WriterConfig::default(), observer).unwrap();
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let app = writer.appender();
            std::thread::spawn(move || {
                for n in 0..per_client {
                    let mut event = NewEvent::system(small_event(c * per_client + n));
                    event.attachments = vec![STEPS.to_vec()];
                    app.append(event).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rate = (clients * per_client) as f64 / start.elapsed().as_secs_f64();
    writer.shutdown().unwrap();
    rate
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// RssAnon / RssFile of a process, and the size of its heap mappings.
fn memory_breakdown(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "VmRSS {} RssAnon {} RssFile {} VmHWM {}",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("VmHWM:")
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Fields drop in order: the daemon stops before its agent's user goes.
struct Setup {
    daemon: Daemon,
    _worker: TestUser,
    root: Root,
}

fn setup() -> Setup {
    let root = Root::new();
    let worker = TestUser::create(&root.user("worker"));
    let r = root.path();
    std::fs::write(
        r.join("etc/con/con.toml"),
        "[[agents]]\nname = \"worker\"\ntier = \"worker\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("srv/con/inbox")).unwrap();
    for sub in ["inbox", "processed"] {
        let d = r.join("srv/con/agents/worker").join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    // Stand-in for `con run`: take the tasks and leave.
    let stand_in = r.join("stand-in");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\nd=\"$2/srv/con/agents/$6\"\nfor f in \"$d\"/inbox/*.task; do [ -e \"$f\" ] && mv \"$f\" \"$d/processed/\"; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    // `CON_BENCH_CON`: another build's `con`, to compare in the same way.
    let con = std::env::var("CON_BENCH_CON").unwrap_or_else(|_| env!("CARGO_BIN_EXE_con").into());
    let daemon = Daemon::start_with(
        con,
        &root,
        &[
            "--supervisor",
            "daemon",
            "--run-program",
            stand_in.to_str().unwrap(),
        ],
        &[],
    );
    Setup {
        daemon,
        _worker: worker,
        root,
    }
}

/// Follows the log from the head; sends (event, time seen) to the channel.
fn follower(socket: PathBuf, from: u64) -> mpsc::Receiver<(Event, Instant)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut client = Client::connect(&socket).unwrap();
        let _ = client.query(
            Query {
                from_seq: from,
                follow: true,
                ..Query::default()
            },
            |bytes| {
                tx.send((Event::from_stored(&bytes).unwrap(), Instant::now()))
                    .is_ok()
            },
        );
    });
    rx
}

/// The log's durable head, as the daemon reports it to an operator.
fn head_seq(socket: &Path) -> u64 {
    Client::connect(socket)
        .unwrap()
        .status()
        .unwrap()
        .log
        .unwrap()
        .head_seq
}

fn latencies(setup: &Setup, samples: usize) -> (Vec<Duration>, Vec<Duration>) {
    let r = setup.root.path();
    let socket = setup.root.socket();
    let head = head_seq(&socket);
    let events = follower(socket, head + 1);
    let inbox = r.join("srv/con/agents/worker/inbox");
    let mut arrived = Vec::new();
    let mut started = Vec::new();
    for i in 0..samples {
        let name = format!("{i:08}.task");
        let tmp = inbox.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, b"benchmark task").unwrap();
        let t0 = Instant::now();
        std::fs::rename(&tmp, inbox.join(&name)).unwrap();
        let (mut got_arrival, mut got_start) = (false, false);
        while !(got_arrival && got_start) {
            let (event, seen) = events.recv_timeout(Duration::from_secs(10)).unwrap();
            match event.payload {
                Payload::InboxArrived(a) if a.path.ends_with(&name) => {
                    arrived.push(seen - t0);
                    got_arrival = true;
                }
                Payload::RunStarted(_) if got_arrival && !got_start => {
                    started.push(seen - t0);
                    got_start = true;
                }
                _ => {}
            }
        }
        // Let the run finish and leave the inbox empty.
        std::thread::sleep(Duration::from_millis(60));
    }
    arrived.sort();
    started.sort();
    (arrived, started)
}

fn main() {
    let _journald = std::env::var_os("CON_BENCH_HOST_JOURNAL")
        .is_none()
        .then(con_test_support::in_private_journald);
    let setup = setup();
    let socket = setup.root.socket();
    let idle_rss = rss_kib(setup.daemon.pid());
    eprintln!("memory idle: {}", memory_breakdown(setup.daemon.pid()));
    if let Some(secs) = std::env::var("CON_BENCH_PROFILE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Only 8-client socket appends, for a profiler attached to the
        // daemon (its pid is printed first).
        eprintln!("daemon pid {}", setup.daemon.pid());
        std::thread::sleep(Duration::from_secs(2));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            eprintln!("8 clients: {:.0}/s", socket_rate(&socket, 8, 2_000));
        }
        return;
    }

    let direct_1 = direct_rate(1, 3_000, false);
    let socket_1 = socket_rate(&socket, 1, 3_000);
    let direct_8 = direct_rate(8, 2_000, false);
    let socket_8 = socket_rate(&socket, 8, 2_000);
    let mirrored_8 = direct_rate(8, 2_000, true);

    let (arrived, started) = latencies(&setup, 200);

    // Fill to one million events (8 clients), then measure memory.
    let target: u64 = std::env::var("CON_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let head = head_seq(&socket);
    let remaining = target.saturating_sub(head);
    let fill_start = Instant::now();
    socket_rate(&socket, 8, remaining.div_ceil(8));
    let fill = fill_start.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let full_rss = rss_kib(setup.daemon.pid());
    let head = head_seq(&socket);
    eprintln!(
        "memory after fill: {}",
        memory_breakdown(setup.daemon.pid())
    );
    if let Ok(hold) = std::env::var("CON_BENCH_HOLD") {
        // For probing the filled daemon from outside (gdb, smaps): it stays
        // up until the file is removed.
        std::fs::write(&hold, setup.daemon.pid().to_string()).unwrap();
        eprintln!(
            "holding: daemon pid {} until {hold} is removed",
            setup.daemon.pid()
        );
        while std::path::Path::new(&hold).exists() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    println!("| measurement | value | baseline (same run) | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| durable appends/s, 1 client, socket vs direct | {socket_1:.0} | {direct_1:.0} | {:.2} |",
        socket_1 / direct_1
    );
    println!(
        "| durable appends/s, 8 clients, socket vs direct | {socket_8:.0} | {direct_8:.0} | {:.2} |",
        socket_8 / direct_8
    );
    println!(
        "| durable appends/s, 8 clients, socket vs direct with the journald mirror | {socket_8:.0} | {mirrored_8:.0} | {:.2} |",
        socket_8 / mirrored_8
    );
    println!(
        "| task rename → inbox.arrived durable, p50 / p99 | {:.2} ms / {:.2} ms | target p99 < 10 ms | |",
        percentile(&arrived, 0.5).as_secs_f64() * 1e3,
        percentile(&arrived, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| task rename → run.started (agent process spawned), p50 / p99 | {:.2} ms / {:.2} ms | target p99 < 50 ms | |",
        percentile(&started, 0.5).as_secs_f64() * 1e3,
        percentile(&started, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| daemon RSS idle / after {head} events | {} MiB / {} MiB | | |",
        idle_rss / 1024,
        full_rss / 1024
    );
    println!(
        "| filling to 1M events through the socket (8 clients) | {:.0} s | | |",
        fill.as_secs_f64()
    );
}
