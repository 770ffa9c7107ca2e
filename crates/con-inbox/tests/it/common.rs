//! Helpers shared by the integration tests: tasks written by real users,
//! inboxes, and event collection.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use con_event::payloads::InboxArrived;
use con_event::{NewEvent, Payload};
use con_inbox::{ArrivalKey, InboxSpec, InboxWatcher, WatchError, WatcherConfig};
use con_test_support::{TestGroup, TestUser};

/// These tests create users and write as them: they need root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "con-inbox tests must run as root (they create real users)"
    );
}

/// Writes `x.task.tmp` then renames it to `x.task`, as `user` (uid and
/// primary gid only).
pub fn drop_task_as(user: &TestUser, dir: &Path, id: &str, content: &str) -> PathBuf {
    let tmp = dir.join(format!("{id}.task.tmp"));
    let task = dir.join(format!("{id}.task"));
    let script = format!(
        "printf '%s' '{content}' > '{}' && mv '{}' '{}'",
        tmp.display(),
        tmp.display(),
        task.display()
    );
    let out = user.command("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "as {}: {script}: {}",
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
    task
}

/// A user whose supplementary groups include `group`.
pub fn member_of(group: &TestGroup) -> TestUser {
    let user = TestUser::unique("ct");
    group.add(&user);
    user
}

/// A world-writable temporary directory, so test users can drop tasks.
pub fn inbox_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Writes a task as root the way writers should: tmp file, then rename.
pub fn drop_task(dir: &Path, id: &str, content: &[u8]) -> PathBuf {
    let tmp = dir.join(format!("{id}.task.tmp"));
    let task = dir.join(format!("{id}.task"));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, &task).unwrap();
    task
}

/// The `inbox.arrived` payload of an event.
pub fn arrived(ev: &NewEvent) -> &InboxArrived {
    match &ev.payload {
        Payload::InboxArrived(p) => p,
        other => panic!("expected inbox.arrived, got {other:?}"),
    }
}

/// A running watcher with its output and the errors it reported.
pub struct Harness {
    pub watcher: InboxWatcher,
    pub rx: Receiver<NewEvent>,
    pub errors: Arc<Mutex<Vec<WatchError>>>,
}

impl Harness {
    pub fn start(inboxes: Vec<InboxSpec>, config: WatcherConfig) -> Self {
        Self::start_recorded(inboxes, config, HashSet::new(), 1024)
    }

    pub fn start_recorded(
        inboxes: Vec<InboxSpec>,
        config: WatcherConfig,
        recorded: HashSet<ArrivalKey>,
        bound: usize,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(bound);
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        let watcher = InboxWatcher::start_with_errors(inboxes, config, recorded, tx, move |e| {
            sink.lock().unwrap().push(e)
        })
        .unwrap();
        Self {
            watcher,
            rx,
            errors,
        }
    }

    /// The next event, failing the test after `timeout`.
    pub fn next(&self, timeout: Duration) -> NewEvent {
        match self.rx.recv_timeout(timeout) {
            Ok(ev) => ev,
            Err(e) => panic!("no event within {timeout:?} ({e:?})"),
        }
    }

    /// Exactly `n` events, failing after `timeout` overall.
    pub fn take(&self, n: usize, timeout: Duration) -> Vec<NewEvent> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => out.push(ev),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("only {} of {n} events within {timeout:?}", out.len())
                }
                Err(RecvTimeoutError::Disconnected) => panic!("watcher stopped"),
            }
        }
        out
    }

    /// Fails if any event arrives within `quiet`.
    pub fn assert_quiet(&self, quiet: Duration) {
        if let Ok(ev) = self.rx.recv_timeout(quiet) {
            panic!("unexpected event: {:?}", arrived(&ev));
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

pub fn spec(name: &str, dir: &Path) -> InboxSpec {
    InboxSpec {
        name: name.into(),
        dir: dir.to_owned(),
    }
}

/// File names (without directory) of `events`, in order.
pub fn names(events: &[NewEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            Path::new(&arrived(e).path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

pub const WAIT: Duration = Duration::from_secs(10);
pub const QUIET: Duration = Duration::from_millis(500);
