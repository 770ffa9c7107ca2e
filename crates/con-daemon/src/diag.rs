//! The daemon's diagnostics: one [`log`] logger for everything the daemon
//! (and the library crates it uses) has to say that is not an event —
//! starting, reloading, a refused config, a run it could not start.
//!
//! Events are the record and go to the log (and journald through the
//! mirror); diagnostics are for whoever runs the daemon. They go to
//! journald as native entries with their priority (`log::Level::Error` →
//! 3 err, `Warn` → 4 warning, `Info` → 5 notice, `Debug` → 6 info),
//! `SYSLOG_IDENTIFIER=con-daemon` and `CON_SOCKET` (the daemon's socket:
//! several daemons on one host, as in tests, stay apart). They also go to
//! standard error as `con daemon: <message>` unless standard error *is*
//! the journal (a systemd service: one entry, not two), and only there
//! when journald is absent (a container without it).
//!
//! A message repeated in a loop (a failing accept, a watcher error every
//! second) must not flood either: the same message at the same level is
//! let through at most [`BURST`] times per [`WINDOW`]; the repeats after
//! that are counted, and the next one let through (or [`log::Log::flush`],
//! which the daemon calls when it stops) says how many were suppressed.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
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

/// The daemon's logger (see the module documentation).
pub struct DaemonLogger {
    journal: Option<JournalLog>,
    stderr: bool,
    limiter: Mutex<RateLimiter>,
}

/// The level below which nothing is said (`Debug` and `Trace` are for
/// development).
const MAX_LEVEL: LevelFilter = LevelFilter::Info;

impl DaemonLogger {
    /// A logger for the daemon serving `socket`: journald if it answers,
    /// standard error unless that is the journal already.
    pub fn new(socket: &Path) -> Self {
        let journal = JournalLog::empty().ok().map(|j| {
            j.with_syslog_identifier("con-daemon".to_owned())
                .with_extra_fields([("CON_SOCKET", socket.display().to_string())])
        });
        let stderr = journal.is_none() || !systemd_journal_logger::connected_to_journal();
        Self {
            journal,
            stderr,
            limiter: Mutex::new(RateLimiter::new(WINDOW, BURST)),
        }
    }

    /// Installs it as the process's logger. Fails if one is installed
    /// already.
    pub fn install(self) -> Result<(), log::SetLoggerError> {
        log::set_boxed_logger(Box::new(self))?;
        log::set_max_level(MAX_LEVEL);
        Ok(())
    }

    fn emit(&self, record: &Record<'_>, message: &str) {
        let sent = self.journal.as_ref().is_some_and(|j| {
            j.journal_send(
                &Record::builder()
                    .args(format_args!("{message}"))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            )
            .is_ok()
        });
        if self.stderr || !sent {
            // One write per line, so concurrent messages do not interleave.
            let _ = std::io::stderr().write_all(format!("con daemon: {message}\n").as_bytes());
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
    /// reported.
    fn flush(&self) {
        let pending = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain_suppressed();
        for (key, k) in pending {
            let (level, message) = key.split_once('\u{0}').unwrap_or(("WARN", &key));
            let level = level.parse().unwrap_or(Level::Warn);
            let line = format!("{k} more like this were suppressed: {message}");
            self.emit(
                &Record::builder()
                    .args(format_args!("{line}"))
                    .level(level)
                    .target(module_path!())
                    .build(),
                &line,
            );
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
