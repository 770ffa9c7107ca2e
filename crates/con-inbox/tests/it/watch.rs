//! What the watcher records, when, and how often.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use con_event::BlobRef;
use con_inbox::{InboxWatcher, WatcherConfig, arrival_key};

use crate::common::*;

#[test]
fn tmp_is_ignored_until_renamed_then_recorded_once() {
    require_root();
    let dir = inbox_dir();
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());

    let tmp = dir.path().join("x.task.tmp");
    fs::write(&tmp, b"hello").unwrap();
    fs::write(dir.path().join("notes.txt"), b"not a task").unwrap();
    fs::write(dir.path().join(".task"), b"no id").unwrap();
    h.assert_quiet(QUIET);

    fs::rename(&tmp, dir.path().join("x.task")).unwrap();
    let ev = h.next(WAIT);
    let p = arrived(&ev);
    assert_eq!(ev.task.as_deref(), Some("x"));
    assert_eq!(p.inbox, "a");
    assert_eq!(p.path, dir.path().join("x.task").to_string_lossy());
    assert_eq!(ev.attachments, vec![b"hello".to_vec()]);

    // Renaming notes.txt around inside the inbox still never makes a task.
    fs::rename(dir.path().join("notes.txt"), dir.path().join("notes2.txt")).unwrap();
    h.assert_quiet(QUIET);
    assert!(h.errors().is_empty(), "{:?}", h.errors());
}

#[test]
fn task_written_in_place_is_recorded_only_when_closed() {
    require_root();
    let dir = inbox_dir();
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());
    // Once this is recorded the startup scan is over: a scan takes what it
    // lists as complete, only inotify knows what is still being written.
    drop_task(dir.path(), "000", b"sync");
    h.next(WAIT);

    let mut f = fs::File::create(dir.path().join("slow.task")).unwrap();
    f.write_all(b"first half, ").unwrap();
    f.flush().unwrap();
    h.assert_quiet(Duration::from_millis(700));
    f.write_all(b"second half").unwrap();
    drop(f);

    let ev = h.next(WAIT);
    assert_eq!(ev.attachments, vec![b"first half, second half".to_vec()]);
    h.assert_quiet(QUIET);
}

#[test]
fn startup_scan_records_existing_tasks_once_in_name_order() {
    require_root();
    let dir = inbox_dir();
    // Created out of name order: the scan sorts.
    for id in ["003", "001", "005", "002", "004"] {
        drop_task(dir.path(), id, id.as_bytes());
    }
    fs::write(dir.path().join("006.task.tmp"), b"unfinished").unwrap();

    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());
    let evs = h.take(5, WAIT);
    assert_eq!(
        names(&evs),
        ["001.task", "002.task", "003.task", "004.task", "005.task"]
    );
    h.assert_quiet(QUIET);
    let recorded: HashSet<_> = evs.iter().map(|e| arrival_key(arrived(e))).collect();
    drop(h);

    // A restart that knows them records nothing again, but still watches.
    let h = Harness::start_recorded(
        vec![spec("a", dir.path())],
        WatcherConfig::default(),
        recorded,
        1024,
    );
    h.assert_quiet(Duration::from_secs(1));
    drop_task(dir.path(), "007", b"new");
    assert_eq!(names(&[h.next(WAIT)]), ["007.task"]);
    h.assert_quiet(QUIET);
}

#[test]
fn a_task_changed_in_place_after_a_restart_is_a_new_arrival() {
    require_root();
    let dir = inbox_dir();
    let path = drop_task(dir.path(), "001", b"v1");
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());
    let first = h.next(WAIT);
    let recorded: HashSet<_> = [arrival_key(arrived(&first))].into();
    drop(h);

    // The same inode rewritten: new ctime, new content, new arrival.
    fs::write(&path, b"v2").unwrap();
    let h = Harness::start_recorded(
        vec![spec("a", dir.path())],
        WatcherConfig::default(),
        recorded,
        16,
    );
    let again = h.next(WAIT);
    assert_eq!(again.attachments, vec![b"v2".to_vec()]);
    assert_eq!(arrived(&again).inode, arrived(&first).inode);
    h.assert_quiet(QUIET);
}

#[test]
fn content_is_attached_byte_for_byte() {
    require_root();
    let dir = inbox_dir();
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());

    let content: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    drop_task(dir.path(), "bin", &content);
    drop_task(dir.path(), "empty", b"");
    let evs = h.take(2, WAIT);

    assert_eq!(evs[0].attachments, vec![content.clone()]);
    assert_eq!(arrived(&evs[0]).content, BlobRef::of(&content));
    assert_eq!(arrived(&evs[0]).content.len, 70_000);
    assert_eq!(evs[1].attachments, vec![Vec::<u8>::new()]);
    assert_eq!(arrived(&evs[1]).content, BlobRef::of(b""));
    let meta = fs::symlink_metadata(dir.path().join("bin.task")).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let p = arrived(&evs[0]);
        assert_eq!(
            (p.dev, p.inode, p.mode, p.nlink, p.owner_gid),
            (meta.dev(), meta.ino(), meta.mode(), 1, meta.gid())
        );
        assert_eq!(
            p.ctime_unix_nanos,
            meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
        );
    }
}

#[test]
fn content_over_the_cap_is_truncated_and_hashed_as_attached() {
    require_root();
    let dir = inbox_dir();
    let cfg = WatcherConfig {
        max_content_bytes: 1000,
        ..WatcherConfig::default()
    };
    let h = Harness::start(vec![spec("a", dir.path())], cfg);

    let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    drop_task(dir.path(), "big", &content);
    drop_task(dir.path(), "exact", &content[..1000]);
    let evs = h.take(2, WAIT);

    assert_eq!(evs[0].attachments, vec![content[..1000].to_vec()]);
    assert_eq!(arrived(&evs[0]).content, BlobRef::of(&content[..1000]));
    assert_eq!(evs[1].attachments, vec![content[..1000].to_vec()]);
    let errors = h.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("5000 bytes, only the first 1000"),
        "{errors:?}"
    );
}

/// A sparse 2 GiB task costs its writer one block and used to cost the log
/// the cap's worth of zeros; a dense task over the limit likewise. Each is
/// recorded by its first bytes only, and classified as refused.
#[test]
fn sparse_and_oversized_tasks_are_recorded_by_their_head_only() {
    require_root();
    let dir = inbox_dir();
    let cfg = WatcherConfig {
        max_task_bytes: 64 * 1024,
        max_content_bytes: 64 * 1024,
        ..WatcherConfig::default()
    };
    let h = Harness::start(vec![spec("a", dir.path())], cfg.clone());

    let sparse = dir.path().join("sparse.task.tmp");
    let file = fs::File::create(&sparse).unwrap();
    file.set_len(2 << 30).unwrap();
    drop(file);
    fs::rename(&sparse, dir.path().join("sparse.task")).unwrap();
    let dense: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    drop_task(dir.path(), "dense", &dense);
    let fits = vec![b'x'; 60 * 1024];
    drop_task(dir.path(), "fits", &fits);
    let evs = h.take(3, WAIT);

    let by_task = |id: &str| {
        evs.iter()
            .find(|e| e.task.as_deref() == Some(id))
            .unwrap()
            .attachments[0]
            .clone()
    };
    assert_eq!(by_task("sparse"), vec![0u8; con_inbox::REFUSED_HEAD_BYTES]);
    assert_eq!(
        by_task("dense"),
        dense[..con_inbox::REFUSED_HEAD_BYTES].to_vec()
    );
    assert_eq!(
        by_task("fits"),
        fits,
        "a task within the limit is read whole"
    );

    let refused = |id: &str| {
        con_inbox::classify(&dir.path().join(format!("{id}.task")), &cfg)
            .unwrap()
            .unwrap()
            .refused
    };
    let why = refused("sparse").unwrap();
    assert!(why.contains("2147483648 bytes"), "{why}");
    let why = refused("dense").unwrap();
    assert!(
        why.contains("100000 bytes, over the 65536-byte limit"),
        "{why}"
    );
    assert_eq!(refused("fits"), None);

    // Within the size limit, a file that is mostly hole is still refused.
    let holey = dir.path().join("holey.task");
    fs::File::create(&holey).unwrap().set_len(3 << 20).unwrap();
    let roomy = WatcherConfig {
        max_task_bytes: 4 << 20,
        ..cfg
    };
    let c = con_inbox::classify(&holey, &roomy).unwrap().unwrap();
    let why = c.refused.unwrap();
    assert!(why.contains("sparse: 3145728 bytes"), "{why}");
    assert_eq!(c.content.len(), con_inbox::REFUSED_HEAD_BYTES);
}

#[test]
fn vanishing_files_do_not_stop_the_watcher() {
    require_root();
    let dir = inbox_dir();
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());

    // Each task is gone again before (or while) the watcher looks at it.
    for i in 0..500 {
        let task = drop_task(dir.path(), &format!("a{i:03}"), b"short-lived");
        fs::remove_file(task).unwrap();
    }
    drop_task(dir.path(), "z", b"survivor");

    let deadline = Instant::now() + WAIT;
    loop {
        let ev = h.next(deadline.saturating_duration_since(Instant::now()));
        if ev.task.as_deref() == Some("z") {
            assert_eq!(ev.attachments, vec![b"survivor".to_vec()]);
            break;
        }
        // One caught in time is fine, as long as it is whole.
        assert_eq!(ev.attachments, vec![b"short-lived".to_vec()]);
    }
    assert!(h.errors().is_empty(), "{:?}", h.errors());
}

#[test]
fn inbox_added_at_runtime_is_scanned_then_watched() {
    require_root();
    let first = inbox_dir();
    let second = inbox_dir();
    drop_task(second.path(), "002", b"waiting");
    drop_task(second.path(), "001", b"waiting too");
    let h = Harness::start(vec![spec("a", first.path())], WatcherConfig::default());
    h.assert_quiet(QUIET);

    h.watcher.add_inbox(spec("b", second.path())).unwrap();
    let evs = h.take(2, WAIT);
    assert_eq!(names(&evs), ["001.task", "002.task"]);
    assert!(evs.iter().all(|e| arrived(e).inbox == "b"));

    drop_task(second.path(), "003", b"live");
    drop_task(first.path(), "004", b"live");
    let evs = h.take(2, WAIT);
    assert_eq!(
        evs.iter()
            .map(|e| arrived(e).inbox.as_str())
            .collect::<Vec<_>>(),
        ["b", "a"]
    );
    h.assert_quiet(QUIET);
}

#[test]
fn missing_inbox_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::sync_channel(1);
    let err = InboxWatcher::start(
        vec![spec("a", &dir.path().join("nope"))],
        WatcherConfig::default(),
        HashSet::new(),
        tx,
    )
    .err()
    .expect("start must fail");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn tasks_that_leave_the_inbox_are_forgotten() {
    require_root();
    let dir = inbox_dir();
    let processed = tempfile::tempdir().unwrap();
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());

    for i in 0..50 {
        drop_task(dir.path(), &format!("{i:03}"), b"x");
    }
    h.take(50, WAIT);
    wait_until(|| h.watcher.tracked() == 50);

    for i in 0..25 {
        let name = format!("{i:03}.task");
        fs::rename(dir.path().join(&name), processed.path().join(&name)).unwrap();
    }
    for i in 25..50 {
        fs::remove_file(dir.path().join(format!("{i:03}.task"))).unwrap();
    }
    wait_until(|| h.watcher.tracked() == 0);
    h.assert_quiet(QUIET);
}

#[test]
fn a_replaced_task_is_recorded_again() {
    require_root();
    let dir = inbox_dir();
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());

    drop_task(dir.path(), "x", b"one");
    assert_eq!(h.next(WAIT).attachments, vec![b"one".to_vec()]);
    drop_task(dir.path(), "x", b"two");
    assert_eq!(h.next(WAIT).attachments, vec![b"two".to_vec()]);
    h.assert_quiet(QUIET);
    assert_eq!(h.watcher.tracked(), 1);
}

#[test]
fn dropping_the_watcher_stops_it_even_when_nobody_reads() {
    require_root();
    let dir = inbox_dir();
    for i in 0..20 {
        drop_task(dir.path(), &format!("{i:03}"), b"x");
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let watcher = InboxWatcher::start(
        vec![spec("a", dir.path())],
        WatcherConfig::default(),
        HashSet::new(),
        tx,
    )
    .unwrap();
    // Let the watcher fill the channel and block on it.
    thread::sleep(Duration::from_millis(200));

    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        drop(watcher);
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("drop did not return");
    // Its sender is gone with the thread.
    let drained: Vec<_> = rx.iter().collect();
    assert_eq!(drained.len(), 1);
}

fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        thread::sleep(Duration::from_millis(10));
    }
}
