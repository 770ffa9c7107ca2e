//! Behaviour of the log: append, read back, indexes, blobs, verify, reopen.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use con_event::payloads::*;
use con_event::*;
use con_store::*;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("log")).unwrap();
    (dir, store)
}

fn routed(n: u64) -> NewEvent {
    NewEvent::system(TaskRouted {
        from: "outer".into(),
        to: "concierge".into(),
        path: format!("/srv/con/agents/concierge/inbox/{n}.task"),
    })
}

fn append_n(store: &Store, n: u64) -> Vec<Appended> {
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let appender = writer.appender();
    let tickets: Vec<_> = (1..=n).map(|i| appender.submit(routed(i))).collect();
    let acks = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
    writer.shutdown().unwrap();
    acks
}

#[test]
fn appends_get_gap_free_seqs_and_a_valid_chain() {
    let (_dir, store) = open();
    let acks = append_n(&store, 500);
    let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    let report = store.verify().unwrap().unwrap();
    assert_eq!(report.events, 500);
    assert_eq!(report.head.hash, acks[499].hash);
    let e = store.get(42).unwrap().unwrap();
    assert_eq!(e.envelope.prev_hash, acks[40].hash);
    match e.payload {
        Payload::TaskRouted(p) => assert!(p.path.ends_with("/42.task")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let first = {
        let store = Store::open(&path).unwrap();
        let id = store.log_id().unwrap();
        (append_n(&store, 10), id)
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.log_id().unwrap(), first.1, "log id is stable");
    assert_eq!(store.head().seq, 10);
    let more = append_n(&store, 5);
    assert_eq!(more[0].seq, 11);
    assert_eq!(
        store.get(11).unwrap().unwrap().envelope.prev_hash,
        first.0[9].hash
    );
    assert_eq!(store.verify().unwrap().unwrap().events, 15);
}

/// Opens `path` once the previous `Store` on it in this process has let go:
/// sled's threads release its file lock shortly after the last handle drops.
fn open_when_released(path: &std::path::Path) -> Store {
    let started = std::time::Instant::now();
    loop {
        match Store::open(path) {
            Err(StoreError::Locked(_))
                if started.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// `kill -9` while sled writes a snapshot leaves `snap.<lsn>.generating`
/// half-written; sled 0.34.7 then picks it on open and refuses the whole
/// database as corrupted. Every acknowledged event must still be there.
#[test]
fn a_snapshot_cut_short_by_a_crash_does_not_make_the_log_unopenable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let acks = {
        let store = Store::open(&path).unwrap();
        append_n(&store, 300)
    };
    // sled writes its snapshot when it opens a database it must recover.
    drop(open_when_released(&path));
    let snapshot = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .expect("sled wrote a snapshot");
    let complete = std::fs::read(&snapshot).unwrap();
    // Two shapes a kill leaves: a later snapshot cut mid-write, and one
    // whose bytes all landed but whose rename never happened.
    std::fs::write(
        path.join("snap.7FFFFFFFFFFFFFFF.generating"),
        &complete[..complete.len() / 2],
    )
    .unwrap();
    std::fs::write(
        format!("{}.generating", snapshot.display()),
        &complete[..complete.len() - 1],
    )
    .unwrap();

    let store = open_when_released(&path);
    let report = store.verify().unwrap().unwrap();
    assert_eq!(report.events, 300);
    assert_eq!(report.head.hash, acks[299].hash);
    assert!(
        !std::fs::read_dir(&path).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".generating")),
        "unfinished snapshots are removed"
    );
}

#[test]
fn a_second_open_of_the_same_log_is_refused_with_a_clear_error() {
    let (dir, _store) = open();
    let err = match Store::open(&dir.path().join("log")) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("second open succeeded"),
    };
    assert!(err.contains("in use by another process"), "{err}");
}

#[test]
fn flipped_byte_is_detected_and_its_seq_named() {
    // Flip bytes at several offsets of one record: in the envelope header,
    // the payload, and the stored hash.
    for offset_from_end in [1usize, 20, 40, 60, 90] {
        let (_dir, store) = open();
        append_n(&store, 100);
        let key = 37u64.to_be_bytes();
        let mut value = store.raw_log().get(key).unwrap().unwrap().to_vec();
        let i = value.len().saturating_sub(offset_from_end);
        value[i] ^= 0x01;
        store.raw_log().insert(key, value).unwrap();
        let broken = store.verify().unwrap().unwrap_err();
        assert_eq!(broken.seq, 37, "offset -{offset_from_end}: {broken:?}");
    }
}

#[test]
fn rewriting_a_record_with_a_recomputed_hash_breaks_the_next_link() {
    let (_dir, store) = open();
    append_n(&store, 10);
    let stored = store.raw_log().get(5u64.to_be_bytes()).unwrap().unwrap();
    let mut env = Envelope::decode_record(decode_stored(&stored).unwrap().record).unwrap();
    env.actor.uid = 4242;
    let record = env.encode_record().unwrap();
    let forged = encode_stored(&record, &chain_hash(&env.prev_hash, &record));
    store.raw_log().insert(5u64.to_be_bytes(), forged).unwrap();
    let broken = store.verify().unwrap().unwrap_err();
    assert_eq!(broken.seq, 6, "{broken:?}");
    assert!(broken.reason.contains("prev_hash"), "{}", broken.reason);
}

#[test]
fn a_missing_record_is_named() {
    let (_dir, store) = open();
    append_n(&store, 10);
    store.raw_log().remove(4u64.to_be_bytes()).unwrap();
    let broken = store.verify().unwrap().unwrap_err();
    assert_eq!(broken.seq, 4);
    assert!(broken.reason.contains("missing"));
}

#[test]
fn attachments_are_stored_content_addressed_and_indexes_find_events() {
    let (_dir, store) = open();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let app = writer.appender();
    let content = b"please rotate the logs".to_vec();
    let session = SessionId([7; 16]);
    let arrived = NewEvent {
        actor: Actor::system(),
        session: None,
        task: Some("t1".into()),
        causation: None,
        payload: InboxArrived {
            inbox: "sysadmin".into(),
            path: "/srv/con/agents/sysadmin/inbox/t1.task".into(),
            owner_uid: 1005,
            owner_gid: 1005,
            mode: 0o100600,
            nlink: 1,
            dev: 0,
            inode: 0,
            ctime_unix_nanos: 0,
            symlink: false,
            trust: Trust::Unverified,
            trust_reason: "owner uid 1005 is not trusted".into(),
            content: BlobRef::of(&content),
        }
        .into(),
        attachments: vec![content.clone()],
    };
    app.append(arrived.clone()).unwrap();
    app.append(arrived).unwrap(); // same content twice: one blob
    let started = NewEvent {
        actor: Actor {
            uid: 1005,
            agent: Some("sysadmin".into()),
        },
        session: Some(session),
        task: Some("t1".into()),
        causation: Some(1),
        payload: SessionStarted {
            agent: "sysadmin".into(),
            runner: "builtin".into(),
            provider: None,
            model: None,
            trust: Trust::Unverified,
            prompt: BlobRef::of(b"prompt"),
        }
        .into(),
        attachments: vec![b"prompt".to_vec()],
    };
    app.append(started).unwrap();
    app.append(routed(9)).unwrap();
    writer.shutdown().unwrap();

    assert_eq!(store.blob(&Digest::of(&content)).unwrap().unwrap(), content);
    assert_eq!(
        store.blob(&Digest::of(b"prompt")).unwrap().unwrap(),
        b"prompt"
    );
    assert_eq!(store.blob(&Digest::of(b"nope")).unwrap(), None);

    let by_session: Vec<u64> = store
        .session_events(&session, 1)
        .unwrap()
        .map(|e| e.unwrap().seq())
        .collect();
    assert_eq!(by_session, vec![3]);
    // Arrivals are about the inbox's agent even though root recorded them.
    let by_agent: Vec<u64> = store
        .agent_events("sysadmin", 1)
        .unwrap()
        .map(|e| e.unwrap().seq())
        .collect();
    assert_eq!(by_agent, vec![1, 2, 3]);
    let concierge: Vec<u64> = store
        .agent_events("outer", 1)
        .unwrap()
        .map(|e| e.unwrap().seq())
        .collect();
    assert_eq!(concierge, vec![4]);
}

#[test]
fn submissions_after_shutdown_fail_cleanly() {
    let (_dir, store) = open();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let app = writer.appender();
    writer.shutdown().unwrap();
    assert_eq!(app.append(routed(1)), Err(AppendError::Stopped));
}

#[test]
fn many_threads_appending_share_flushes_and_lose_nothing() {
    let (_dir, store) = open();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let app = writer.appender();
            std::thread::spawn(move || {
                (0..200)
                    .map(|i| app.append(routed(i)).unwrap().seq)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    writer.shutdown().unwrap();
    all.sort_unstable();
    assert_eq!(all, (1..=1600).collect::<Vec<_>>());
    assert_eq!(store.verify().unwrap().unwrap().events, 1600);
}

#[test]
fn a_second_writer_on_the_same_store_is_refused() {
    let (_dir, store) = open();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    assert!(matches!(
        GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None),
        Err(StoreError::WriterActive)
    ));
    writer.shutdown().unwrap();
    // Once the first one is gone, a new writer may start and continues the chain.
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    assert_eq!(writer.appender().append(routed(1)).unwrap().seq, 1);
    writer.shutdown().unwrap();
}

#[test]
fn an_oversized_event_is_rejected_alone_and_the_log_stays_healthy() {
    let (_dir, store) = open();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let app = writer.appender();
    let before = app.submit(routed(1));
    let huge = app.submit(NewEvent::system(TaskRouted {
        from: "outer".into(),
        to: "concierge".into(),
        path: "x".repeat(MAX_RECORD_BYTES as usize + 10),
    }));
    let after = app.submit(routed(2));
    assert_eq!(before.wait().unwrap().seq, 1);
    match huge.wait() {
        Err(AppendError::Rejected(reason)) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(after.wait().unwrap().seq, 2, "no gap, no poisoning");
    writer.shutdown().unwrap();
    assert_eq!(store.verify().unwrap().unwrap().events, 2);
}

#[test]
fn concurrent_appenders_share_flushes() {
    let (_dir, store) = open();
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    let app = writer.appender();
    let tickets: Vec<_> = (0..2000).map(|i| app.submit(routed(i))).collect();
    for t in tickets {
        t.wait().unwrap();
    }
    let events = writer
        .stats()
        .events
        .load(std::sync::atomic::Ordering::Relaxed);
    let flushes = writer
        .stats()
        .flushes
        .load(std::sync::atomic::Ordering::Relaxed);
    writer.shutdown().unwrap();
    assert_eq!(events, 2000);
    assert!(
        flushes * 10 <= events,
        "{flushes} flushes for {events} events: no group commit"
    );
}

#[test]
fn indexes_follow_a_log_that_was_cut_back_and_grew_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let store = Store::open(&path).unwrap();
        append_n(&store, 6);
        assert_eq!(store.agent_events("outer", 1).unwrap().count(), 6);
        // Cut the log back to 3 records (an older copy restored).
        for seq in 4u64..=6 {
            store.raw_log().remove(seq.to_be_bytes()).unwrap();
        }
        store.flush().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.head().seq, 3);
    append_n(&store, 2);
    // Seqs 4 and 5 now hold different events; the index must not point at
    // the old ones nor miss the new ones.
    let seqs: Vec<u64> = store
        .agent_events("outer", 1)
        .unwrap()
        .map(|e| e.unwrap().seq())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

/// What a crash, a bad disk or a hand edit can leave in the last record.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The value is cut short of a record and its hash.
    ShortValue,
    /// The key is not 8 bytes (here: one byte too long).
    LongKey,
    /// The record starts with a format byte no build knows.
    UnknownFormat,
    /// The format byte is known but the envelope is cut short.
    BadEnvelope,
    /// The previous record, stored again under this seq.
    WrongSeq,
}

/// Applies `damage` to record `seq` of `log`.
fn damage(log: &sled::Tree, seq: u64, damage: Damage) {
    let key = seq.to_be_bytes();
    let mut value = log.get(key).unwrap().unwrap().to_vec();
    match damage {
        Damage::ShortValue => value.truncate(17),
        Damage::LongKey => {
            log.remove(key).unwrap();
            let mut long = key.to_vec();
            long.push(0);
            log.insert(long, value).unwrap();
            return;
        }
        Damage::UnknownFormat => value[0] = 0x7f,
        Damage::BadEnvelope => {
            let hash = value.split_off(value.len() - 32);
            value.truncate(20);
            value.extend_from_slice(&hash);
        }
        Damage::WrongSeq => value = log.get((seq - 1).to_be_bytes()).unwrap().unwrap().to_vec(),
    }
    log.insert(key, value).unwrap();
}

fn log_contents(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .raw_log()
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn a_last_record_that_cannot_be_read_is_refused_for_appending_and_named_by_verify() {
    // (damage, what the refusal says after the path, what verify says)
    let cases = [
        (
            Damage::ShortValue,
            " (seq 12) cannot be read: value is 17 bytes, shorter than a record",
            "undecodable record",
        ),
        (
            Damage::LongKey,
            " cannot be read: key 000000000000000c00 is 9 bytes, not 8",
            "malformed key 000000000000000c00",
        ),
        (
            Damage::UnknownFormat,
            " (seq 12) cannot be read: unknown record format 127",
            "undecodable envelope: unknown record format 127",
        ),
        (
            Damage::BadEnvelope,
            " (seq 12) cannot be read: envelope: ",
            "undecodable envelope",
        ),
        (
            Damage::WrongSeq,
            " (seq 12) cannot be read: its envelope claims seq 11",
            "record claims seq 11",
        ),
    ];
    for (how, refusal, verify_says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let damaged = {
            let store = Store::open(&path).unwrap();
            append_n(&store, 12);
            damage(&store.raw_log(), 12, how);
            store.flush().unwrap();
            log_contents(&store)
        };

        let err = match Store::open(&path) {
            Err(e) => e.to_string(),
            Ok(store) => panic!("{how:?}: opened for appending at head {}", store.head().seq),
        };
        let expected = format!(
            "{}: the last record of the event log{refusal}",
            path.display()
        );
        assert!(err.starts_with(&expected), "{how:?}: {err}");
        assert!(
            err.ends_with("; refusing to append (run `con verify`)"),
            "{how:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{how:?}: {err}");

        let store = Store::open_for_inspection(&path).unwrap();
        match GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None) {
            Err(e) => assert!(e.to_string().starts_with(&expected), "{how:?}: {e}"),
            Ok(_) => panic!("{how:?}: a writer started on the damaged log"),
        }
        assert_eq!(log_contents(&store), damaged, "{how:?}: the log changed");
        let broken = store.verify().unwrap().unwrap_err();
        assert_eq!(broken.seq, 12, "{how:?}: {broken:?}");
        assert_eq!(broken.last_good.seq, 11, "{how:?}: {broken:?}");
        assert!(broken.reason.contains(verify_says), "{how:?}: {broken:?}");
    }
}

#[test]
fn the_writer_never_replaces_an_existing_record() {
    let (_dir, store) = open();
    append_n(&store, 3);
    let writer = GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
    // A record appears at the next seq behind the writer's back.
    store
        .raw_log()
        .insert(4u64.to_be_bytes(), b"already here".as_slice())
        .unwrap();
    match writer.appender().append(routed(4)) {
        Err(AppendError::Failed(reason)) => {
            assert!(reason.contains("seq 4 already exists"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(writer.shutdown().is_err(), "the writer stopped failed");
    assert_eq!(
        store.raw_log().get(4u64.to_be_bytes()).unwrap().unwrap(),
        b"already here"
    );
}

/// A log long enough that `verify`'s readers split it into several chunks
/// (4,096 seqs each): what it finds is what one pass in key order finds,
/// wherever the damage is (a chunk's first or last key, deep in a later
/// chunk, a malformed key between two chunks).
#[test]
fn verify_read_in_chunks_finds_what_one_pass_finds() {
    let (_dir, store) = open();
    append_n(&store, 10_000);
    let report = store.verify().unwrap().unwrap();
    assert_eq!(report.events, 10_000);
    assert_eq!(report.head, store.head());

    /// What is damaged, how, and the seq verify must name.
    type Case = (&'static str, Box<dyn Fn(&sled::Tree)>, u64);
    let cases: Vec<Case> = vec![
        (
            "missing first key of the second chunk",
            Box::new(|log| {
                log.remove(4096u64.to_be_bytes()).unwrap();
            }),
            4096,
        ),
        (
            "missing last key of the first chunk",
            Box::new(|log| {
                log.remove(4095u64.to_be_bytes()).unwrap();
            }),
            4095,
        ),
        (
            "flipped byte in the third chunk",
            Box::new(|log| {
                let key = 9000u64.to_be_bytes();
                let mut value = log.get(key).unwrap().unwrap().to_vec();
                let at = value.len() - 50;
                value[at] ^= 1;
                log.insert(key, value).unwrap();
            }),
            9000,
        ),
        (
            "a malformed key between two chunks",
            Box::new(|log| {
                let mut key = 8191u64.to_be_bytes().to_vec();
                key.push(0);
                log.insert(key, b"junk".to_vec()).unwrap();
            }),
            8192,
        ),
    ];
    for (what, damage, seq) in cases {
        let before = log_contents(&store);
        damage(&store.raw_log());
        let broken = store.verify().unwrap().unwrap_err();
        assert_eq!(broken.seq, seq, "{what}: {broken:?}");
        assert_eq!(broken.last_good.seq, seq - 1, "{what}: {broken:?}");
        // Put the log back for the next case.
        store.raw_log().clear().unwrap();
        for (k, v) in before {
            store.raw_log().insert(k, v).unwrap();
        }
        assert!(store.verify().unwrap().is_ok(), "{what}: not restored");
    }
}

/// A session's or an agent's records from a store opened for inspection:
/// the index as far as it was derived, the log scanned past it, and the
/// log left as it was.
#[test]
fn read_only_index_reads_cover_the_log_past_the_index_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let session = SessionId([7; 16]);
    let in_session = |n: u64| NewEvent {
        actor: Actor {
            uid: 1001,
            agent: Some("scribe".into()),
        },
        session: Some(session),
        ..routed(n)
    };
    let (first, second) = {
        let store = Store::open(&path).unwrap();
        let writer =
            GroupCommitWriter::spawn(store.clone(), WriterConfig::default(), None).unwrap();
        let app = writer.appender();
        let mut first = Vec::new();
        for n in 0..30 {
            let ack = app
                .append(if n % 3 == 0 { in_session(n) } else { routed(n) })
                .unwrap();
            if n % 3 == 0 {
                first.push(ack.seq);
            }
        }
        // Indexed through here; the rest is appended after the watermark.
        store.catch_up_indexes().unwrap();
        let mut second = Vec::new();
        for n in 30..45 {
            let ack = app
                .append(if n % 3 == 0 { in_session(n) } else { routed(n) })
                .unwrap();
            if n % 3 == 0 {
                second.push(ack.seq);
            }
        }
        writer.shutdown().unwrap();
        (first, second)
    };
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    let store = Store::open_for_inspection(&path).unwrap();
    let before = log_contents(&store);
    let seqs =
        |records: Vec<(u64, Vec<u8>)>| records.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(
        seqs(
            store
                .session_records_read_only(&session, 1, u64::MAX)
                .unwrap()
        ),
        all
    );
    assert_eq!(
        seqs(
            store
                .agent_records_read_only("scribe", 1, u64::MAX)
                .unwrap()
        ),
        all
    );
    // Bounded on both sides, across the watermark.
    let (from, until) = (first[3], second[2]);
    let bounded: Vec<u64> = all
        .iter()
        .copied()
        .filter(|s| (from..=until).contains(s))
        .collect();
    assert_eq!(
        seqs(
            store
                .session_records_read_only(&session, from, until)
                .unwrap()
        ),
        bounded
    );
    assert_eq!(
        seqs(
            store
                .agent_records_read_only("scribe", from, until)
                .unwrap()
        ),
        bounded
    );
    assert!(
        store
            .agent_records_read_only("nobody", 1, u64::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(log_contents(&store), before);
    drop(store);
    // A writable open then derives the rest as usual.
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store
            .session_records(&session, 1)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect::<Vec<_>>(),
        all
    );
}
