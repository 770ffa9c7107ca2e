//! The ledger: answering `Request::Ledger`, and the daily ledger files.
//!
//! Both come from the `Ledger` projection (one row per finished session:
//! accounting, never content). The files are for agents and tools that read
//! files: `<ledger dir>/<YYYY-MM-DD>.tsv`, one per UTC day, the day a
//! session ended. The daemon rewrites a day's file whole (a reader sees the
//! old file or the new one) shortly after a session of that day ends, so
//! the current day's file grows through the day and is final once it is
//! over. Who may read them is the ledger directory's business
//! (provisioning: root, and the agents that see the fleet).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use con_projection::{Ledger, LedgerRow, rfc3339_utc, utc_date, utc_day};
use con_protocol::{LEDGER_TSV_HEADER, LedgerEntry};

use crate::Shared;

/// How long after a commit the files are brought up to date: commits come
/// in bursts (a session is a few dozen events), one rewrite covers them.
const SETTLE: Duration = Duration::from_millis(500);

/// Mode of a ledger file: the directory decides who reads it.
const FILE_MODE: u32 = 0o644;

/// A ledger row as the protocol and the files show it.
pub(crate) fn entry(row: &LedgerRow) -> LedgerEntry {
    LedgerEntry {
        time: rfc3339_utc(row.ended_unix_nanos),
        ended_unix_nanos: row.ended_unix_nanos,
        agent: row.agent.clone(),
        model: row.model.clone(),
        task: row.task.clone(),
        trust: row.trust,
        outcome: row.outcome,
        duration_ms: row.duration_ms,
        cost_micro_usd: row.cost_micro_usd,
        model_calls: row.model_calls,
        session: row.session,
        seq: row.seq,
    }
}

/// The content of the files of `days`, in one pass over the rows.
fn day_files(ledger: &Ledger, days: &BTreeSet<i64>) -> BTreeMap<i64, String> {
    let mut files: BTreeMap<i64, String> = days
        .iter()
        .map(|&day| (day, format!("{LEDGER_TSV_HEADER}\n")))
        .collect();
    for row in &ledger.rows {
        if let Some(file) = files.get_mut(&utc_day(row.ended_unix_nanos)) {
            file.push_str(&entry(row).tsv_line());
            file.push('\n');
        }
    }
    files
}

/// Writes `content` as `dir/<date>.tsv` unless it already holds exactly
/// that.
fn write_day(dir: &Path, day: i64, content: &str) -> Result<(), String> {
    let path = dir.join(format!("{}.tsv", utc_date(day)));
    if std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(());
    }
    let mut staged = con_fs::StagedFile::begin(&path, FILE_MODE).map_err(|e| e.to_string())?;
    staged
        .write_all(content.as_bytes())
        .map_err(|e| e.to_string())?;
    // Whatever the daemon's umask.
    staged.set_mode(FILE_MODE).map_err(|e| e.to_string())?;
    staged.commit().map_err(|e| e.to_string())
}

/// Brings the files of the days with rows past `written` up to date (all
/// days when `written` is 0); returns the seq the files now cover.
fn catch_up(shared: &Shared, written: u64) -> Result<u64, String> {
    let dir = shared.config.layout.ledger_dir();
    if !dir.exists() {
        // Until provisioning says who reads it, root's alone.
        crate::ensure_dir(&dir, 0o700).map_err(|e| e.to_string())?;
    }
    let (files, through) = shared.with_ledger(|ledger| {
        let days: BTreeSet<i64> = ledger
            .rows
            .iter()
            .rev()
            .take_while(|r| r.seq > written)
            .map(|r| utc_day(r.ended_unix_nanos))
            .collect();
        (
            day_files(ledger, &days),
            ledger.rows.last().map_or(0, |r| r.seq),
        )
    })?;
    for (day, content) in files {
        write_day(&dir, day, &content)?;
    }
    Ok(through.max(written))
}

/// Keeps the daily files up to date until the daemon stops: once at start
/// (every day, so files lost or left stale while it was down are
/// rewritten), then after each burst of commits.
pub(crate) async fn write_files(shared: Arc<Shared>) {
    let mut head = shared.head.clone();
    let stop = crate::until_stopping(shared.stopping.clone());
    tokio::pin!(stop);
    let mut written = 0;
    let mut failing = false;
    loop {
        let lookup = shared.clone();
        let done = tokio::task::spawn_blocking(move || catch_up(&lookup, written))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match done {
            Ok(through) => {
                written = through;
                failing = false;
            }
            // Said once per incident; retried at the next commit.
            Err(e) if !failing => {
                log::error!("ledger files: {e}");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            () = &mut stop => return,
        }
        tokio::select! {
            () = tokio::time::sleep(SETTLE) => {}
            () = &mut stop => return,
        }
    }
}
