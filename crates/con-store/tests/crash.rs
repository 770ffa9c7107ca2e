//! An acknowledged event survives `kill -9`.
//!
//! The parent re-executes this test binary as a child that appends as fast as
//! it can and prints every acknowledgement; the parent SIGKILLs it at a random
//! moment, reopens the log, and checks every acknowledged seq is present with
//! the content that was acknowledged, and that the chain is valid. Repeated on
//! the same log, so recovery after a crash is itself crashed into.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use con_event::payloads::TaskRouted;
use con_event::*;
use con_store::*;

const CHILD_ENV: &str = "CON_CRASH_CHILD_DB";
const ROUNDS: usize = 30;

/// The child: never run directly (ignored); the parent runs it with
/// `--ignored --exact` and `CON_CRASH_CHILD_DB` set.
#[test]
#[ignore = "child process of acknowledged_events_survive_sigkill"]
fn crash_child_appender() {
    let db = std::env::var(CHILD_ENV).expect("run by the crash test");
    let store = Store::open(std::path::Path::new(&db)).unwrap();
    let writer = GroupCommitWriter::spawn(store, WriterConfig::default(), None).unwrap();
    let app = writer.appender();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut window = VecDeque::new();
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for n in 0u64.. {
        let marker = format!("{nonce}-{n}");
        let ticket = app.submit(NewEvent::system(TaskRouted {
            from: "crash".into(),
            to: marker.clone(),
            path: "x".repeat(200),
        }));
        window.push_back((ticket, marker));
        if window.len() >= 256 {
            let (ticket, marker) = window.pop_front().unwrap();
            let ack = ticket.wait().unwrap();
            writeln!(out, "{} {marker}", ack.seq).unwrap();
            out.flush().unwrap();
        }
    }
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn acknowledged_events_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = XorShift(seed);
    let exe = std::env::current_exe().unwrap();
    let mut acked_total = 0usize;
    let mut kills_mid_stream = 0usize;

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child_appender",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = acked.clone();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((seq, marker)) = line.split_once(' ')
                    && let Ok(seq) = seq.parse::<u64>()
                {
                    acks.push((seq, marker.to_owned()));
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            acks
        });
        // Kill somewhere between startup (recovery included) and well into
        // steady appending: odd rounds at a random moment from the start,
        // even rounds at a random moment after the first acknowledgement, so
        // that half the kills land mid-stream however slow the machine is.
        let start = Instant::now();
        if round % 2 == 0 {
            while acked.load(std::sync::atomic::Ordering::Relaxed) == 0
                && start.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let delay = Duration::from_millis(rng.next() % 400);
        let start = Instant::now();
        while start.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = reader.join().unwrap();
        if !acks.is_empty() {
            kills_mid_stream += 1;
        }

        let store = Store::open(&db).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
        let report = store
            .verify()
            .unwrap()
            .unwrap_or_else(|b| panic!("round {round}: chain broken: {b:?}"));
        for (seq, marker) in &acks {
            let event = store.get(*seq).unwrap().unwrap_or_else(|| {
                panic!(
                    "round {round}: acknowledged seq {seq} lost (head {})",
                    report.head.seq
                )
            });
            match event.payload {
                Payload::TaskRouted(p) => {
                    assert_eq!(&p.to, marker, "round {round}: seq {seq} content")
                }
                other => panic!("round {round}: seq {seq} is {other:?}"),
            }
        }
        // The derived index catches up with everything that was committed.
        let indexed = store.agent_events("crash", 1).unwrap().count() as u64;
        assert_eq!(
            indexed, report.events,
            "round {round}: index of agent 'crash'"
        );
        acked_total += acks.len();
        drop(store);
    }
    eprintln!(
        "{ROUNDS} kills, {kills_mid_stream} while appending, {acked_total} acknowledged events checked"
    );
    assert!(
        kills_mid_stream >= ROUNDS / 2,
        "too few kills landed while appending ({kills_mid_stream}/{ROUNDS}); the test is not exercising crashes"
    );
    assert!(acked_total > 1000, "only {acked_total} acknowledged events");
}
