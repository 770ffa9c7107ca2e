//! What the log may hold, and what each agent may add to it.
//!
//! A full disk stops the writer, and so every agent and every record; one
//! agent must not be able to cause it. So each agent's appends (its own and
//! the model calls the gateway records for it) are bounded per event, per
//! attachment and per time window, and the log as a whole by `log_max_mb`:
//! agents are refused from `log_max_mb - log_reserve_mb` on, so the reserve
//! stays for operators and for the daemon's own events (among them the
//! records of these refusals), and operators are refused at `log_max_mb`.
//! The daemon's own events are never refused here: losing `run.exited` or
//! an enforcement record would cost more than the bytes they take.
//!
//! The log's size is measured from its directory every
//! [`LOG_SIZE_INTERVAL`], not per append; bytes appended through the socket
//! since are added to that measure, so a burst cannot run past a limit
//! before the next measure.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use con_event::NewEvent;
use con_event::payloads::EnforcementAction;
use con_protocol::ErrorCode;

use crate::Shared;

/// How often the log's size on disk is measured.
pub(crate) const LOG_SIZE_INTERVAL: Duration = Duration::from_secs(2);

/// The contract id an agent's quota refusals are recorded under.
pub const QUOTA_CONTRACT: &str = "CON-LOG-005";

/// The contract id the log-size alert is recorded under.
pub const LOG_SIZE_CONTRACT: &str = "CON-LOG-004";

const MIB: u64 = 1024 * 1024;

/// Limits on the log's size and on each agent's appends, in bytes
/// (`[contracts.system]` in `con.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// `log_max_mb`: no socket append once the log is this large.
    pub max_bytes: u64,
    /// `log_reserve_mb`: agents are refused from `max_bytes - reserve_bytes` on.
    pub reserve_bytes: u64,
    /// `log_min_free_mb`: the log stops recording with less free space
    /// than this on its file system (the writer's `min_free_bytes`).
    pub min_free_bytes: u64,
    /// `agent_max_event_kb`: an agent's event, payload and attachments.
    pub agent_event_bytes: u64,
    /// `agent_max_attachment_kb`: one attachment of an agent's event.
    pub agent_attachment_bytes: u64,
    /// `agent_max_mb_per_minute`.
    pub agent_bytes_per_minute: u64,
    /// `agent_max_mb_per_hour`.
    pub agent_bytes_per_hour: u64,
}

impl LogLimits {
    /// The limits `[contracts.system]` sets.
    pub fn from_config(c: &con_config::SystemContracts) -> Self {
        Self {
            max_bytes: c.log_max_mb.saturating_mul(MIB),
            reserve_bytes: c.log_reserve_mb.saturating_mul(MIB),
            min_free_bytes: c.log_min_free_mb.saturating_mul(MIB),
            agent_event_bytes: c.agent_max_event_kb.saturating_mul(1024),
            agent_attachment_bytes: c.agent_max_attachment_kb.saturating_mul(1024),
            agent_bytes_per_minute: c.agent_max_mb_per_minute.saturating_mul(MIB),
            agent_bytes_per_hour: c.agent_max_mb_per_hour.saturating_mul(MIB),
        }
    }

    /// From this size on, agents' appends are refused.
    fn agent_ceiling(&self) -> u64 {
        self.max_bytes.saturating_sub(self.reserve_bytes)
    }

    /// The windows, by the config field that sets each.
    fn windows(&self) -> [(&'static str, Duration, u64); 2] {
        [
            (
                "agent_max_mb_per_minute",
                Duration::from_secs(60),
                self.agent_bytes_per_minute,
            ),
            (
                "agent_max_mb_per_hour",
                Duration::from_secs(3600),
                self.agent_bytes_per_hour,
            ),
        ]
    }
}

/// A quota an append would exceed.
#[derive(Debug)]
struct Exceeded {
    /// The config field that sets it.
    quota: &'static str,
    /// Its limit, in bytes.
    limit: u64,
    /// What the append would make it (or the event's size), in bytes.
    observed: u64,
    /// What the limit is per: `event`, `attachment`, `minute`, `hour`.
    per: &'static str,
    /// Whether this is the first refusal of this quota for this agent in
    /// the current window (or minute): only that one is recorded.
    record: bool,
}

/// One agent's use of its windows: for each, the window's number (time
/// since the daemon started, in windows), the bytes charged in it, and the
/// number of the last window a refusal was recorded in.
#[derive(Default)]
struct Usage {
    windows: [(u64, u64); 2],
    /// Last minute (or window) in which each quota's refusal was recorded,
    /// by config field.
    recorded: HashMap<&'static str, u64>,
}

/// Every agent's usage and the log's size.
pub(crate) struct Quotas {
    limits: LogLimits,
    started: Instant,
    agents: Mutex<HashMap<String, Usage>>,
    /// The log's size on disk when last measured.
    measured: AtomicU64,
    /// Bytes appended through the socket since the last measure.
    since: AtomicU64,
    /// Whether the log-size alert was recorded since the log last had room
    /// below the agents' ceiling for an agent's largest event.
    alerted: AtomicBool,
}

impl Quotas {
    pub(crate) fn new(limits: LogLimits, measured: u64) -> Self {
        Self {
            limits,
            started: Instant::now(),
            agents: Mutex::new(HashMap::new()),
            measured: AtomicU64::new(measured),
            since: AtomicU64::new(0),
            alerted: AtomicBool::new(false),
        }
    }

    fn window_number(&self, length: Duration) -> u64 {
        (self.started.elapsed().as_secs() / length.as_secs().max(1)).saturating_add(1)
    }

    /// The log's size as last measured plus what was appended since.
    fn log_bytes(&self) -> u64 {
        self.measured
            .load(Ordering::Relaxed)
            .saturating_add(self.since.load(Ordering::Relaxed))
    }

    fn first_refusal(&self, usage: &mut Usage, quota: &'static str, window: u64) -> bool {
        usage.recorded.insert(quota, window) != Some(window)
    }

    /// Checks one agent event's sizes, then charges it to the agent's
    /// windows unless that would exceed one (nothing is charged then).
    fn charge(&self, agent: &str, sizes: &[u64], bytes: u64) -> Result<(), Exceeded> {
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let usage = agents.entry(agent.to_owned()).or_default();
        // Per-event refusals are recorded at most once a minute.
        let minute = self.window_number(Duration::from_secs(60));
        let l = &self.limits;
        if let Some(&largest) = sizes.iter().max()
            && largest > l.agent_attachment_bytes
        {
            let record = self.first_refusal(usage, "agent_max_attachment_kb", minute);
            return Err(Exceeded {
                quota: "agent_max_attachment_kb",
                limit: l.agent_attachment_bytes,
                observed: largest,
                per: "attachment",
                record,
            });
        }
        if bytes > l.agent_event_bytes {
            let record = self.first_refusal(usage, "agent_max_event_kb", minute);
            return Err(Exceeded {
                quota: "agent_max_event_kb",
                limit: l.agent_event_bytes,
                observed: bytes,
                per: "event",
                record,
            });
        }
        let mut after = [0u64; 2];
        for (i, (quota, length, limit)) in l.windows().into_iter().enumerate() {
            let number = self.window_number(length);
            let (current, used) = &mut usage.windows[i];
            if *current != number {
                (*current, *used) = (number, 0);
            }
            after[i] = used.saturating_add(bytes);
            if after[i] > limit {
                let record = self.first_refusal(usage, quota, number);
                return Err(Exceeded {
                    quota,
                    limit,
                    observed: after[i],
                    per: if length.as_secs() == 60 {
                        "minute"
                    } else {
                        "hour"
                    },
                    record,
                });
            }
        }
        for (slot, used) in usage.windows.iter_mut().zip(after) {
            slot.1 = used;
        }
        Ok(())
    }

    /// Charges bytes the daemon records for `agent` whatever its quota
    /// (a model's reply: the call was made, so its answer is recorded).
    pub(crate) fn charge_anyway(&self, agent: &str, bytes: u64) {
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let usage = agents.entry(agent.to_owned()).or_default();
        for (i, (_, length, _)) in self.limits.windows().into_iter().enumerate() {
            let number = self.window_number(length);
            let (current, used) = &mut usage.windows[i];
            if *current != number {
                (*current, *used) = (number, 0);
            }
            *used = used.saturating_add(bytes);
        }
        drop(agents);
        self.appended(bytes);
    }

    /// Counts `bytes` appended since the last measure.
    pub(crate) fn appended(&self, bytes: u64) {
        self.since.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Bytes an event adds to the log, as counted against quotas: its payload
/// and its attachments as sent (the stored envelope adds a little; a blob
/// already stored adds nothing, so this errs high).
pub(crate) fn event_bytes(payload: usize, attachments: &[u64]) -> u64 {
    (payload as u64).saturating_add(attachments.iter().sum::<u64>())
}

/// Admits an agent's event of `payload` bytes with attachments of `sizes`
/// bytes, or says why not (`record`ing the refusal first if it is the first
/// of its kind in its window). Admitted bytes are charged.
pub(crate) async fn admit_agent(
    shared: &Arc<Shared>,
    agent: &str,
    payload: usize,
    sizes: &[u64],
) -> Result<(), (ErrorCode, String)> {
    let quotas = &shared.quotas;
    let bytes = event_bytes(payload, sizes);
    let log = quotas.log_bytes();
    let ceiling = quotas.limits.agent_ceiling();
    if log.saturating_add(bytes) > ceiling {
        log_size_alert(shared, log).await;
        return Err((
            ErrorCode::Unavailable,
            format!(
                "the event log is full for agents: {} of log_max_mb {} MiB used, the last {} MiB (log_reserve_mb) are kept for operators and the daemon; agent {agent}'s event was not recorded",
                mib(log),
                quotas.limits.max_bytes / MIB,
                quotas.limits.reserve_bytes / MIB
            ),
        ));
    }
    match quotas.charge(agent, sizes, bytes) {
        Ok(()) => {
            quotas.appended(bytes);
            Ok(())
        }
        Err(e) => {
            let what = format!(
                "agent {agent} is over its quota {}: at most {} bytes per {}, and this {} {} bytes",
                e.quota,
                e.limit,
                e.per,
                match e.per {
                    "event" | "attachment" => format!("{} is", e.per),
                    _ => "event would make it".to_owned(),
                },
                e.observed
            );
            if e.record {
                record(
                    shared,
                    QUOTA_CONTRACT,
                    "refuse_append",
                    Some(agent),
                    format!("{what}; refused, nothing stored"),
                )
                .await;
            }
            Err((
                ErrorCode::Rejected,
                format!("{what}; refused, nothing stored"),
            ))
        }
    }
}

/// Admits an operator's event of `bytes` unless the log is at `log_max_mb`.
pub(crate) fn admit_operator(shared: &Shared, bytes: u64) -> Result<(), (ErrorCode, String)> {
    let quotas = &shared.quotas;
    let log = quotas.log_bytes();
    if log.saturating_add(bytes) > quotas.limits.max_bytes {
        return Err((
            ErrorCode::Unavailable,
            format!(
                "the event log is full: {} of log_max_mb {} MiB used; raise log_max_mb or move the log to a larger disk",
                mib(log),
                quotas.limits.max_bytes / MIB
            ),
        ));
    }
    quotas.appended(bytes);
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Records the log-size alert once per crossing of the agents' ceiling.
async fn log_size_alert(shared: &Arc<Shared>, log: u64) {
    let quotas = &shared.quotas;
    if quotas.alerted.swap(true, Ordering::AcqRel) {
        return;
    }
    let l = &quotas.limits;
    record(
        shared,
        LOG_SIZE_CONTRACT,
        "refuse_agent_appends",
        None,
        format!(
            "the event log holds {} of log_max_mb {} MiB: agents' appends are refused; the last {} MiB (log_reserve_mb) are kept for operators and the daemon",
            mib(log),
            l.max_bytes / MIB,
            l.reserve_bytes / MIB
        ),
    )
    .await;
}

/// Appends an `enforcement.action` by the daemon and waits until it is
/// durable, so the refusal it explains is answered after its record.
async fn record(
    shared: &Arc<Shared>,
    contract: &str,
    action: &str,
    target: Option<&str>,
    reason: String,
) {
    let event = NewEvent::system(EnforcementAction {
        contract: contract.to_owned(),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        reason,
    });
    if let Err(e) = shared.appender.submit(event).wait_async().await {
        // The refusal stands either way; the operator learns of it here.
        log::error!("recording {contract} {action}: {e}");
    }
}

/// The bytes the files under `dir` take on disk (allocated blocks: what
/// fills the disk).
pub(crate) fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            // sled removes old snapshots as it goes.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total = total.saturating_add(if meta.is_dir() {
            disk_usage(&entry.path())?
        } else {
            meta.blocks().saturating_mul(512)
        });
    }
    Ok(total)
}

/// Measures the log's size every [`LOG_SIZE_INTERVAL`] until the daemon
/// stops; records the alert when it has crossed the agents' ceiling and
/// re-arms it once an agent's largest event fits below it again.
pub(crate) async fn measure_log(shared: Arc<Shared>) {
    let stop = crate::until_stopping(shared.stopping.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(LOG_SIZE_INTERVAL) => {}
        }
        let quotas = &shared.quotas;
        let counted = quotas.since.load(Ordering::Relaxed);
        let dir = shared.config.layout.event_log();
        let measured = tokio::task::spawn_blocking(move || disk_usage(&dir)).await;
        match measured {
            Ok(Ok(bytes)) => {
                quotas.measured.store(bytes, Ordering::Relaxed);
                // What was appended while measuring counts until the next.
                quotas.since.fetch_sub(counted, Ordering::Relaxed);
            }
            Ok(Err(e)) => log::error!("measuring the event log: {e}"),
            Err(e) => log::error!("measuring the event log: {e}"),
        }
        let log = quotas.log_bytes();
        let ceiling = quotas.limits.agent_ceiling();
        if log >= ceiling {
            log_size_alert(&shared, log).await;
        } else if log.saturating_add(quotas.limits.agent_event_bytes) <= ceiling {
            // Re-armed only once an agent's largest event fits again: a
            // log just under the ceiling refuses large events, and one
            // alert is enough for that.
            quotas.alerted.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LogLimits {
        LogLimits {
            max_bytes: 100 * MIB,
            reserve_bytes: 10 * MIB,
            min_free_bytes: 8 * MIB,
            agent_event_bytes: 1000,
            agent_attachment_bytes: 600,
            agent_bytes_per_minute: 2500,
            agent_bytes_per_hour: 10_000,
        }
    }

    #[test]
    fn sizes_then_windows_are_checked_and_only_admitted_bytes_charged() {
        let q = Quotas::new(limits(), 0);
        let e = q.charge("a", &[601], 700).unwrap_err();
        assert_eq!(
            (e.quota, e.observed, e.record),
            ("agent_max_attachment_kb", 601, true)
        );
        let e = q.charge("a", &[601], 700).unwrap_err();
        assert!(!e.record, "recorded once per minute");
        let e = q.charge("a", &[500, 500], 1001).unwrap_err();
        assert_eq!((e.quota, e.observed), ("agent_max_event_kb", 1001));
        q.charge("a", &[500], 1000).unwrap();
        q.charge("a", &[500], 1000).unwrap();
        let e = q.charge("a", &[500], 1000).unwrap_err();
        assert_eq!(
            (e.quota, e.limit, e.observed, e.record),
            ("agent_max_mb_per_minute", 2500, 3000, true)
        );
        assert!(!q.charge("a", &[500], 1000).unwrap_err().record);
        // What was refused was not charged; another agent has its own.
        q.charge("a", &[], 500).unwrap();
        assert!(q.charge("a", &[], 1).is_err());
        q.charge("b", &[], 1000).unwrap();
    }
}
