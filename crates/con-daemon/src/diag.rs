//! The daemon's diagnostics: one [`log`] logger for everything the daemon
//! (and the library crates it uses) has to say that is not an event —
//! starting, reloading, a refused config, a run it could not start.
//!
//! Events are the record and go to the log (and journald through the
//! mirror); diagnostics are for whoever runs the daemon. They go to
//! journald as native entries with their priority (`log::Level::Error` →
//! 3 err, `Warn` → 4 warning, `Info` → 5 notice, `Debug` → 6 info),
//! `SYSLOG_IDENTIFIER=con-daemon` and `CON_SOCKET` (the daemon's socket:
//! several daemons on one host, as in tests, stay apart), sent by a thread
//! of its own so that a journald that is behind never holds the daemon up.
//! They also go to standard error as `con daemon: <message>` unless
//! standard error *is* the journal (a systemd service: one entry, not two),
//! and only there when journald is absent (a container without it).
//!
//! A message repeated in a loop (a failing accept, a watcher error every
//! second) must not flood either: the same message at the same level is
//! let through at most [`BURST`] times per [`WINDOW`]; the repeats after
//! that are counted, and the next one let through (or [`log::Log::flush`],
//! which the daemon calls when it stops) says how many were suppressed.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};
use systemd_journal_logger::JournalLog;

/// How often the same message may be said: [`BURST`] times per window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// How many times the same message is said per [`WINDOW`] before repeats
/// are only counted. More than one: an operator who breaks the config
/// twice in a minute is told twice.
pub const BURST: u32 = 5;

/// Distinct messages remembered at most; beyond it, windows that have
/// ended and suppressed nothing are forgotten.
const MAX_KEYS: usize = 1024;

/// Decides, per message, whether it is said or counted as suppressed.
/// Pure: the caller passes the time.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    burst: u32,
    keys: HashMap<String, Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    said: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter letting each message through `burst` times per `window`.
    pub fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst: burst.max(1),
            keys: HashMap::new(),
        }
    }

    /// Whether `key` may be said at `now`: `Some(k)` if so, `k` being how
    /// many repeats of it were suppressed since it was last said; `None` if
    /// this one is suppressed (and counted).
    pub fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        if !self.keys.contains_key(key) && self.keys.len() >= MAX_KEYS {
            let window = self.window;
            self.keys
                .retain(|_, w| w.suppressed > 0 || now.duration_since(w.start) < window);
        }
        let Some(w) = self.keys.get_mut(key) else {
            self.keys.insert(
                key.to_owned(),
                Window {
                    start: now,
                    said: 1,
                    suppressed: 0,
                },
            );
            return Some(0);
        };
        if now.duration_since(w.start) >= self.window {
            let suppressed = w.suppressed;
            *w = Window {
                start: now,
                said: 1,
                suppressed: 0,
            };
            Some(suppressed)
        } else if w.said < self.burst {
            w.said += 1;
            Some(0)
        } else {
            w.suppressed += 1;
            None
        }
    }

    /// The messages with suppressed repeats not yet reported, and how many;
    /// they count as reported afterwards.
    pub fn drain_suppressed(&mut self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .keys
            .iter_mut()
            .filter(|(_, w)| w.suppressed > 0)
            .map(|(k, w)| (k.clone(), std::mem::take(&mut w.suppressed)))
            .collect();
        out.sort();
        out
    }
}

/// One diagnostic on its way to journald.
struct Line {
    level: Level,
    target: String,
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    message: String,
}

/// What the journal thread is given.
enum ToJournal {
    Line(Line),
    /// Answer once everything before has been sent.
    Flush(mpsc::SyncSender<()>),
}

/// Diagnostics queued for journald at most; beyond, they are dropped
/// (counted, and said on stderr where that is not the journal).
const JOURNAL_QUEUE: usize = 1024;

/// How long [`Log::flush`] waits for the queue to reach journald.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// The daemon's logger (see the module documentation).
///
/// journald is written by a thread of its own through a bounded queue: a
/// send to journald's socket blocks while journald is behind, and a
/// diagnostic must never hold the daemon (its start, a request, the
/// supervisor) up. A full queue drops the diagnostic and counts it.
pub struct DaemonLogger {
    journal: mpsc::SyncSender<ToJournal>,
    /// Whether lines go to stderr too: unless stderr is the journal.
    stderr: bool,
    limiter: Mutex<RateLimiter>,
    /// Diagnostics dropped because the journal queue was full, not yet said.
    dropped: std::sync::atomic::AtomicU64,
}

/// The level below which nothing is said (`Debug` and `Trace` are for
/// development).
const MAX_LEVEL: LevelFilter = LevelFilter::Info;

impl DaemonLogger {
    /// A logger for the daemon serving `socket` (see the module
    /// documentation); starts its journal thread.
    pub fn new(socket: &Path) -> Self {
        let stderr = !systemd_journal_logger::connected_to_journal();
        let (tx, rx) = mpsc::sync_channel(JOURNAL_QUEUE);
        let socket = socket.display().to_string();
        std::thread::Builder::new()
            .name("con-diag-journal".into())
            .spawn(move || journal_thread(&rx, &socket, !stderr))
            .map_or_else(
                // No thread, no journal: stderr says everything.
                |_| Self {
                    journal: mpsc::sync_channel(0).0,
                    stderr: true,
                    limiter: Mutex::new(RateLimiter::new(WINDOW, BURST)),
                    dropped: Default::default(),
                },
                |_| Self {
                    journal: tx,
                    stderr,
                    limiter: Mutex::new(RateLimiter::new(WINDOW, BURST)),
                    dropped: Default::default(),
                },
            )
    }

    /// Installs it as the process's logger. Fails if one is installed
    /// already.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(MAX_LEVEL);
        Ok(())
    }

    fn emit(&self, record: &Record<'_>, message: &str) {
        let line = Line {
            level: record.level(),
            target: record.target().to_owned(),
            module_path: record.module_path().map(str::to_owned),
            file: record.file().map(str::to_owned),
            line: record.line(),
            message: message.to_owned(),
        };
        let queued = self.journal.try_send(ToJournal::Line(line)).is_ok();
        if !queued {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if self.stderr || !queued {
            to_stderr(message);
        }
    }
}

/// One line on stderr, written at once so concurrent lines do not
/// interleave.
fn to_stderr(message: &str) {
    let _ = std::io::stderr().write_all(format!("con daemon: {message}\n").as_bytes());
}

/// Sends the queued diagnostics to journald until the logger is gone. If
/// journald does not answer, the lines are written to stderr instead when
/// `only_journal` (stderr is the journal's stream then; otherwise stderr
/// has them already).
fn journal_thread(rx: &mpsc::Receiver<ToJournal>, socket: &str, only_journal: bool) {
    let journal = JournalLog::empty().ok().map(|j| {
        j.with_syslog_identifier("con-daemon".to_owned())
            .with_extra_fields([("CON_SOCKET", socket)])
    });
    while let Ok(item) = rx.recv() {
        let line = match item {
            ToJournal::Line(line) => line,
            ToJournal::Flush(done) => {
                let _ = done.try_send(());
                continue;
            }
        };
        let sent = journal.as_ref().is_some_and(|j| {
            j.journal_send(
                &Record::builder()
                    .args(format_args!("{}", line.message))
                    .level(line.level)
                    .target(&line.target)
                    .module_path(line.module_path.as_deref())
                    .file(line.file.as_deref())
                    .line(line.line)
                    .build(),
            )
            .is_ok()
        });
        if !sent && only_journal {
            to_stderr(&line.message);
        }
    }
}

fn key(level: Level, message: &str) -> String {
    format!("{level}\u{0}{message}")
}

impl Log for DaemonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= MAX_LEVEL
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&key(record.level(), &message), Instant::now());
        match admitted {
            None => {}
            Some(0) => self.emit(record, &message),
            Some(k) => self.emit(
                record,
                &format!("{message} (and {k} more like it suppressed before)"),
            ),
        }
    }

    /// Says how many repeats of each message were suppressed and not yet
    /// reported, and how many diagnostics journald's queue dropped; then
    /// waits (up to a second) for the queue to reach journald.
    fn flush(&self) {
        let pending = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain_suppressed();
        let mut lines: Vec<(Level, String)> = pending
            .into_iter()
            .map(|(key, k)| {
                let (level, message) = key.split_once('\u{0}').unwrap_or(("WARN", &key));
                (
                    level.parse().unwrap_or(Level::Warn),
                    format!("{k} more like this were suppressed: {message}"),
                )
            })
            .collect();
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            lines.push((
                Level::Warn,
                format!("{dropped} diagnostic(s) did not reach journald: it was not keeping up"),
            ));
        }
        for (level, line) in lines {
            self.emit(
                &Record::builder()
                    .args(format_args!("{line}"))
                    .level(level)
                    .target(module_path!())
                    .build(),
                &line,
            );
        }
        let (done, finished) = mpsc::sync_channel(1);
        if self.journal.try_send(ToJournal::Flush(done)).is_ok() {
            let _ = finished.recv_timeout(FLUSH_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_message_is_said_a_burst_per_window_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Duration::from_secs(10), 2);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.admit("disk", at(0)), Some(0));
        assert_eq!(l.admit("disk", at(1)), Some(0));
        // Over the burst: counted, not said.
        for s in 2..9 {
            assert_eq!(l.admit("disk", at(s)), None, "at {s} s");
        }
        // Another message is not held back by this one.
        assert_eq!(l.admit("other", at(3)), Some(0));
        // The next window's first says how many were suppressed.
        assert_eq!(l.admit("disk", at(10)), Some(7));
        assert_eq!(l.admit("disk", at(11)), Some(0));
        assert_eq!(l.admit("disk", at(12)), None);
        // What is still counted is handed over once.
        assert_eq!(l.drain_suppressed(), vec![("disk".to_owned(), 1)]);
        assert_eq!(l.drain_suppressed(), vec![]);
        assert_eq!(l.admit("disk", at(25)), Some(0), "reported already");
    }

    #[test]
    fn a_loop_of_one_message_is_said_burst_times_a_window() {
        // One message every 10 ms for 3 windows of 1 s.
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Duration::from_secs(1), BURST);
        let said = (0..300)
            .filter(|i| {
                l.admit("accept: EMFILE", t0 + Duration::from_millis(i * 10))
                    .is_some()
            })
            .count();
        assert_eq!(said, 3 * BURST as usize);
    }

    #[test]
    fn the_remembered_messages_are_bounded() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Duration::from_secs(1), 1);
        for i in 0..(MAX_KEYS * 3) {
            l.admit(&format!("m{i}"), t0 + Duration::from_secs(2 * i as u64));
        }
        assert!(l.keys.len() <= MAX_KEYS);
    }
}
