//! The watching thread: scans, inotify, overflow rescans, and the set of
//! arrivals already recorded.
//!
//! A scan that runs while tasks keep arriving cannot trust `readdir` alone
//! for order: on ext4 entries come in hash order, so a task created during
//! the listing can be missed while a later-named one is listed. Each scan is
//! therefore closed by a *fence*: the thread creates a file in a private
//! directory watched by the same inotify instance and, until that file's
//! event arrives, collects instead of handling every arrival reported for
//! the scanned inboxes. inotify delivers in order, so everything created
//! before the fence is then either listed or collected, and the union is
//! recorded in name order; what comes after the fence is newer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use con_event::NewEvent;
use notify::event::{AccessKind, AccessMode, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tempfile::TempDir;

use crate::classify::{classify_with, key_of, vanished};
use crate::provenance::{Provenance, birth_time};
use crate::{ArrivalKey, InboxSpec, WatchError, WatcherConfig, is_task_name};

/// How many inotify events may wait for the watching thread. Past that the
/// notify thread drops events and asks for a rescan instead of blocking, so
/// neither memory nor the notify thread depends on how fast the daemon
/// consumes.
const QUEUE_CAP: usize = 16 * 1024;

/// Longest sleep between attempts to hand an event to a full output channel.
const MAX_BACKOFF: Duration = Duration::from_millis(10);

/// Name prefix of fence directories in the temp dir; the creating
/// process's pid follows, so that a later watcher can tell a fence left by
/// a killed process (`kill -9` runs no destructor) from a live one.
const FENCE_PREFIX: &str = "con-inbox-fence-";

/// Removes the fence directories in `dir` whose process is gone. A fence is
/// empty between scans, so only an empty one is removed (`remove_dir`); a
/// live process's fence is left alone.
fn remove_stale_fences(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(FENCE_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// How long a scan waits, with no event at all, for its fence before
/// giving up on strict order.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a scan lists again because events were lost while it waited
/// for its fence, before it settles for what it has.
const MAX_SCAN_ATTEMPTS: usize = 8;

/// Watches inboxes and sends one `inbox.arrived` [`NewEvent`] per `.task`
/// arrival. Dropping it stops and joins the watching thread.
pub struct InboxWatcher {
    watcher: Mutex<Option<RecommendedWatcher>>,
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// State the notify callback, the watching thread and the handle share.
#[derive(Default)]
struct Shared {
    /// Filesystem events sent to the thread and not yet taken.
    queued: AtomicUsize,
    /// Events were dropped: the thread must rescan everything.
    overflowed: AtomicBool,
    /// The handle was dropped.
    stop: AtomicBool,
    /// Arrivals currently remembered (see [`InboxWatcher::tracked`]).
    tracked: AtomicUsize,
}

enum Msg {
    Fs(notify::Result<Event>),
    Add(InboxSpec),
    Remember(HashSet<ArrivalKey>, Provenance),
    Stop,
}

impl InboxWatcher {
    /// Starts watching `inboxes`, logging errors with `log::warn!`. See
    /// [`InboxWatcher::start_with_errors`].
    pub fn start(
        inboxes: Vec<InboxSpec>,
        config: WatcherConfig,
        recorded: HashSet<ArrivalKey>,
        out: SyncSender<NewEvent>,
    ) -> Result<InboxWatcher, WatchError> {
        Self::start_with_errors(inboxes, config, recorded, out, |e| {
            log::warn!("inbox watcher: {e}");
        })
    }

    /// Starts watching `inboxes`.
    ///
    /// Each inbox is watched first and then scanned in file-name order, so
    /// a task that lands meanwhile is seen by one or the other (and recorded
    /// once). Arrivals whose key is in `recorded` are never sent again.
    /// Events go to `out`; when it is full the watching thread waits.
    /// Problems that do not stop the watcher go to `on_error`, on the
    /// watching thread. Fails if an inbox is missing or cannot be watched.
    pub fn start_with_errors(
        inboxes: Vec<InboxSpec>,
        config: WatcherConfig,
        recorded: HashSet<ArrivalKey>,
        out: SyncSender<NewEvent>,
        on_error: impl FnMut(WatchError) + Send + 'static,
    ) -> Result<InboxWatcher, WatchError> {
        Self::start_with_provenance(
            inboxes,
            config,
            recorded,
            Provenance::default(),
            out,
            on_error,
        )
    }

    /// [`InboxWatcher::start_with_errors`] knowing where every file already
    /// in the log last arrived (see [`Provenance`]): a file that arrives
    /// again is recorded unverified even across restarts. Without it, only
    /// re-arrivals seen by this watcher are caught.
    pub fn start_with_provenance(
        inboxes: Vec<InboxSpec>,
        config: WatcherConfig,
        recorded: HashSet<ArrivalKey>,
        provenance: Provenance,
        out: SyncSender<NewEvent>,
        mut on_error: impl FnMut(WatchError) + Send + 'static,
    ) -> Result<InboxWatcher, WatchError> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());

        remove_stale_fences(&std::env::temp_dir());
        let fence = match tempfile::Builder::new()
            .prefix(&format!("{FENCE_PREFIX}{}-", std::process::id()))
            .tempdir()
        {
            Ok(d) => Some(d),
            Err(source) => {
                on_error(WatchError::Io {
                    op: "create fence directory (scans may misorder tasks arriving meanwhile)",
                    path: std::env::temp_dir(),
                    source,
                });
                None
            }
        };
        let fence_dir = fence.as_ref().map(|d| d.path().to_owned());

        let notify_tx = tx.clone();
        let notify_shared = Arc::clone(&shared);
        let handler = move |res: notify::Result<Event>| {
            if let Ok(ev) = &res
                && !relevant(ev, fence_dir.as_deref())
            {
                return;
            }
            if notify_shared.queued.fetch_add(1, Ordering::SeqCst) >= QUEUE_CAP {
                notify_shared.queued.fetch_sub(1, Ordering::SeqCst);
                notify_shared.overflowed.store(true, Ordering::SeqCst);
                return;
            }
            if notify_tx.send(Msg::Fs(res)).is_err() {
                notify_shared.queued.fetch_sub(1, Ordering::SeqCst);
            }
        };
        let mut watcher =
            notify::recommended_watcher(handler).map_err(|source| WatchError::Watch {
                path: PathBuf::new(),
                source,
            })?;
        let fence =
            fence.and_then(
                |d| match watcher.watch(d.path(), RecursiveMode::NonRecursive) {
                    Ok(()) => Some(d),
                    Err(source) => {
                        on_error(WatchError::Watch {
                            path: d.path().to_owned(),
                            source,
                        });
                        None
                    }
                },
            );

        let worker = Worker {
            config,
            rx,
            inboxes: HashMap::new(),
            known: HashMap::new(),
            pending: recorded,
            provenance,
            out,
            on_error: Box::new(on_error),
            shared: Arc::clone(&shared),
            stopped: false,
            backlog: VecDeque::new(),
            fence,
            fence_seq: 0,
        };
        let thread = thread::Builder::new()
            .name("con-inbox".into())
            .spawn(move || worker.run())
            .map_err(|e| WatchError::Io {
                op: "spawn watcher thread",
                path: PathBuf::new(),
                source: e,
            })?;

        let this = InboxWatcher {
            watcher: Mutex::new(Some(watcher)),
            tx,
            shared,
            thread: Some(thread),
        };
        for spec in inboxes {
            this.add_inbox(spec)?;
        }
        Ok(this)
    }

    /// Watches one more inbox, then scans it (in the background, in
    /// file-name order). Adding an inbox again (after it was recreated)
    /// is fine.
    pub fn add_inbox(&self, spec: InboxSpec) -> Result<(), WatchError> {
        let dir = std::path::absolute(&spec.dir).map_err(|e| WatchError::Io {
            op: "resolve",
            path: spec.dir.clone(),
            source: e,
        })?;
        let meta = fs::metadata(&dir).map_err(|e| WatchError::Io {
            op: "stat",
            path: dir.clone(),
            source: e,
        })?;
        if !meta.is_dir() {
            return Err(WatchError::NotADirectory { path: dir });
        }
        {
            let mut guard = self.watcher.lock().unwrap_or_else(PoisonError::into_inner);
            let watcher = guard.as_mut().ok_or(WatchError::Stopped)?;
            // The watch exists before the thread scans (it handles `Add` in
            // order), so every task is either listed by the scan or reported
            // by inotify afterwards.
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        self.tx
            .send(Msg::Add(InboxSpec {
                name: spec.name,
                dir,
            }))
            .map_err(|_| WatchError::Stopped)
    }

    /// Takes in what the log knows about inboxes about to be added (see
    /// [`InboxWatcher::add_inbox`]) while the watcher runs: `recorded`
    /// arrivals are never sent again, and `provenance` makes a file that
    /// arrived before arrive unverified. Call it before adding the inbox:
    /// messages are handled in order, so the inbox's first scan knows it.
    pub fn remember(
        &self,
        recorded: HashSet<ArrivalKey>,
        provenance: Provenance,
    ) -> Result<(), WatchError> {
        self.tx
            .send(Msg::Remember(recorded, provenance))
            .map_err(|_| WatchError::Stopped)
    }

    /// How many arrivals the watcher currently remembers: those whose files
    /// are still in a watched inbox. Files that leave an inbox are forgotten.
    pub fn tracked(&self) -> usize {
        self.shared.tracked.load(Ordering::SeqCst)
    }
}

impl Drop for InboxWatcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Stop);
        // Stops the notify thread, which drops its sender.
        let watcher = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(watcher);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether the notify thread should pass an event on. Opens, reads, data
/// writes and attribute changes are dropped here (our own reads cause
/// some); so are events for non-task names, except fences and those that
/// may concern an inbox directory itself.
fn relevant(ev: &Event, fence: Option<&Path>) -> bool {
    if ev.need_rescan() {
        return true;
    }
    let any_task = || ev.paths.iter().any(|p| is_task_name(p));
    match ev.kind {
        EventKind::Create(_) if fence.is_some() && ev.paths.iter().any(|p| p.parent() == fence) => {
            true
        }
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => any_task(),
        // A MOVE_SELF of an inbox has no rename cookie; a plain rename does.
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            any_task() || ev.tracker().is_none()
        }
        EventKind::Remove(RemoveKind::File) => any_task(),
        EventKind::Remove(_) => true,
        _ => false,
    }
}

/// Why a task is being looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Complete: renamed in, closed after writing, or found by a scan.
    Complete,
    /// Just created: a regular file may still be being written.
    Created,
}

/// The paths an event reports as (possibly) arrived, and how.
fn arrivals(ev: &Event) -> Option<(Trigger, &[PathBuf])> {
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            Some((Trigger::Complete, &ev.paths))
        }
        // [from, to]; the from side was reported on its own already.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            Some((Trigger::Complete, ev.paths.get(1..).unwrap_or_default()))
        }
        EventKind::Create(_) => Some((Trigger::Created, &ev.paths)),
        _ => None,
    }
}

/// How waiting for a fence ended.
enum Fence {
    /// Everything that happened before it has been seen.
    Passed,
    /// Events were dropped meanwhile: list again.
    Lost,
    /// No fence possible: go on without one.
    Unavailable,
    /// The watcher is stopping.
    Stopped,
}

/// Task names found in one inbox by a scan, in name (byte) order, each
/// with whether it is known to be complete (listed, closed or renamed in)
/// rather than only created.
type Found = BTreeMap<OsString, bool>;

struct Worker {
    config: WatcherConfig,
    rx: Receiver<Msg>,
    /// Inbox directory → inbox name.
    inboxes: HashMap<PathBuf, String>,
    /// Task path → the arrival recorded for it, for files still present.
    known: HashMap<PathBuf, ArrivalKey>,
    /// Recorded keys (from the caller) of inboxes not scanned yet.
    pending: HashSet<ArrivalKey>,
    /// Where every recorded file last arrived.
    provenance: Provenance,
    out: SyncSender<NewEvent>,
    on_error: Box<dyn FnMut(WatchError) + Send>,
    shared: Arc<Shared>,
    /// The handle is gone or nobody receives: stop working.
    stopped: bool,
    /// Inboxes added while a scan waited for its fence.
    backlog: VecDeque<InboxSpec>,
    /// Private watched directory for fences (removed when the thread ends).
    fence: Option<TempDir>,
    fence_seq: u64,
}

impl Worker {
    fn run(mut self) {
        while !self.stopped {
            let msg = match self.backlog.pop_front() {
                Some(spec) => Msg::Add(spec),
                None => match self.rx.recv() {
                    Ok(m) => self.taken(m),
                    Err(_) => break,
                },
            };
            match msg {
                Msg::Stop => break,
                Msg::Add(spec) => self.add(spec),
                Msg::Remember(recorded, provenance) => self.take_history(recorded, &provenance),
                Msg::Fs(res) => self.on_fs(res),
            }
            if self.shared.overflowed.swap(false, Ordering::SeqCst) {
                self.rescan_all();
            }
        }
    }

    /// Accounts for a message taken off the channel.
    fn taken(&self, msg: Msg) -> Msg {
        if matches!(msg, Msg::Fs(_)) {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        msg
    }

    fn take_history(&mut self, recorded: HashSet<ArrivalKey>, provenance: &Provenance) {
        self.pending.extend(recorded);
        self.provenance.merge(provenance);
    }

    fn add(&mut self, spec: InboxSpec) {
        self.inboxes.insert(spec.dir.clone(), spec.name);
        self.scan(vec![spec.dir]);
    }

    fn on_fs(&mut self, res: notify::Result<Event>) {
        let ev = match res {
            Ok(ev) => ev,
            Err(source) => {
                self.report(WatchError::Notify { source });
                self.rescan_all();
                return;
            }
        };
        if ev.need_rescan() {
            self.rescan_all();
            return;
        }
        if let Some((trigger, paths)) = arrivals(&ev) {
            for p in paths {
                self.arrival(p, trigger);
            }
        } else if matches!(
            ev.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_)
        ) {
            for p in &ev.paths {
                self.departure(p);
            }
        }
    }

    /// A task may have arrived at `path`: record it unless it already is.
    fn arrival(&mut self, path: &Path, trigger: Trigger) {
        if !is_task_name(path) {
            return;
        }
        let Some(inbox) = path.parent().and_then(|d| self.inboxes.get(d)).cloned() else {
            return;
        };
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if vanished(&e) => {
                self.forget(path);
                return;
            }
            Err(e) => {
                self.report(WatchError::Io {
                    op: "lstat",
                    path: path.to_owned(),
                    source: e,
                });
                return;
            }
        };
        if trigger == Trigger::Created && still_being_written(&meta) {
            return;
        }
        self.consider(path, &inbox, &meta);
    }

    fn consider(&mut self, path: &Path, inbox: &str, meta: &Metadata) {
        let key = key_of(path, meta);
        if self.known.get(path) == Some(&key) {
            return;
        }
        if self.pending.remove(&key) {
            self.remember(path, key);
            return;
        }
        match classify_with(path, meta, &self.config) {
            Ok(None) => {}
            Ok(Some(mut c)) => {
                self.provenance.check(&mut c, inbox, birth_time(meta));
                if c.truncated {
                    self.report(WatchError::Truncated {
                        path: path.to_owned(),
                        size: c.size,
                        recorded: c.content.len(),
                    });
                }
                self.remember(path, c.key.clone());
                self.emit(c.into_event(inbox));
            }
            Err(e) => self.report(e),
        }
    }

    /// Something left `path`. Forget its arrival unless the file there now
    /// is the recorded one (events are handled after the fact, so a
    /// replacement may already have been recorded).
    fn departure(&mut self, path: &Path) {
        if let Some(name) = self.inboxes.remove(path) {
            self.known.retain(|p, _| p.parent() != Some(path));
            self.publish_tracked();
            self.report(WatchError::InboxGone {
                name,
                path: path.to_owned(),
            });
            return;
        }
        let Some(key) = self.known.get(path) else {
            return;
        };
        let still_there = fs::symlink_metadata(path).is_ok_and(|m| key_of(path, &m) == *key);
        if !still_there {
            self.forget(path);
        }
    }

    fn rescan_all(&mut self) {
        let mut dirs: Vec<PathBuf> = self.inboxes.keys().cloned().collect();
        dirs.sort();
        self.scan(dirs);
    }

    /// Records every task present in `dirs` that is not recorded yet,
    /// smallest name (oldest) first in each inbox, then forgets arrivals no
    /// longer present.
    fn scan(&mut self, dirs: Vec<PathBuf>) {
        let mut found: BTreeMap<PathBuf, Found> =
            dirs.into_iter().map(|d| (d, Found::new())).collect();
        for _ in 0..MAX_SCAN_ATTEMPTS {
            for (dir, names) in &mut found {
                self.list(dir, names);
            }
            match self.fence(&mut found) {
                Fence::Passed | Fence::Unavailable => break,
                // Events were lost for every inbox, not only these.
                Fence::Lost => {
                    for dir in self.inboxes.keys() {
                        found.entry(dir.clone()).or_default();
                    }
                }
                Fence::Stopped => return,
            }
        }

        for (dir, names) in found {
            // It may have gone away while the fence was awaited.
            let Some(inbox) = self.inboxes.get(&dir).cloned() else {
                continue;
            };
            let mut present = HashSet::with_capacity(names.len());
            for (name, complete) in names {
                if self.stopped {
                    return;
                }
                let path = dir.join(name);
                match fs::symlink_metadata(&path) {
                    Ok(meta) => {
                        if complete || !still_being_written(&meta) {
                            self.consider(&path, &inbox, &meta);
                        }
                    }
                    Err(e) if vanished(&e) => continue,
                    Err(source) => self.report(WatchError::Io {
                        op: "lstat",
                        path: path.clone(),
                        source,
                    }),
                }
                present.insert(path);
            }
            self.known
                .retain(|p, _| p.parent() != Some(&dir) || present.contains(p));
            self.pending
                .retain(|k| Path::new(&k.path).parent() != Some(&dir));
            self.publish_tracked();
        }
    }

    /// Adds the task names in `dir` to `names`.
    fn list(&mut self, dir: &Path, names: &mut Found) {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(source) => {
                self.report(WatchError::Io {
                    op: "read directory",
                    path: dir.to_owned(),
                    source,
                });
                return;
            }
        };
        for entry in entries {
            match entry {
                Ok(e) if is_task_name(Path::new(&e.file_name())) => {
                    names.insert(e.file_name(), true);
                }
                Ok(_) => {}
                Err(source) => self.report(WatchError::Io {
                    op: "read directory",
                    path: dir.to_owned(),
                    source,
                }),
            }
        }
    }

    /// Waits until inotify has delivered everything that happened before
    /// now. Arrivals in the inboxes being scanned are added to `found`
    /// instead of being handled; other events are handled as usual.
    fn fence(&mut self, found: &mut BTreeMap<PathBuf, Found>) -> Fence {
        let Some(dir) = self.fence.as_ref().map(|d| d.path().to_owned()) else {
            return Fence::Unavailable;
        };
        self.fence_seq += 1;
        let marker = dir.join(self.fence_seq.to_string());
        if let Err(source) = File::create(&marker) {
            // The private directory is gone (e.g. a tmp cleaner): scan
            // without fences from now on rather than fail every scan.
            self.fence = None;
            self.report(WatchError::Io {
                op: "create fence (later scans may misorder tasks arriving meanwhile)",
                path: marker,
                source,
            });
            return Fence::Unavailable;
        }
        // The create event is what we wait for; the file is not needed.
        let _ = fs::remove_file(&marker);

        loop {
            if self.shared.overflowed.swap(false, Ordering::SeqCst) {
                return Fence::Lost;
            }
            // Only silence counts: while events keep coming the fence is
            // still ahead in the queue (a dropped one shows as an overflow).
            let msg = match self.rx.recv_timeout(FENCE_TIMEOUT) {
                Ok(m) => self.taken(m),
                Err(RecvTimeoutError::Timeout) => {
                    self.report(WatchError::Io {
                        op: "wait for fence (order of this scan not guaranteed)",
                        path: marker,
                        source: io::Error::new(io::ErrorKind::TimedOut, "no inotify event"),
                    });
                    return Fence::Unavailable;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stopped = true;
                    return Fence::Stopped;
                }
            };
            let ev = match msg {
                Msg::Stop => {
                    self.stopped = true;
                    return Fence::Stopped;
                }
                Msg::Add(spec) => {
                    self.backlog.push_back(spec);
                    continue;
                }
                // Knowledge only (no scan): taken in at once, so it is there
                // before any inbox added after it is scanned.
                Msg::Remember(recorded, provenance) => {
                    self.take_history(recorded, &provenance);
                    continue;
                }
                Msg::Fs(Err(source)) => {
                    self.report(WatchError::Notify { source });
                    return Fence::Lost;
                }
                Msg::Fs(Ok(ev)) => ev,
            };
            if ev.need_rescan() {
                return Fence::Lost;
            }
            if matches!(ev.kind, EventKind::Create(_)) && ev.paths.contains(&marker) {
                return Fence::Passed;
            }
            match arrivals(&ev) {
                Some((trigger, paths)) => {
                    for p in paths {
                        let collected =
                            match (p.parent().and_then(|d| found.get_mut(d)), p.file_name()) {
                                (Some(names), Some(name)) if is_task_name(p) => {
                                    let complete = trigger == Trigger::Complete;
                                    names
                                        .entry(name.to_owned())
                                        .and_modify(|c| *c |= complete)
                                        .or_insert(complete);
                                    true
                                }
                                _ => false,
                            };
                        if !collected {
                            self.arrival(p, trigger);
                        }
                    }
                }
                None => self.on_fs(Ok(ev)),
            }
        }
    }

    fn remember(&mut self, path: &Path, key: ArrivalKey) {
        self.known.insert(path.to_owned(), key);
        self.publish_tracked();
    }

    fn forget(&mut self, path: &Path) {
        if self.known.remove(path).is_some() {
            self.publish_tracked();
        }
    }

    fn publish_tracked(&self) {
        self.shared
            .tracked
            .store(self.known.len(), Ordering::SeqCst);
    }

    fn report(&mut self, e: WatchError) {
        (self.on_error)(e);
    }

    /// Hands `ev` to the caller, waiting while the channel is full. Polls
    /// rather than blocking in `send` so that dropping the handle can always
    /// stop the thread, even when nobody drains the channel.
    fn emit(&mut self, mut ev: NewEvent) {
        let mut backoff = Duration::from_micros(50);
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                self.stopped = true;
                return;
            }
            match self.out.try_send(ev) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) => {
                    ev = back;
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.stopped = true;
                    return;
                }
            }
        }
    }
}

/// A regular file that was just created under its final name and has a
/// single link is still being written: its close-write will report it.
/// Symlinks, hard links and other types get no close-write, so they count
/// as complete when created.
fn still_being_written(meta: &Metadata) -> bool {
    meta.file_type().is_file() && meta.nlink() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_of_dead_processes_are_removed_and_live_ones_kept() {
        #![allow(clippy::unwrap_used)]
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's largest cannot be running.
        let dead = dir.path().join(format!("{FENCE_PREFIX}4194305-abc"));
        let live = dir
            .path()
            .join(format!("{FENCE_PREFIX}{}-def", std::process::id()));
        let unrelated = dir.path().join("con-inbox-fence-notapid");
        for d in [&dead, &live, &unrelated] {
            std::fs::create_dir(d).unwrap();
        }
        remove_stale_fences(dir.path());
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn watcher_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<InboxWatcher>();
    }

    #[test]
    fn relevant_keeps_only_what_the_thread_acts_on() {
        let task = PathBuf::from("/in/1.task");
        let tmp = PathBuf::from("/in/1.task.tmp");
        let ev = |kind| Event::new(kind);
        assert!(relevant(
            &ev(EventKind::Modify(ModifyKind::Name(RenameMode::To))).add_path(task.clone()),
            None
        ));
        assert!(!relevant(
            &ev(EventKind::Modify(ModifyKind::Name(RenameMode::To))).add_path(tmp.clone()),
            None
        ));
        assert!(!relevant(
            &ev(EventKind::Access(AccessKind::Close(AccessMode::Read))).add_path(task.clone()),
            None
        ));
        assert!(!relevant(
            &ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)))
                .add_path(tmp)
                .set_tracker(7),
            None
        ));
        assert!(relevant(
            &ev(EventKind::Create(notify::event::CreateKind::File))
                .add_path(PathBuf::from("/fence/1")),
            Some(Path::new("/fence"))
        ));
        assert!(relevant(
            &ev(EventKind::Other).set_flag(notify::event::Flag::Rescan),
            None
        ));
    }
}
