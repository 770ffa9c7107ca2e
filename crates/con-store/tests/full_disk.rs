//! The writer on a full file system (a tmpfs of a few MiB, so root only):
//! appends are refused with one clear line, nothing acknowledged is lost,
//! nothing refused is in the log, no seq is reused or skipped, and the log
//! records again by itself once space returns — both when the writer
//! refuses before the disk is full and when sled itself meets the full
//! disk (the database is then reopened in place).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::time::{Duration, Instant};

use con_event::payloads::{LogDegraded, LogRecovered, TaskRouted};
use con_event::*;
use con_store::*;
use con_test_support::Tmpfs;

const MIB: u64 = 1024 * 1024;

fn event(n: u64, attachment: Option<Vec<u8>>) -> NewEvent {
    let mut e = NewEvent::system(TaskRouted {
        from: "full-disk".into(),
        to: format!("event-{n}"),
        path: "p".repeat(300),
    });
    // An attachment rides along unreferenced: the writer stores whatever
    // it is given (the daemon checks references, not the store).
    e.attachments.extend(attachment);
    e
}

/// A log on a fresh 24 MiB tmpfs with a writer of `config`: the
/// tmpfs's directory (kept alive), the tmpfs, the database path, the store
/// and its writer.
fn writer_on_tmpfs(
    config: WriterConfig,
) -> (
    tempfile::TempDir,
    Tmpfs,
    std::path::PathBuf,
    Store,
    GroupCommitWriter,
) {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), 24);
    let db = fs.path().join("events");
    let store = Store::open(&db).unwrap();
    let writer = GroupCommitWriter::spawn(store.clone(), config, None).unwrap();
    (dir, fs, db, store, writer)
}

fn wait_for_state(writer: &GroupCommitWriter, recording: bool, limit: Duration) -> LogState {
    let state = writer.state();
    let start = Instant::now();
    loop {
        let now = state.borrow().clone();
        if now.is_recording() == recording {
            return now;
        }
        assert!(start.elapsed() < limit, "still {now:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Appends until one is refused; returns the acknowledged seqs (each with
/// its event's marker) and the refusal.
fn append_until_refused(app: &Appender, attachments: bool) -> (Vec<(u64, String)>, AppendError) {
    let mut acked = Vec::new();
    for n in 0u64.. {
        // Several in flight, so that batches of more than one are refused.
        let tickets: Vec<(Ticket, String)> = (0..8)
            .map(|i| {
                let k = n * 8 + i;
                let attachment = (attachments && k % 5 == 0)
                    .then(|| format!("content {k} ").repeat(200).into_bytes());
                (app.submit(event(k, attachment)), format!("event-{k}"))
            })
            .collect();
        let mut refused = None;
        for (ticket, marker) in tickets {
            match ticket.wait() {
                Ok(a) => acked.push((a.seq, marker)),
                Err(e) => refused = refused.or(Some(e)),
            }
        }
        if let Some(e) = refused {
            return (acked, e);
        }
        assert!(n < 1_000_000, "the file system never filled up");
    }
    unreachable!()
}

/// What the log holds, seq by seq, and the kinds after the appended ones.
fn check_log(store: &Store, acked: &[(u64, String)], later: &[&str]) -> Vec<Event> {
    let events: Vec<Event> = store.events_from(1).map(Result::unwrap).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "gap-free from 1");
    for (seq, marker) in acked {
        let event = &events[usize::try_from(*seq - 1).unwrap()];
        match &event.payload {
            Payload::TaskRouted(t) => assert_eq!(&t.to, marker, "seq {seq}"),
            other => panic!("seq {seq} is {other:?}, acknowledged as {marker}"),
        }
    }
    // Nothing refused is in the log: after the acknowledged events come
    // the writer's own records of the outage, then what was appended after.
    let last_acked = acked.last().map_or(0, |a| a.0);
    let after: Vec<&str> = events[usize::try_from(last_acked).unwrap()..]
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::TaskRouted(t) => Some(t.to.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(after, later, "a refused append is in the log");
    let report = store.verify().unwrap().expect("the chain verifies");
    assert_eq!(report.head.seq, seqs.len() as u64);
    events
}

/// The outage records, right after the last acknowledged event.
fn outage_records(events: &[Event], last_acked: u64) -> (LogDegraded, LogRecovered) {
    let at = usize::try_from(last_acked).unwrap();
    let (Payload::LogDegraded(d), Payload::LogRecovered(r)) =
        (&events[at].payload, &events[at + 1].payload)
    else {
        panic!(
            "expected log.degraded and log.recovered after seq {last_acked}, got {:?}",
            events[at..]
                .iter()
                .map(|e| e.payload.spec().name)
                .collect::<Vec<_>>()
        );
    };
    assert_eq!(events[at + 1].envelope.causation, Some(last_acked + 1));
    (d.clone(), r.clone())
}

#[test]
fn the_writer_refuses_before_the_disk_is_full_and_records_again_when_space_returns() {
    let (_dir, fs, db, store, writer) = writer_on_tmpfs(WriterConfig {
        min_free_bytes: 4 * MIB,
        ..WriterConfig::default()
    });
    let app = writer.appender();
    // Leave 8 MiB: the writer stops with 4 MiB (plus a margin) left.
    let filler = fs.fill("filler", 8 * MIB);
    let (acked, refusal) = append_until_refused(&app, true);
    assert!(acked.len() > 100, "{} acknowledged", acked.len());
    let AppendError::CannotRecord(line) = &refusal else {
        panic!("{refusal:?}");
    };
    assert!(
        line.starts_with(&format!(
            "the event log at {} cannot record: no space left on device (",
            db.display()
        )) && line.contains("MiB free, 4.0 MiB kept free)")
            && !line.contains('\n'),
        "{line}"
    );
    assert!(fs.free_bytes() >= 3 * MIB, "sled never met the full disk");
    let LogState::NotRecording(not) = wait_for_state(&writer, false, Duration::from_secs(1)) else {
        unreachable!()
    };
    assert!(not.reason.contains("no space left on device"), "{not:?}");
    // Still refused while the disk stays full; reads go on.
    for n in 0..3 {
        assert!(matches!(
            app.append(event(1_000_000 + n, None)),
            Err(AppendError::CannotRecord(_))
        ));
    }
    assert_eq!(store.head().seq, acked.last().unwrap().0);
    assert!(store.get(1).unwrap().is_some());

    std::fs::remove_file(filler).unwrap();
    wait_for_state(&writer, true, Duration::from_secs(5));
    let next = app.append(event(2_000_000, None)).unwrap();
    let last_acked = acked.last().unwrap().0;
    assert_eq!(
        next.seq,
        last_acked + 3,
        "the outage's two records, then this"
    );
    let events = check_log(&store, &acked, &["event-2000000"]);
    let (degraded, recovered) = outage_records(&events, last_acked);
    assert_eq!(degraded.reason, not.reason);
    assert_eq!(degraded.since_unix_nanos, not.since_unix_nanos);
    assert!(recovered.refused >= 4, "{recovered:?}");
    assert!(!recovered.reopened, "sled never failed: no reopen");
    writer.shutdown().unwrap();
}

#[test]
fn after_sled_meets_the_full_disk_the_writer_reopens_the_log_at_its_durable_head() {
    let (_dir, fs, db, store, writer) = writer_on_tmpfs(WriterConfig {
        // No check of our own: sled writes until the disk is full.
        min_free_bytes: 0,
        retry_min: Duration::from_millis(50),
        ..WriterConfig::default()
    });
    let app = writer.appender();
    let filler = fs.fill("filler", 6 * MIB);
    // Small events only: sled's separate value files (over ~128 KiB) are
    // the path on which it cannot be reopened in place (see ARCHITECTURE).
    let (acked, refusal) = append_until_refused(&app, false);
    assert!(acked.len() > 100, "{} acknowledged", acked.len());
    let AppendError::CannotRecord(line) = &refusal else {
        panic!("{refusal:?}");
    };
    assert!(
        line.starts_with(&format!(
            "the event log at {} cannot record: no space left on device (",
            db.display()
        )) && line.ends_with(" MiB free)"),
        "{line}"
    );
    assert!(fs.free_bytes() < MIB, "sled filled the disk");
    wait_for_state(&writer, false, Duration::from_secs(1));
    // Refused while the disk stays full, without a seq taken.
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(
        app.append(event(1_000_000, None)),
        Err(AppendError::CannotRecord(_))
    ));
    assert_eq!(store.head().seq, acked.last().unwrap().0);

    std::fs::remove_file(filler).unwrap();
    wait_for_state(&writer, true, Duration::from_secs(5));
    let next = app.append(event(2_000_000, None)).unwrap();
    let last_acked = acked.last().unwrap().0;
    assert_eq!(
        next.seq,
        last_acked + 3,
        "continues after the outage's two records: no seq reused or skipped"
    );
    let events = check_log(&store, &acked, &["event-2000000"]);
    let (_, recovered) = outage_records(&events, last_acked);
    assert!(recovered.reopened, "{recovered:?}");
    assert!(recovered.refused >= 2, "{recovered:?}");
    writer.shutdown().unwrap();
    drop(store);
    // What is on disk is what was acknowledged, reopened from scratch.
    let reopened = Store::open(&db).unwrap();
    assert_eq!(reopened.head().seq, last_acked + 3);
    check_log(&reopened, &acked, &["event-2000000"]);
}

/// sled writes a large value to a file of its own, and after failing to
/// write one it can neither flush nor be closed in this process: such
/// values are written only with room for them, even with no threshold set,
/// so the log still records again by itself.
#[test]
fn large_values_are_refused_before_sled_could_fail_to_write_them() {
    let (_dir, fs, _db, store, writer) = writer_on_tmpfs(WriterConfig {
        min_free_bytes: 0,
        ..WriterConfig::default()
    });
    let app = writer.appender();
    let filler = fs.fill("filler", 6 * MIB);
    let mut acked = Vec::new();
    let refusal = loop {
        let n = acked.len() as u64;
        let mut e = event(n, None);
        e.attachments
            .push(format!("{n:>8}").repeat(25_000).into_bytes());
        match app.append(e) {
            Ok(a) => acked.push((a.seq, format!("event-{n}"))),
            Err(e) => break e,
        }
        assert!(n < 100, "never refused");
    };
    assert!(
        matches!(refusal, AppendError::CannotRecord(_)),
        "{refusal:?}"
    );
    assert!(!acked.is_empty());
    std::fs::remove_file(filler).unwrap();
    wait_for_state(&writer, true, Duration::from_secs(5));
    let next = app.append(event(2_000_000, None)).unwrap();
    assert_eq!(next.seq, acked.last().unwrap().0 + 3);
    let events = check_log(&store, &acked, &["event-2000000"]);
    let (_, recovered) = outage_records(&events, acked.last().unwrap().0);
    assert!(!recovered.reopened, "sled never met the full disk");
    writer.shutdown().unwrap();
}
