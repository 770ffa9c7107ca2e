//! Durable append throughput, side by side in one run:
//!
//! 1. raw sled inserts of the same bytes (no chain, no index, no flush): the
//!    ceiling, not durable;
//! 2. the writer with one flush per append (batch size 1, one appender
//!    waiting for each ack): durable, no group commit;
//! 3. the writer with group commit (many appends in flight): durable.
//!
//! Each event is ~300 stored bytes, carries a session and an agent (so both
//! secondary indexes are written) and is hash-chained. Index derivation runs
//! after commit, off the acknowledgement path; its time is included in the
//! writer figures (the clock stops once the indexes have caught up).
//!
//! Run: `cargo bench -p con-store --bench append` (prints a Markdown table).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::collections::VecDeque;
use std::time::Instant;

use con_event::payloads::TaskRouted;
use con_event::*;
use con_store::*;

fn event(i: u64) -> NewEvent {
    NewEvent {
        actor: Actor {
            uid: 1001,
            agent: Some("concierge".into()),
        },
        session: Some(SessionId([(i % 251) as u8; 16])),
        task: Some(format!("20261125-{i:08}")),
        causation: None,
        payload: TaskRouted {
            from: "concierge".into(),
            to: "sysadmin".into(),
            path: format!(
                "/srv/con/agents/sysadmin/inbox/{i:08}-{}.task",
                "p".repeat(40)
            ),
        }
        .into(),
        attachments: Vec::new(),
    }
}

fn stored_size() -> usize {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let w = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    w.appender().append(event(1)).unwrap();
    w.shutdown().unwrap();
    store
        .raw_log()
        .get(1u64.to_be_bytes())
        .unwrap()
        .unwrap()
        .len()
}

fn raw_sled(n: u64, value_len: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("raw")).unwrap();
    let tree = db.open_tree("log").unwrap();
    let value = vec![0x5au8; value_len];
    let t = Instant::now();
    for i in 1..=n {
        tree.insert(i.to_be_bytes(), value.as_slice()).unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn flush_per_append(n: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let w = GroupCommitWriter::spawn(
        store.clone(),
        WriterConfig {
            max_batch: 1,
            ..WriterConfig::default()
        },
        None,
    )
    .unwrap();
    let app = w.appender();
    let t = Instant::now();
    for i in 1..=n {
        app.append(event(i)).unwrap();
    }
    store.catch_up_indexes().unwrap();
    let rate = n as f64 / t.elapsed().as_secs_f64();
    w.shutdown().unwrap();
    rate
}

fn group_commit(n: u64, in_flight: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    let w = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let app = w.appender();
    let t = Instant::now();
    let mut window = VecDeque::with_capacity(in_flight);
    for i in 1..=n {
        window.push_back(app.submit(event(i)));
        if window.len() >= in_flight {
            window.pop_front().unwrap().wait().unwrap();
        }
    }
    for ticket in window {
        ticket.wait().unwrap();
    }
    store.catch_up_indexes().unwrap();
    let rate = n as f64 / t.elapsed().as_secs_f64();
    w.shutdown().unwrap();
    assert_eq!(store.head().seq, n);
    rate
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let size = stored_size();
    let reps = 3;
    let raw = median((0..reps).map(|_| raw_sled(200_000, size)).collect());
    let single = median((0..reps).map(|_| flush_per_append(3_000)).collect());
    let group = median((0..reps).map(|_| group_commit(200_000, 4096)).collect());
    let group_small = median((0..reps).map(|_| group_commit(100_000, 64)).collect());
    println!("stored event size: {size} bytes; median of {reps} runs\n");
    println!("| mode | events/s | vs one flush per append |");
    println!("|---|---:|---:|");
    println!(
        "| raw sled insert (not durable, no chain/index) | {raw:.0} | {:.1}× |",
        raw / single
    );
    println!("| writer, one flush per append | {single:.0} | 1.0× |");
    println!(
        "| writer, group commit, 64 in flight | {group_small:.0} | {:.1}× |",
        group_small / single
    );
    println!(
        "| writer, group commit, 4096 in flight | {group:.0} | {:.1}× |",
        group / single
    );
}
