//! 10,000 tasks at once: each recorded exactly once, in name order, whether
//! the consumer keeps up or stalls (which overflows the event queue and
//! forces rescans).

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use con_inbox::WatcherConfig;

use crate::common::*;

const N: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(120);

fn flood(dir: &Path) -> Duration {
    let start = Instant::now();
    for i in 0..N {
        let tmp = dir.join(format!("{i:06}.task.tmp"));
        fs::write(&tmp, format!("task {i}")).unwrap();
        fs::rename(&tmp, dir.join(format!("{i:06}.task"))).unwrap();
    }
    start.elapsed()
}

fn check(evs: &[con_event::NewEvent]) {
    let names = names(evs);
    let unique: HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), N, "duplicates recorded");
    let expected: Vec<String> = (0..N).map(|i| format!("{i:06}.task")).collect();
    assert_eq!(names, expected, "not in name order");
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.attachments, vec![format!("task {i}").into_bytes()]);
    }
}

#[test]
fn flood_is_recorded_exactly_once_in_order() {
    require_root();
    let dir = inbox_dir();
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());

    let start = Instant::now();
    let path = dir.path().to_owned();
    let writer = thread::spawn(move || flood(&path));
    let evs = h.take(N, TIMEOUT);
    let total = start.elapsed();
    let writing = writer.join().unwrap();
    eprintln!(
        "flood: {N} tasks written in {writing:?}, all recorded after {total:?} ({:.0} tasks/s)",
        N as f64 / total.as_secs_f64()
    );

    check(&evs);
    h.assert_quiet(Duration::from_secs(1));
    assert!(h.errors().is_empty(), "{:?}", h.errors());
}

#[test]
fn flood_with_a_stalled_consumer_is_recorded_exactly_once_in_order() {
    require_root();
    let dir = inbox_dir();
    // A tiny output channel that nobody reads until the flood is over: the
    // watcher blocks, inotify events pile up past the internal queue, and
    // the dropped ones must be recovered by rescanning.
    let h = Harness::start_recorded(
        vec![spec("a", dir.path())],
        WatcherConfig::default(),
        HashSet::new(),
        4,
    );
    let writing = flood(dir.path());

    let start = Instant::now();
    let evs = h.take(N, TIMEOUT);
    eprintln!(
        "stalled flood: written in {writing:?}, drained in {:?}",
        start.elapsed()
    );
    check(&evs);
    h.assert_quiet(Duration::from_secs(1));
    assert!(h.errors().is_empty(), "{:?}", h.errors());
}

#[test]
fn startup_scan_racing_a_flood_records_each_once_in_order() {
    require_root();
    let dir = inbox_dir();
    // Half the tasks exist before start, half arrive while the scan runs.
    for i in 0..N / 2 {
        let tmp = dir.path().join(format!("{i:06}.task.tmp"));
        fs::write(&tmp, format!("task {i}")).unwrap();
        fs::rename(&tmp, dir.path().join(format!("{i:06}.task"))).unwrap();
    }
    let path = dir.path().to_owned();
    let writer = thread::spawn(move || {
        for i in N / 2..N {
            let tmp = path.join(format!("{i:06}.task.tmp"));
            fs::write(&tmp, format!("task {i}")).unwrap();
            fs::rename(&tmp, path.join(format!("{i:06}.task"))).unwrap();
        }
    });
    let h = Harness::start(vec![spec("a", dir.path())], WatcherConfig::default());
    let evs = h.take(N, TIMEOUT);
    writer.join().unwrap();
    check(&evs);
    h.assert_quiet(Duration::from_secs(1));
}
