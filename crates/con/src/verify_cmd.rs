//! `con verify`: the log's hash chain, and with `--journal` the log
//! against its journald copy and the checkpoints in it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use con_event::{Digest, Event};
use con_journal::{CrossCheck, FindingKind, LogRecord, cross_check, field};
use con_layout::Layout;
use con_protocol::{Client, ClientError, ErrorCode, Query};
use con_store::Store;
use serde::Serialize;

use crate::journal_args::JournalArgs;

/// Arguments of `con verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Event log directory (or a copy of one) to open and walk here. Without
    /// it, the running daemon walks its log (operators only); with no
    /// daemon running, <root>/var/lib/con/events is opened here.
    #[arg(long, value_name = "DIR")]
    db: Option<PathBuf>,

    /// Print the result as JSON.
    #[arg(long)]
    json: bool,

    /// With --journal: cross-check every record's hash against the
    /// journal's copy, report records missing from either side, and check
    /// the log against the journal's `chain.checkpoint` entries.
    #[command(flatten)]
    journal: JournalArgs,
}

#[derive(Serialize)]
struct Outcome {
    db: PathBuf,
    /// Whether the daemon walked the log (it owns a live log).
    by_daemon: bool,
    ok: bool,
    events: u64,
    /// The last seq that verified, and its hash.
    head_seq: u64,
    head_hash: String,
    first_bad_seq: Option<u64>,
    reason: Option<String>,
}

/// Runs `con verify`: exit 0 when the chain holds, 1 when it is broken.
pub fn run(args: VerifyArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    if args.journal.journal {
        // A journal that is not this host's (a copy, a central server's
        // directory, export files) and no log to hold against it: each of
        // its logs on its own.
        if args.db.is_none() && !args.journal.is_local() {
            return journal_chains(&args);
        }
        return against_journal(&args, layout);
    }
    if args.db.is_none() {
        // A live log has one owner, the daemon: it walks the chain. With no
        // daemon to answer, the log is free to open here.
        match Client::connect(&layout.socket()) {
            Ok(mut client) => {
                let view = client.verify()?;
                let outcome = Outcome {
                    db: layout.event_log(),
                    by_daemon: true,
                    ok: view.first_bad_seq.is_none(),
                    events: view.events,
                    head_seq: view.head_seq,
                    head_hash: view.head_hash.to_hex(),
                    first_bad_seq: view.first_bad_seq,
                    reason: view.reason,
                };
                return report(&outcome, args.json);
            }
            Err(ClientError::Connect { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let db = args.db.unwrap_or_else(|| layout.event_log());
    if !db.join("db").exists() {
        anyhow::bail!("{}: no event log here", db.display());
    }
    // Inspection mode: a damaged log must be reported, not repaired or
    // refused, and verifying must not change what it verifies.
    let store = Store::open_for_inspection(&db)?;
    let result = store
        .verify()
        .with_context(|| format!("{}: reading the event log", db.display()))?;
    // The process ends after the report: tearing down the page table of a
    // large log costs a tenth of the walk, and an inspection wrote nothing.
    std::mem::forget(store);
    let outcome = match &result {
        Ok(report) => Outcome {
            db: db.clone(),
            by_daemon: false,
            ok: true,
            events: report.events,
            head_seq: report.head.seq,
            head_hash: report.head.hash.to_hex(),
            first_bad_seq: None,
            reason: None,
        },
        Err(broken) => Outcome {
            db: db.clone(),
            by_daemon: false,
            ok: false,
            events: broken.last_good.seq,
            head_seq: broken.last_good.seq,
            head_hash: broken.last_good.hash.to_hex(),
            first_bad_seq: Some(broken.seq),
            reason: Some(broken.reason.clone()),
        },
    };
    report(&outcome, args.json)
}

/// Prints the outcome; exit 0 when the chain holds, 1 when it is broken.
fn report(outcome: &Outcome, json: bool) -> anyhow::Result<ExitCode> {
    let by = if outcome.by_daemon {
        " (walked by the daemon)"
    } else {
        ""
    };
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
    } else if let (Some(seq), Some(reason)) = (outcome.first_bad_seq, &outcome.reason) {
        println!(
            "{}: chain broken at seq {seq}: {reason}{by}",
            outcome.db.display()
        );
    } else {
        println!(
            "{}: chain ok: {} events, head seq {} hash {}{by}",
            outcome.db.display(),
            outcome.events,
            outcome.head_seq,
            outcome.head_hash
        );
    }
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The log's side of a cross-check.
struct LogSide {
    /// The database directory, for messages.
    db: PathBuf,
    by_daemon: bool,
    log_id: String,
    records: Vec<LogRecord>,
    blobs: BTreeMap<Digest, Option<Vec<u8>>>,
}

/// Every record and referenced content of the running daemon's log.
fn log_through_daemon(client: &mut Client, layout: &Layout) -> anyhow::Result<LogSide> {
    let status = client.status()?;
    let log_id = status.log.map(|l| l.log_id).unwrap_or_default();
    let mut records = Vec::new();
    let mut failure = None;
    let result = client.query(
        Query {
            from_seq: 1,
            ..Query::default()
        },
        |bytes| match Event::from_stored(&bytes) {
            // Only the seq the record claims is known here: the daemon does
            // not send keys.
            Ok(event) => {
                records.push(LogRecord {
                    key: event.seq(),
                    stored: bytes,
                });
                true
            }
            Err(e) => {
                failure = Some(anyhow::anyhow!("undecodable event from the daemon: {e}"));
                false
            }
        },
    );
    match (failure, result) {
        (Some(e), _) => return Err(e),
        (None, Err(ClientError::Refused { message, .. })) => {
            anyhow::bail!("the con daemon refused: {message}")
        }
        (None, Err(e)) => return Err(e.into()),
        (None, Ok(_)) => {}
    }
    let mut blobs = BTreeMap::new();
    for digest in referenced(&records) {
        let content = match Client::connect(&layout.socket())?.blob(digest) {
            Ok(bytes) => Some(bytes),
            Err(ClientError::Refused {
                code: ErrorCode::NotFound,
                ..
            }) => None,
            Err(e) => return Err(e.into()),
        };
        blobs.insert(digest, content);
    }
    Ok(LogSide {
        db: layout.event_log(),
        by_daemon: true,
        log_id,
        records,
        blobs,
    })
}

/// Every record (under its key, as stored) and referenced content of the
/// log in `db`, opened for inspection.
fn log_offline(db: PathBuf) -> anyhow::Result<LogSide> {
    if !db.join("db").exists() {
        anyhow::bail!("{}: no event log here", db.display());
    }
    let store = Store::open_for_inspection(&db)?;
    let mut records = Vec::new();
    for item in store.stored_records() {
        let (key, stored) =
            item.with_context(|| format!("{}: reading the event log", db.display()))?;
        records.push(LogRecord { key, stored });
    }
    let mut blobs = BTreeMap::new();
    for digest in referenced(&records) {
        blobs.insert(digest, store.blob(&digest)?);
    }
    Ok(LogSide {
        log_id: store.log_id()?,
        db,
        by_daemon: false,
        records,
        blobs,
    })
}

/// Digests the decodable records reference.
fn referenced(records: &[LogRecord]) -> Vec<Digest> {
    let mut out: Vec<Digest> = records
        .iter()
        .filter_map(|r| Event::from_stored(&r.stored).ok())
        .flat_map(|e| e.payload.blob_refs())
        .map(|b| b.digest)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Serialize)]
struct FindingJson {
    kind: &'static str,
    seq: u64,
    through_seq: u64,
    detail: String,
}

#[derive(Serialize)]
struct CrossCheckJson {
    db: PathBuf,
    by_daemon: bool,
    ok: bool,
    log_id: String,
    journal_log_id: String,
    log_records: u64,
    journal_records: u64,
    matching: u64,
    checkpoints: u64,
    checkpoints_matching: u64,
    findings: Vec<FindingJson>,
}

/// Times the journal is read again while the only findings are records at
/// the log's tail it lacks: the mirror trails a live log by a moment.
const MIRROR_LAG_RETRIES: u32 = 3;

/// `con verify --journal`.
fn against_journal(args: &VerifyArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let log = match &args.db {
        Some(db) => log_offline(db.clone())?,
        None => match Client::connect(&layout.socket()) {
            Ok(mut client) => log_through_daemon(&mut client, layout)?,
            Err(ClientError::Connect { .. }) => log_offline(layout.event_log())?,
            Err(e) => return Err(e.into()),
        },
    };
    let journal_log_id = args
        .journal
        .log_id
        .clone()
        .unwrap_or_else(|| log.log_id.clone());
    let location = args.journal.location();
    let mut attempt = 0;
    let check = loop {
        let mut rebuilt = location
            .read(&[vec![(field::LOG_ID, journal_log_id.clone())]])
            .context("reading the journal")?;
        if let Some(unknown) = rebuilt.unknown_in(&journal_log_id) {
            anyhow::bail!("the journal: {unknown}: verify with a con that knows them");
        }
        let journal = rebuilt.logs.remove(&journal_log_id).unwrap_or_default();
        let mut check = cross_check(&log.records, &journal, &log.blobs, &rebuilt.blobs);
        if log.log_id != journal_log_id {
            check.findings.insert(
                0,
                con_journal::Finding {
                    kind: FindingKind::ReplacedDatabase,
                    seq: 1,
                    through_seq: 1,
                    detail: format!(
                        "this is log {}, the journal's is log {journal_log_id}",
                        log.log_id
                    ),
                },
            );
        }
        let lagging = log.by_daemon
            && !check.findings.is_empty()
            && check
                .findings
                .iter()
                .all(|f| f.kind == FindingKind::MissingFromJournal);
        attempt += 1;
        if !lagging || attempt > MIRROR_LAG_RETRIES {
            break check;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    report_cross_check(&log, &journal_log_id, &check, args.json)
}

fn report_cross_check(
    log: &LogSide,
    journal_log_id: &str,
    check: &CrossCheck,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ok = check.findings.is_empty();
    if json {
        let view = CrossCheckJson {
            db: log.db.clone(),
            by_daemon: log.by_daemon,
            ok,
            log_id: log.log_id.clone(),
            journal_log_id: journal_log_id.to_owned(),
            log_records: check.log_records,
            journal_records: check.journal_records,
            matching: check.matching,
            checkpoints: check.checkpoints,
            checkpoints_matching: check.checkpoints_matching,
            findings: check
                .findings
                .iter()
                .map(|f| FindingJson {
                    kind: f.kind.as_str(),
                    seq: f.seq,
                    through_seq: f.through_seq,
                    detail: f.detail.clone(),
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        println!(
            "{}: log {}: {} records, {} confirmed by the journal ({} records of log {journal_log_id}); \
             {} of {} checkpoints match",
            log.db.display(),
            log.log_id,
            check.log_records,
            check.matching,
            check.journal_records,
            check.checkpoints_matching,
            check.checkpoints,
        );
        for f in &check.findings {
            println!("{} at seq {}: {}", f.kind.as_str(), f.seq, f.detail);
        }
        if ok {
            println!("log and journal agree");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One log of a journal, checked on its own.
#[derive(Serialize)]
struct JournalChainJson {
    log_id: String,
    /// `system`, else `hostname`, else `machine_id` (`-`: none recorded).
    host: String,
    system: Option<String>,
    hostname: Option<String>,
    machine_id: Option<String>,
    ok: bool,
    /// Events of the log in the journal.
    events: u64,
    /// The last seq that verified, and its hash.
    head_seq: u64,
    head_hash: String,
    first_bad_seq: Option<u64>,
    reason: Option<String>,
    checkpoints: u64,
    checkpoints_matching: u64,
    findings: Vec<FindingJson>,
}

/// `con verify --journal --directory DIR | --file F…` without `--db`:
/// every log in the journal (or the one `--log-id` names) rebuilt and its
/// chain walked from seq 1, its `chain.checkpoint` entries checked against
/// the records they vouch for, and every attachment its events reference
/// looked for. Logs are kept apart by `CON_LOG_ID`.
fn journal_chains(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let alternatives: Vec<con_journal::Matches> = match &args.journal.log_id {
        Some(id) => vec![vec![(field::LOG_ID, id.clone())]],
        None => vec![vec![("SYSLOG_IDENTIFIER", "con".to_owned())]],
    };
    let rebuilt = args
        .journal
        .location()
        .read(&alternatives)
        .context("reading the journal")?;
    let mut logs: Vec<JournalChainJson> = Vec::new();
    for (log_id, events) in &rebuilt.logs {
        if args.journal.log_id.as_ref().is_some_and(|id| id != log_id) {
            continue;
        }
        if let Some(unknown) = rebuilt.unknown_in(log_id) {
            anyhow::bail!("the journal: {unknown}: verify with a con that knows them");
        }
        let host = rebuilt.hosts.get(log_id).cloned().unwrap_or_default();
        let mut findings = Vec::new();
        let chain = con_journal::verify_chain(events);
        let (head, first_bad_seq, reason) = match &chain {
            Ok(report) => (report.head, None, None),
            Err(brk) => (brk.last_good, Some(brk.seq), Some(brk.reason.clone())),
        };
        if let Err(brk) = &chain {
            findings.push(FindingJson {
                kind: FindingKind::BrokenChain.as_str(),
                seq: brk.seq,
                through_seq: brk.seq,
                detail: brk.reason.clone(),
            });
        }
        let by_seq: BTreeMap<u64, &Event> = events.iter().map(|e| (e.seq(), e)).collect();
        let last = events.last().map_or(0, Event::seq);
        let (mut checkpoints, mut checkpoints_matching) = (0, 0);
        for e in events {
            let con_event::Payload::ChainCheckpoint(cp) = &e.payload else {
                continue;
            };
            checkpoints += 1;
            match by_seq.get(&cp.through_seq) {
                Some(vouched) if vouched.hash == cp.head => checkpoints_matching += 1,
                Some(vouched) => findings.push(FindingJson {
                    kind: FindingKind::ModifiedEvent.as_str(),
                    seq: cp.through_seq,
                    through_seq: cp.through_seq,
                    detail: format!(
                        "the checkpoint at seq {} vouches for hash {}, the journal's record has {}",
                        e.seq(),
                        cp.head,
                        vouched.hash
                    ),
                }),
                None => findings.push(FindingJson {
                    kind: FindingKind::TruncatedTail.as_str(),
                    seq: cp.through_seq,
                    through_seq: cp.through_seq,
                    detail: format!(
                        "the checkpoint at seq {} vouches for seq {}, which the journal lacks \
                         (its copy ends at seq {last})",
                        e.seq(),
                        cp.through_seq
                    ),
                }),
            }
        }
        // Each missing attachment with the first event referencing it, in
        // one pass over the log (not one pass per missing attachment: a
        // journal that lost its attachment entries lacks thousands).
        let mut missing: BTreeMap<Digest, u64> = BTreeMap::new();
        for e in events {
            for b in e.payload.blob_refs() {
                if !rebuilt.blobs.contains_key(&b.digest) {
                    missing.entry(b.digest).or_insert(e.seq());
                }
            }
        }
        for (digest, seq) in missing {
            findings.push(FindingJson {
                kind: FindingKind::MissingBlob.as_str(),
                seq,
                through_seq: seq,
                detail: format!("attachment sha256:{digest} is not in the journal"),
            });
        }
        findings.sort_by_key(|f| f.seq);
        logs.push(JournalChainJson {
            log_id: log_id.clone(),
            host: host.name().to_owned(),
            system: host.system,
            hostname: host.hostname,
            machine_id: host.machine_id,
            ok: findings.is_empty(),
            events: events.len() as u64,
            head_seq: head.seq,
            head_hash: head.hash.to_hex(),
            first_bad_seq,
            reason,
            checkpoints,
            checkpoints_matching,
            findings,
        });
    }
    if logs.is_empty() {
        match &args.journal.log_id {
            Some(id) => anyhow::bail!(
                "no entries of log {} in the journal",
                con_event::escape_control(id)
            ),
            None => anyhow::bail!("no con entries in the journal"),
        }
    }
    let ok = logs.iter().all(|l| l.ok);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "logs": logs }))?
        );
    } else {
        for l in &logs {
            let on = con_event::escape_control(&l.host);
            match (l.first_bad_seq, &l.reason) {
                (Some(seq), Some(reason)) => println!(
                    "log {} on {on}: chain broken at seq {seq}: {reason} (last good seq {})",
                    l.log_id, l.head_seq
                ),
                _ => println!(
                    "log {} on {on}: chain ok: {} events, head seq {} hash {}; {} of {} checkpoints match",
                    l.log_id,
                    l.events,
                    l.head_seq,
                    l.head_hash,
                    l.checkpoints_matching,
                    l.checkpoints
                ),
            }
            for f in l
                .findings
                .iter()
                .filter(|f| f.kind != FindingKind::BrokenChain.as_str())
            {
                println!(
                    "log {}: {} at seq {}: {}",
                    l.log_id,
                    f.kind,
                    f.seq,
                    con_event::escape_control(&f.detail)
                );
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
