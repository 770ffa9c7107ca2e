//! `con replay`: sessions and tasks reconstructed from the record.
//!
//! This module only fetches (events and contents, through the daemon, from
//! a database directory or from the journal) and prints; the folds are `con_replay`'s.
//! Nothing here calls a model or changes the host; `--rerun`
//! (`crate::rerun_cmd`) runs recorded tool calls again, in a scratch
//! directory only, as a user with no standing on the host.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;
use con_event::{Digest, Event, Payload, SessionId};
use con_journal::{JournalLocation, LogHost, Matches, field};
use con_layout::Layout;
use con_protocol::{Client, ClientError, ErrorCode, Query};
use con_replay::json::EventWithContents;
use con_replay::text::{self, TextOptions};
use con_replay::{Contents, SessionSummary, blobs_of};
use con_store::{ChainBreak, Head, Store, VerifyReport};
use serde::Serialize;

use crate::journal_args::JournalArgs;

/// Arguments of `con replay`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["id", "agent", "trace", "list"])))]
#[command(group(clap::ArgGroup::new("listing").args(["agent", "list"])))]
pub struct ReplayArgs {
    /// A session id (32 hex digits) or a task id: that session's timeline,
    /// or the timelines of every session of that task.
    #[arg(value_name = "SESSION|TASK")]
    id: Option<String>,
    /// List the sessions of this agent instead (id, task, start, duration,
    /// outcome, model calls, cost).
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// List every session of every log the source holds (with --journal,
    /// each log and host found there), one line each: host, log id,
    /// session, agent, task, start, duration, outcome, model calls, cost.
    #[arg(long)]
    list: bool,
    /// With --agent or --list: only sessions started at or after this time
    /// (RFC 3339, or a duration ago such as `2h`).
    #[arg(long, value_name = "TIME", requires = "listing")]
    since: Option<String>,
    /// With --agent or --list: only sessions started before this time (RFC
    /// 3339, or a duration ago).
    #[arg(long, value_name = "TIME", requires = "listing")]
    until: Option<String>,
    /// The story of a task across agents, as a tree: the sessions that
    /// handled it and the tasks they handed on, recursively.
    #[arg(long, value_name = "TASK")]
    trace: Option<String>,
    /// Whole contents (prompt, new model messages, outputs) instead of
    /// capped ones.
    #[arg(long)]
    full: bool,
    /// JSON instead of text: for a timeline, one object per event (the
    /// event JSON view of docs/event-json.md plus its `contents`); for a
    /// list, one object per session; for a trace, the tree.
    #[arg(long)]
    json: bool,
    /// Verify every event shown: the hash chain from seq 1 through the
    /// last of them (through the daemon, which walks its log: operators
    /// only; in a database directory; with --journal, the rebuilt records
    /// of the log's journal copy), then a line saying through which seq it
    /// holds (on standard error with --json). Fails, naming the seq, if
    /// the chain breaks at or before an event shown.
    #[arg(long, conflicts_with_all = ["list", "follow"])]
    verify: bool,
    /// Run the session's tool calls again and compare each result (exit
    /// code and output) with the recorded one: `same`, `differs` (with the
    /// first differing line and the exit codes) or `not reproduced` (and
    /// why). The calls are those the recorded model replies asked for, in
    /// recorded order: no model is called and nothing is recorded. They run
    /// in a fresh temporary copy of the agent's workspace as it is now
    /// (recorded paths under the workspace are moved into it; a file tool's
    /// path outside it is not run), as `nobody` with no groups and no new
    /// privileges, in a network namespace of its own when `unshare` can
    /// make one, with each call's recorded timeout. Root only: the commands
    /// are the agent's model's, and only root can run them as a user with
    /// no standing on the host (an operator would lend them its own
    /// rights); agents may replay their sessions but not rerun them. Exit
    /// status 1 if any call differs.
    #[arg(
        long,
        requires = "id",
        conflicts_with_all = ["agent", "trace", "list", "follow", "verify", "full"]
    )]
    rerun: bool,
    /// Follow a session as it runs (through the daemon): print what is
    /// recorded, then each new event of it as it is appended; exit when
    /// the session ends (or on Ctrl-C).
    #[arg(
        long,
        requires = "id",
        conflicts_with_all = ["db", "journal", "agent", "trace", "list"]
    )]
    follow: bool,
    /// Read this event log directory (or a copy of one) instead of asking
    /// the daemon. The log has one owner: use a copy while the daemon runs.
    #[arg(long, value_name = "DIR", conflicts_with = "journal")]
    db: Option<PathBuf>,
    /// Where the journal is, with --journal: read events and contents from
    /// journald instead of the event log.
    #[command(flatten)]
    journal: JournalArgs,
}

/// Where events and contents come from.
pub(crate) trait Source {
    /// Events matching `query` (its `follow` is ignored), in seq order;
    /// stops after `until` if given.
    fn events(&mut self, query: Query, until: Option<u64>) -> anyhow::Result<Vec<Event>>;
    /// A content, or `None` if it is not there or not readable by the caller.
    fn blob(&mut self, digest: Digest) -> anyhow::Result<Option<Vec<u8>>>;
    /// How to say "not found" to this caller.
    fn scope(&self) -> &'static str;
    /// The events of these kinds in every log the source holds, each log
    /// with where it was written, for `--list`.
    fn logs(&mut self, kinds: &[u16]) -> anyhow::Result<Vec<(LogOrigin, Vec<Event>)>>;
    /// Walks the chain of the log the source reads from seq 1 (its whole
    /// length), and checks that each of `shown` is the record the chain
    /// has at its seq.
    fn verify(&mut self, shown: &[Event]) -> anyhow::Result<Walk>;
    /// Settles which log the later queries read, where the source holds
    /// several (a journal): the one whose entries match `query`.
    fn settle_log(&mut self, _query: Query) -> anyhow::Result<()> {
        Ok(())
    }
    /// What a session's timeline needs besides its own events (`ctx`):
    /// the arrivals of its task in its agent's inbox up to its start (at
    /// least the latest, which is the one shown), and the events of
    /// `ctx.kinds` by or about the agent from its start through its end.
    /// A source may also fetch ahead the contents `ctx.contents` names.
    fn session_context(&mut self, ctx: &SessionContext) -> anyhow::Result<Vec<Event>> {
        let mut out = Vec::new();
        if ctx.task.is_some() {
            // Backwards in widening windows: the arrival normally comes just
            // before its session, and reading from seq 1 would read the
            // agent's whole history. The query names the agent only, so the
            // answer streams the agent's events and stops at the window's
            // end; a rare match (kind and task) would keep the daemon
            // scanning to the head for more.
            let mut width = ARRIVAL_WINDOW;
            loop {
                let from = ctx.start.saturating_sub(width).max(1);
                let found: Vec<Event> = self
                    .events(
                        Query {
                            from_seq: from,
                            agent: Some(ctx.agent.clone()),
                            ..Query::default()
                        },
                        Some(ctx.start),
                    )?
                    .into_iter()
                    .filter(|e| ctx.is_arrival(e))
                    .collect();
                if !found.is_empty() || from == 1 {
                    out.extend(found);
                    break;
                }
                width = width.saturating_mul(16);
            }
        }
        let during = self.events(
            Query {
                from_seq: ctx.start,
                agent: Some(ctx.agent.clone()),
                ..Query::default()
            },
            ctx.end,
        )?;
        out.extend(during.into_iter().filter(|e| ctx.is_during(e)));
        Ok(out)
    }
    /// Fetches ahead the contents [`Source::blob`] will be asked for, where
    /// one request for all of them is cheaper than one each.
    fn prefetch(&mut self, _digests: &[Digest]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How far before a session's start its task's arrival is looked for
/// first (see [`Source::session_context`]).
const ARRIVAL_WINDOW: u64 = 4096;

/// What a session's timeline needs besides its own events (see
/// [`Source::session_context`]).
pub(crate) struct SessionContext {
    /// The session's agent.
    agent: String,
    /// Its task, if it names one.
    task: Option<String>,
    /// Seq of its start, and of its end if it ended.
    start: u64,
    end: Option<u64>,
    /// Kinds of the agent's events to add while it ran.
    kinds: Vec<u16>,
    /// Contents its own events reference.
    contents: Vec<Digest>,
}

impl SessionContext {
    /// An arrival of the session's task in its agent's inbox, before it
    /// started.
    fn is_arrival(&self, e: &Event) -> bool {
        e.seq() <= self.start
            && self.task.is_some()
            && e.envelope.task == self.task
            && matches!(&e.payload, Payload::InboxArrived(a) if a.inbox == self.agent)
    }

    /// One of the agent's events of the kinds asked for while it ran.
    fn is_during(&self, e: &Event) -> bool {
        e.seq() >= self.start
            && self.end.is_none_or(|end| e.seq() <= end)
            && self.kinds.contains(&e.envelope.kind)
            && (e.envelope.actor.agent.as_deref() == Some(self.agent.as_str())
                || e.payload.subject_agent() == Some(self.agent.as_str()))
    }
}

/// A walk of a log's chain: how far it holds (or where it breaks), and
/// what walked it, for the verification line.
pub(crate) struct Walk {
    chain: Result<VerifyReport, ChainBreak>,
    by: String,
}

/// Where a log was written, as far as its source tells.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogOrigin {
    /// Its `CON_LOG_ID` (empty if unknown).
    log_id: String,
    /// Its host (unknown for a database directory: a log does not record
    /// the host it was written on).
    host: LogHost,
}

/// The events of `kinds` among `events` (any order), in seq order.
fn of_kinds(mut events: Vec<Event>, kinds: &[u16]) -> Vec<Event> {
    events.retain(|e| kinds.contains(&e.envelope.kind));
    events.sort_by_key(Event::seq);
    events.dedup_by_key(|e| e.seq());
    events
}

/// This machine, as journald would name it in the entries the daemon
/// mirrors: `[system] name` from the configuration (if it can be read),
/// the kernel's host name and `/etc/machine-id`.
fn this_host(config: &std::path::Path) -> LogHost {
    let system = con_config::collect_environment(std::env::vars_os())
        .ok()
        .and_then(|env| con_config::load(config, &env).ok())
        .map(|c| c.system.name);
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    LogHost {
        system,
        hostname: read("/proc/sys/kernel/hostname"),
        machine_id: read("/etc/machine-id"),
    }
}

/// Through the daemon: an agent user sees only its own events (the daemon
/// restricts its queries), operators everything.
struct DaemonSource {
    socket: PathBuf,
    /// The configuration file, for the host's name in `--list`.
    config: PathBuf,
    /// The connection blob requests reuse (a connection costs the daemon
    /// an identity lookup; a session has hundreds of contents).
    blobs: Option<Client>,
    /// Contents fetched ahead ([`Source::prefetch`]); `None`: not there or
    /// not the caller's.
    fetched: BTreeMap<Digest, Option<Vec<u8>>>,
}

impl DaemonSource {
    fn new(layout: &Layout) -> Self {
        Self {
            socket: layout.socket(),
            config: layout.config_file().to_owned(),
            blobs: None,
            fetched: BTreeMap::new(),
        }
    }

    /// The connection for blob requests.
    fn blob_client(&mut self) -> anyhow::Result<&mut Client> {
        if self.blobs.is_none() {
            self.blobs = Some(self.connect()?);
        }
        self.blobs
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection to the con daemon"))
    }

    fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.socket)?)
    }
}

/// A content the daemon answered for: `None` when it is not there or not
/// the caller's to read (shown as unavailable; such a refusal is a whole
/// answer and the connection stays usable).
fn available(answer: Result<Vec<u8>, ClientError>) -> Result<Option<Vec<u8>>, ClientError> {
    match answer {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ClientError::Refused {
            code: ErrorCode::NotFound | ErrorCode::Forbidden,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Source for DaemonSource {
    fn events(&mut self, query: Query, until: Option<u64>) -> anyhow::Result<Vec<Event>> {
        // A connection per query: one stopped early (`until`) still has
        // answers in flight.
        let mut client = self.connect()?;
        let mut out = Vec::new();
        let mut failure = None;
        let result = client.query(
            Query {
                follow: false,
                ..query
            },
            |bytes| match Event::from_stored(&bytes) {
                Ok(event) => {
                    if until.is_some_and(|u| event.seq() > u) {
                        return false;
                    }
                    out.push(event);
                    true
                }
                Err(e) => {
                    failure = Some(anyhow::anyhow!("undecodable event from the daemon: {e}"));
                    false
                }
            },
        );
        match (failure, result) {
            (Some(e), _) => Err(e),
            (None, Err(ClientError::Refused { message, .. })) => {
                anyhow::bail!("the con daemon refused: {message}")
            }
            (None, Err(e)) => Err(e.into()),
            (None, Ok(_)) => Ok(out),
        }
    }

    fn prefetch(&mut self, digests: &[Digest]) -> anyhow::Result<()> {
        let wanted: Vec<Digest> = digests
            .iter()
            .filter(|d| !self.fetched.contains_key(d))
            .copied()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        // Pipelined on one connection: one round trip per window of
        // requests instead of one per content.
        let answers = match self.blob_client()?.blobs(&wanted) {
            Ok(answers) => answers,
            Err(e) => {
                self.blobs = None;
                return Err(e.into());
            }
        };
        for (digest, answer) in wanted.into_iter().zip(answers) {
            self.fetched.insert(digest, available(answer)?);
        }
        Ok(())
    }

    fn blob(&mut self, digest: Digest) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(content) = self.fetched.remove(&digest) {
            return Ok(content);
        }
        let answer = self.blob_client()?.blob(digest);
        available(answer).map_err(|e| {
            // Anything but a refusal may leave the connection mid-answer.
            self.blobs = None;
            e.into()
        })
    }

    fn scope(&self) -> &'static str {
        "among the events you may read"
    }

    fn logs(&mut self, kinds: &[u16]) -> anyhow::Result<Vec<(LogOrigin, Vec<Event>)>> {
        let log_id = self
            .connect()?
            .status()?
            .log
            .map(|l| l.log_id)
            .unwrap_or_default();
        let mut events = Vec::new();
        for &kind in kinds {
            events.extend(self.events(
                Query {
                    from_seq: 1,
                    kind: Some(kind),
                    ..Query::default()
                },
                None,
            )?);
        }
        let origin = LogOrigin {
            log_id,
            host: this_host(&self.config),
        };
        Ok(vec![(origin, of_kinds(events, kinds))])
    }

    fn verify(&mut self, _shown: &[Event]) -> anyhow::Result<Walk> {
        // The daemon owns the log and walks it; what it sent for the view
        // came from the same records.
        let view = match self.connect()?.verify() {
            Ok(view) => view,
            Err(ClientError::Refused { message, .. }) => {
                anyhow::bail!("--verify: the con daemon refused: {message}")
            }
            Err(e) => return Err(e.into()),
        };
        let head = Head {
            seq: view.head_seq,
            hash: view.head_hash,
        };
        let chain = match view.first_bad_seq {
            Some(seq) => Err(ChainBreak {
                seq,
                reason: view.reason.unwrap_or_default(),
                last_good: head,
            }),
            None => Ok(VerifyReport {
                events: view.events,
                head,
            }),
        };
        Ok(Walk {
            chain,
            by: "the log's chain, walked by the daemon".into(),
        })
    }
}

/// Whether `event` is one `query` asks for (its filters, as the daemon
/// applies them; `from_seq` and `follow` aside).
fn selected(query: &Query, event: &Event) -> bool {
    let env = &event.envelope;
    query.session.is_none_or(|s| env.session == Some(s))
        && query
            .task
            .as_deref()
            .is_none_or(|t| env.task.as_deref() == Some(t))
        && query.kind.is_none_or(|k| env.kind == k)
        && query.agent.as_deref().is_none_or(|a| {
            env.actor.agent.as_deref() == Some(a) || event.payload.subject_agent() == Some(a)
        })
}

/// The journal: each query becomes `journalctl` matches on the fields the
/// mirror writes (which narrow), then the same filter as for a database
/// (which decides: `CON_AGENT` names one agent where the daemon's filter
/// accepts the actor or the subject). Entries of one log only: its
/// `CON_LOG_ID`, given, the local daemon's, or the only one the first
/// query finds.
struct JournalSource {
    journal: JournalLocation,
    log_id: Option<String>,
    /// Contents the entries read so far carried (inline or in parts).
    blobs: BTreeMap<Digest, Vec<u8>>,
}

impl JournalSource {
    fn new(args: &JournalArgs, layout: &Layout) -> Self {
        Self {
            journal: args.location(),
            log_id: args.log_id(layout),
            blobs: BTreeMap::new(),
        }
    }

    /// The entries matching any of `alternatives`, rebuilt, of the one log
    /// the source reads (settled by the first read that finds one), and
    /// the contents they carry kept for [`Source::blob`].
    fn read_log(&mut self, alternatives: &[Matches]) -> anyhow::Result<Vec<Event>> {
        let mut rebuilt = self.journal.read(alternatives)?;
        self.blobs.append(&mut rebuilt.blobs);
        let events = match &self.log_id {
            Some(id) => rebuilt.logs.remove(id).unwrap_or_default(),
            None => match rebuilt.logs.len() {
                0 => Vec::new(),
                1 => {
                    let Some((id, events)) = rebuilt.logs.pop_first() else {
                        return Ok(Vec::new());
                    };
                    self.log_id = Some(id);
                    events
                }
                _ => {
                    // A few are enough to pick from; a shared journal may
                    // hold hundreds (every test run on a host).
                    let ids: Vec<String> = rebuilt
                        .logs
                        .keys()
                        .take(5)
                        .map(|id| match rebuilt.hosts.get(id) {
                            Some(host) => {
                                format!("{id} on {}", con_event::escape_control(host.name()))
                            }
                            None => id.clone(),
                        })
                        .collect();
                    let more = match rebuilt.logs.len() - ids.len() {
                        0 => String::new(),
                        n => format!(" and {n} more"),
                    };
                    anyhow::bail!(
                        "entries of {} logs match in the journal ({}{more}): choose one with --log-id",
                        rebuilt.logs.len(),
                        ids.join(", ")
                    )
                }
            },
        };
        if let Some(id) = &self.log_id
            && let Some(unknown) = rebuilt.unknown_in(id)
        {
            eprintln!("con replay: {unknown}; they are left out");
        }
        Ok(events)
    }

    /// `conjunction` restricted to the log, once it is known.
    fn in_log(&self, mut conjunction: Matches) -> Matches {
        if let Some(id) = &self.log_id {
            conjunction.insert(0, (field::LOG_ID, id.clone()));
        }
        conjunction
    }
}

impl Source for JournalSource {
    fn events(&mut self, query: Query, until: Option<u64>) -> anyhow::Result<Vec<Event>> {
        let mut all: Matches = Vec::new();
        if let Some(s) = query.session {
            all.push((field::SESSION, s.to_hex()));
        }
        if let Some(t) = &query.task {
            all.push(("CON_TASK", t.clone()));
        }
        if let Some(spec) = query.kind.and_then(con_event::kind_by_id) {
            all.push(("CON_EVENT", spec.journal_name()));
        }
        let alternatives = match &query.agent {
            Some(a) => vec![
                self.in_log([all.clone(), vec![("CON_AGENT", a.clone())]].concat()),
                self.in_log([all, vec![("CON_ACTOR", a.clone())]].concat()),
            ],
            None if all.is_empty() && self.log_id.is_none() => {
                vec![vec![("SYSLOG_IDENTIFIER", "con".to_owned())]]
            }
            None => vec![self.in_log(all)],
        };
        let events = self.read_log(&alternatives)?;
        Ok(events
            .into_iter()
            .filter(|e| e.seq() >= query.from_seq && until.is_none_or(|u| e.seq() <= u))
            .filter(|e| selected(&query, e))
            .collect())
    }

    fn blob(&mut self, digest: Digest) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(content) = self.blobs.get(&digest) {
            return Ok(Some(content.clone()));
        }
        let mut rebuilt = self
            .journal
            .read(&[self.in_log(vec![(field::BLOB_DIGEST, digest.to_hex())])])?;
        self.blobs.append(&mut rebuilt.blobs);
        Ok(self.blobs.get(&digest).cloned())
    }

    fn scope(&self) -> &'static str {
        "in the journal"
    }

    fn logs(&mut self, kinds: &[u16]) -> anyhow::Result<Vec<(LogOrigin, Vec<Event>)>> {
        let alternatives: Vec<Matches> = kinds
            .iter()
            .filter_map(|&k| con_event::kind_by_id(k))
            .map(|spec| self.in_log(vec![("CON_EVENT", spec.journal_name())]))
            .collect();
        let mut rebuilt = self.journal.read(&alternatives)?;
        let mut out = Vec::new();
        for (log_id, events) in std::mem::take(&mut rebuilt.logs) {
            if self.log_id.as_ref().is_some_and(|id| *id != log_id) {
                continue;
            }
            if let Some(unknown) = rebuilt.unknown_in(&log_id) {
                eprintln!("con replay: {unknown}; they are left out");
            }
            let host = rebuilt.hosts.get(&log_id).cloned().unwrap_or_default();
            out.push((LogOrigin { log_id, host }, of_kinds(events, kinds)));
        }
        Ok(out)
    }

    fn verify(&mut self, shown: &[Event]) -> anyhow::Result<Walk> {
        let Some(log_id) = self.log_id.clone() else {
            anyhow::bail!("--verify: no log in the journal to verify (choose one with --log-id)");
        };
        // Every entry of the log: each rebuilt record already hashes to its
        // CON_HASH (and its CON_PREV_HASH is its record's); the walk checks
        // that each links to the one before, from seq 1.
        let mut rebuilt = self.journal.read(&[self.in_log(Vec::new())])?;
        if let Some(unknown) = rebuilt.unknown_in(&log_id) {
            anyhow::bail!("--verify: {unknown}: verify with a con that knows them");
        }
        let events = rebuilt.logs.remove(&log_id).unwrap_or_default();
        let mut chain = con_journal::verify_chain(&events);
        let by_seq: BTreeMap<u64, &Event> = events.iter().map(|e| (e.seq(), e)).collect();
        if let Some(e) = shown
            .iter()
            .find(|e| by_seq.get(&e.seq()).is_none_or(|c| c.hash != e.hash))
        {
            let seq = e.seq();
            if chain.as_ref().err().is_none_or(|b| b.seq > seq) {
                let last_good = by_seq
                    .get(&(seq - 1))
                    .map(|p| Head {
                        seq: p.seq(),
                        hash: p.hash,
                    })
                    .unwrap_or_default();
                chain = Err(ChainBreak {
                    seq,
                    reason: "the entry shown is not the one the journal's chain has there".into(),
                    last_good,
                });
            }
        }
        Ok(Walk {
            chain,
            by: format!(
                "the journal's copy of log {log_id}, CON_HASH and CON_PREV_HASH of each record"
            ),
        })
    }

    fn settle_log(&mut self, query: Query) -> anyhow::Result<()> {
        if self.log_id.is_none() {
            self.events(query, None)?;
        }
        Ok(())
    }

    fn session_context(&mut self, ctx: &SessionContext) -> anyhow::Result<Vec<Event>> {
        // One journalctl for all of it (each costs a process and a pass
        // over the journal's files, and each alternative a walk of every
        // file's indexes): the task's arrivals, the agent's events of the
        // kinds asked for (matching the kinds keeps journalctl from reading
        // every entry of the agent: the journal cannot match on seqs), and
        // the contents the session's own entries did not carry (first
        // mirrored with another session). Values of one field in one
        // conjunction are alternatives, as journalctl takes them. The log
        // is not matched (every entry of it would): what is read is kept to
        // it when rebuilt, and contents are the same whichever log holds
        // them (checked against their digests).
        let agent = ctx.agent.clone();
        let mut alternatives: Vec<Matches> = Vec::new();
        if let (Some(task), Some(spec)) = (
            &ctx.task,
            kind_id("inbox.arrived").and_then(con_event::kind_by_id),
        ) {
            // An arrival is about the inbox's agent: CON_AGENT names it.
            alternatives.push(vec![
                ("CON_EVENT", spec.journal_name()),
                ("CON_TASK", task.clone()),
                ("CON_AGENT", agent.clone()),
            ]);
        }
        let mut kinds: Matches = ctx
            .kinds
            .iter()
            .filter_map(|&k| con_event::kind_by_id(k))
            .map(|spec| ("CON_EVENT", spec.journal_name()))
            .collect();
        if !kinds.is_empty() {
            // Only the daemon appends these kinds, so no agent is their
            // actor: the agent is their subject, which CON_AGENT names.
            kinds.push(("CON_AGENT", agent));
            alternatives.push(kinds);
        }
        let missing: Matches = ctx
            .contents
            .iter()
            .filter(|d| !self.blobs.contains_key(d))
            .map(|d| (field::BLOB_DIGEST, d.to_hex()))
            .collect();
        if !missing.is_empty() {
            alternatives.push(missing);
        }
        if alternatives.is_empty() {
            return Ok(Vec::new());
        }
        let events = self.read_log(&alternatives)?;
        Ok(events
            .into_iter()
            .filter(|e| ctx.is_arrival(e) || ctx.is_during(e))
            .collect())
    }

    fn prefetch(&mut self, digests: &[Digest]) -> anyhow::Result<()> {
        // One journalctl for every content the entries read so far did not
        // carry (those first mirrored with another session's events).
        let missing: Vec<Matches> = digests
            .iter()
            .filter(|d| !self.blobs.contains_key(d))
            .map(|d| self.in_log(vec![(field::BLOB_DIGEST, d.to_hex())]))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut rebuilt = self.journal.read(&missing)?;
        self.blobs.append(&mut rebuilt.blobs);
        Ok(())
    }
}

/// A database directory opened for inspection. Its derived indexes are read
/// as far as they reach, never caught up (that would write); the log past
/// them is scanned.
struct StoreSource {
    store: Store,
    /// The directory, for messages.
    dir: PathBuf,
}

impl Source for StoreSource {
    fn events(&mut self, query: Query, until: Option<u64>) -> anyhow::Result<Vec<Event>> {
        let from = query.from_seq.max(1);
        let through = until.unwrap_or(u64::MAX);
        // The indexes as far as they are derived (read, never caught up),
        // and a scan of the log past them.
        let indexed = match (&query.session, &query.agent) {
            (Some(s), _) => Some(self.store.session_records_read_only(s, from, through)?),
            (None, Some(a)) => Some(self.store.agent_records_read_only(a, from, through)?),
            (None, None) => None,
        };
        if let Some(records) = indexed {
            let mut out = Vec::new();
            for (seq, bytes) in records {
                let event = Event::from_stored(&bytes)
                    .with_context(|| format!("{}: event log seq {seq}", self.dir.display()))?;
                if selected(&query, &event) {
                    out.push(event);
                }
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        for event in self.store.events_from(from) {
            let event = event?;
            if until.is_some_and(|u| event.seq() > u) {
                break;
            }
            if selected(&query, &event) {
                out.push(event);
            }
        }
        Ok(out)
    }

    fn blob(&mut self, digest: Digest) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.store.blob(&digest)?)
    }

    fn scope(&self) -> &'static str {
        "in this event log"
    }

    fn logs(&mut self, kinds: &[u16]) -> anyhow::Result<Vec<(LogOrigin, Vec<Event>)>> {
        let mut events = Vec::new();
        for event in self.store.events_from(1) {
            let event = event?;
            if kinds.contains(&event.envelope.kind) {
                events.push(event);
            }
        }
        let origin = LogOrigin {
            log_id: self.store.log_id()?,
            host: LogHost::default(),
        };
        Ok(vec![(origin, events)])
    }

    fn verify(&mut self, _shown: &[Event]) -> anyhow::Result<Walk> {
        // The view was read from these very records.
        Ok(Walk {
            chain: self.store.verify()?,
            by: format!("the chain of {}", self.dir.display()),
        })
    }
}

/// Runs `con replay`.
pub fn run(args: ReplayArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    if args.follow {
        let id = args.id.as_deref().unwrap_or_default();
        return follow(layout, id, &args);
    }
    // Refused before anything is read; signals taken before the store
    // (sled) starts threads.
    let rerun_stop = if args.rerun {
        Some(crate::rerun_cmd::start(layout)?)
    } else {
        None
    };
    let mut source: Box<dyn Source> = match &args.db {
        _ if args.journal.journal => Box::new(JournalSource::new(&args.journal, layout)),
        Some(db) => {
            if !db.join("db").exists() {
                anyhow::bail!("{}: no event log here", db.display());
            }
            Box::new(StoreSource {
                store: Store::open_for_inspection(db)
                    .with_context(|| format!("{}: opening the event log", db.display()))?,
                dir: db.clone(),
            })
        }
        None => Box::new(DaemonSource::new(layout)),
    };
    if let Some(stop) = rerun_stop {
        let id = args.id.as_deref().unwrap_or_default();
        return crate::rerun_cmd::run(source.as_mut(), layout, id, args.json, &stop);
    }
    let mut shown = Vec::new();
    let result = if args.list {
        list_all(source.as_mut(), &args)
    } else if let Some(agent) = &args.agent {
        list(source.as_mut(), agent, &args, &mut shown)
    } else if let Some(task) = &args.trace {
        trace(source.as_mut(), task, args.json, &mut shown)
    } else if let Some(id) = &args.id {
        replay(source.as_mut(), id, &args, &mut shown)
    } else {
        anyhow::bail!("nothing to replay: give a session or task id, --agent or --trace");
    };
    let mut out = match result {
        Ok(out) => out,
        // A record damaged past decoding stops the view; the walk says
        // where the chain broke.
        Err(e) if args.verify => match source.verify(&[]) {
            Ok(Walk {
                chain: Err(brk), ..
            }) => anyhow::bail!(
                "{e:#}\nnot verified: chain broken at seq {}: {} (last good seq {})",
                brk.seq,
                brk.reason,
                brk.last_good.seq
            ),
            _ => return Err(e),
        },
        Err(e) => return Err(e),
    };
    if args.verify {
        let line = verification(source.as_mut(), &shown)?;
        if args.json {
            eprintln!("{line}");
        } else {
            out.push_str(&line);
            out.push('\n');
        }
    }
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    // A closed pipe (`con replay … | head`) ends the output quietly.
    let _ = lock.write_all(out.as_bytes()).and_then(|()| lock.flush());
    // The process ends here: tearing down an opened log's page table took
    // a fifth of a `--db` replay of one session out of a million events
    // (it only reads, so nothing is left to write).
    std::mem::forget(source);
    Ok(ExitCode::SUCCESS)
}

/// `--verify`: every event shown must lie on the chain from seq 1, which
/// must hold through the last of them. The line to print, or the failure
/// naming the seq where the chain breaks.
fn verification(source: &mut dyn Source, shown: &[Event]) -> anyhow::Result<String> {
    let through = shown.iter().map(Event::seq).max().unwrap_or(0);
    let Walk { chain, by } = source.verify(shown)?;
    // And each record shown hashes, with its own prev_hash, to its hash
    // (what the walk vouched for is what is shown).
    let broken_before = |seq: u64| chain.as_ref().err().is_some_and(|b| b.seq <= seq);
    for e in shown {
        let record = e.envelope.encode_record()?;
        if !broken_before(e.seq())
            && con_event::chain_hash(&e.envelope.prev_hash, &record) != e.hash
        {
            anyhow::bail!(
                "not verified: seq {}: the record shown does not match its hash {}",
                e.seq(),
                e.hash
            );
        }
    }
    match chain {
        Err(brk) if brk.seq <= through => anyhow::bail!(
            "not verified: chain broken at seq {}: {} (last good seq {}; {} of the events \
             shown are at or after seq {})",
            brk.seq,
            brk.reason,
            brk.last_good.seq,
            shown.iter().filter(|e| e.seq() >= brk.seq).count(),
            brk.seq
        ),
        Err(brk) => Ok(format!(
            "verified through seq {through}: {by} holds from seq 1 ({} events shown); \
             it breaks later, at seq {}: {}",
            shown.len(),
            brk.seq,
            brk.reason
        )),
        Ok(report) if report.head.seq < through => anyhow::bail!(
            "not verified: the chain ends at seq {}, before seq {through}",
            report.head.seq
        ),
        Ok(_) => Ok(format!(
            "verified through seq {through}: {by} holds from seq 1 ({} events shown)",
            shown.len()
        )),
    }
}

/// Writes `text` to standard output at once; `false` once it is closed.
fn emit(text: &str) -> bool {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(text.as_bytes())
        .and_then(|()| lock.flush())
        .is_ok()
}

/// `con replay --follow SESSION`: what is recorded of the session, then
/// each event of it as the daemon commits it (the follow query `con logs
/// -f` uses, on the session's agent from the first seq not yet read), until
/// its `session.ended`.
fn follow(layout: &Layout, id: &str, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let Some(session) = SessionId::from_hex(id).filter(|_| id.len() == 32) else {
        anyhow::bail!(
            "--follow {}: not a session id (32 hex digits)",
            con_event::escape_control(id)
        );
    };
    let mut source = DaemonSource::new(layout);
    let mut input = session_input(&mut source, session)?;
    let Some(agent) = input.iter().find_map(|e| match &e.payload {
        Payload::SessionStarted(p) if e.envelope.session == Some(session) => Some(p.agent.clone()),
        _ => None,
    }) else {
        anyhow::bail!(
            "no session {session} {}",
            <DaemonSource as Source>::scope(&source)
        );
    };
    let ended = |input: &[Event]| {
        input.iter().any(|e| {
            e.envelope.session == Some(session) && matches!(e.payload, Payload::SessionEnded(_))
        })
    };
    let opts = TextOptions { full: args.full };
    let mut contents = Contents::new();
    let mut printed: BTreeSet<u64> = BTreeSet::new();
    // What is new in the view since the last call, as text to print.
    let mut render =
        |input: &[Event], source: &mut DaemonSource, first: bool| -> anyhow::Result<String> {
            let selected = con_replay::timeline::select(session, input)?;
            let new: Vec<&Event> = selected
                .iter()
                .copied()
                .filter(|e| !printed.contains(&e.seq()))
                .collect();
            fetch_blobs(source, new.iter().copied(), &mut contents)?;
            let mut out = String::new();
            if args.json {
                for event in &new {
                    out.push_str(&serde_json::to_string(&EventWithContents::new(
                        event, &contents,
                    ))?);
                    out.push('\n');
                }
            } else {
                let t = con_replay::timeline(session, input, &contents)?;
                if first {
                    out.push_str(&text::timeline(&t, opts));
                } else {
                    out.push_str(&text::entries(&t, opts, |seq| !printed.contains(&seq)));
                }
                // The header of a first view already says how it ended.
                if !first && ended(input) {
                    out.push_str(&text::ending(&t));
                }
            }
            printed.extend(new.iter().map(|e| e.seq()));
            Ok(out)
        };
    if !emit(&render(&input, &mut source, true)?) || ended(&input) {
        return Ok(ExitCode::SUCCESS);
    }
    let from_seq = input.iter().map(Event::seq).max().unwrap_or(0) + 1;
    let mut client = source.connect()?;
    let mut failure = None;
    let mut done = false;
    let result = client.query(
        Query {
            from_seq,
            agent: Some(agent),
            follow: true,
            ..Query::default()
        },
        |bytes| {
            let event = match Event::from_stored(&bytes) {
                Ok(event) => event,
                Err(e) => {
                    failure = Some(anyhow::anyhow!("undecodable event from the daemon: {e}"));
                    return false;
                }
            };
            if input.iter().any(|e| e.seq() == event.seq()) {
                return true;
            }
            input.push(event);
            match render(&input, &mut source, false) {
                Ok(out) if emit(&out) => {
                    done = ended(&input);
                    !done
                }
                // Standard output closed: stop quietly.
                Ok(_) => {
                    done = true;
                    false
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        },
    );
    match (failure, result) {
        (Some(e), _) => Err(e),
        (None, Err(ClientError::Refused { message, .. })) => {
            anyhow::bail!("the con daemon refused: {message}")
        }
        (None, Err(e)) => Err(e.into()),
        (None, Ok(_)) if done => Ok(ExitCode::SUCCESS),
        (None, Ok(_)) => {
            anyhow::bail!("the daemon ended the follow before session {session} ended")
        }
    }
}

fn kind_id(name: &str) -> Option<u16> {
    con_event::kind_by_name(name).map(|k| k.id)
}

/// Fetches every content `events` reference that `contents` lacks.
pub(crate) fn fetch_blobs<'a>(
    source: &mut dyn Source,
    events: impl IntoIterator<Item = &'a Event>,
    contents: &mut Contents,
) -> anyhow::Result<()> {
    let wanted: Vec<_> = blobs_of(events)
        .into_iter()
        .filter(|b| !contents.contains_key(&b.digest))
        .collect();
    let digests: Vec<Digest> = wanted.iter().map(|b| b.digest).collect();
    source.prefetch(&digests)?;
    for blob in wanted {
        if !contents.contains_key(&blob.digest)
            && let Some(bytes) = source.blob(blob.digest)?
        {
            contents.insert(blob.digest, bytes);
        }
    }
    Ok(())
}

/// The events a session's timeline is made of (a superset: the fold
/// selects), from any source.
pub(crate) fn session_input(
    source: &mut dyn Source,
    session: SessionId,
) -> anyhow::Result<Vec<Event>> {
    let own = source.events(
        Query {
            from_seq: 1,
            session: Some(session),
            ..Query::default()
        },
        None,
    )?;
    let Some(start) = own
        .iter()
        .find(|e| matches!(e.payload, Payload::SessionStarted(_)))
        .or(own.first())
    else {
        return Ok(own);
    };
    let agent = match &start.payload {
        Payload::SessionStarted(p) => Some(p.agent.clone()),
        other => other
            .subject_agent()
            .or(start.envelope.actor.agent.as_deref())
            .map(str::to_owned),
    };
    let Some(agent) = agent else {
        return Ok(own);
    };
    let start_seq = start.seq();
    let task = start.envelope.task.clone();
    let end_seq = own
        .iter()
        .find(|e| matches!(e.payload, Payload::SessionEnded(_)))
        .map(|e| e.seq());
    let mut all = own;
    let ctx = SessionContext {
        agent,
        task,
        start: start_seq,
        end: end_seq,
        // Checks and enforcement about the agent while the session ran.
        kinds: ["contract.result", "enforcement.action", "enforcement.done"]
            .into_iter()
            .filter_map(kind_id)
            .collect(),
        contents: blobs_of(&all).iter().map(|b| b.digest).collect(),
    };
    all.extend(source.session_context(&ctx)?);
    all.sort_by_key(Event::seq);
    all.dedup_by_key(|e| e.seq());
    Ok(all)
}

/// `con replay <session | task>`.
fn replay(
    source: &mut dyn Source,
    id: &str,
    args: &ReplayArgs,
    shown: &mut Vec<Event>,
) -> anyhow::Result<String> {
    let mut sessions = Vec::new();
    if let Some(session) = SessionId::from_hex(id).filter(|_| id.len() >= 32) {
        let input = session_input(source, session)?;
        if !input.is_empty() {
            sessions.push((session, input));
        }
    }
    if sessions.is_empty() {
        let starts = source.events(
            Query {
                from_seq: 1,
                task: Some(id.to_owned()),
                kind: kind_id("session.started"),
                ..Query::default()
            },
            None,
        )?;
        for start in starts {
            if let Some(s) = start.envelope.session {
                sessions.push((s, session_input(source, s)?));
            }
        }
    }
    if sessions.is_empty() {
        anyhow::bail!(
            "no session or task {} {}",
            con_event::escape_control(id),
            source.scope()
        );
    }
    let mut out = String::new();
    for (i, (session, input)) in sessions.iter().enumerate() {
        let selected = con_replay::timeline::select(*session, input)?;
        shown.extend(selected.iter().map(|e| (*e).clone()));
        let mut contents = Contents::new();
        fetch_blobs(source, selected.iter().copied(), &mut contents)?;
        if args.json {
            for event in &selected {
                out.push_str(&serde_json::to_string(&EventWithContents::new(
                    event, &contents,
                ))?);
                out.push('\n');
            }
        } else {
            if i > 0 {
                out.push('\n');
            }
            let t = con_replay::timeline(*session, input, &contents)?;
            out.push_str(&text::timeline(&t, TextOptions { full: args.full }));
        }
    }
    Ok(out)
}

/// One session in `--agent --json`.
#[derive(Serialize)]
struct SessionJson {
    session: SessionId,
    agent: String,
    task: Option<String>,
    start_seq: u64,
    started: String,
    started_unix_nanos: i64,
    duration_ms: Option<i64>,
    outcome: Option<&'static str>,
    model_calls: u32,
    cost_micro_usd: u64,
}

impl SessionJson {
    fn new(s: SessionSummary) -> Self {
        Self {
            session: s.session,
            agent: s.agent,
            task: s.task,
            start_seq: s.start_seq,
            started: humantime::format_rfc3339_nanos(con_event::json::recorded_time(s.started_at))
                .to_string(),
            started_unix_nanos: s.started_at,
            duration_ms: s.duration_nanos.map(|d| d / 1_000_000),
            outcome: s.outcome.map(|o| o.as_str()),
            model_calls: s.model_calls,
            cost_micro_usd: s.cost_micro_usd,
        }
    }
}

/// One session in `--list --json`: where its log was written, then the
/// session as `--agent --json` shows it.
#[derive(Serialize)]
struct ListedSessionJson {
    /// The name the text view shows: `system`, else `hostname`, else
    /// `machine_id`.
    host: Option<String>,
    /// `[system] name` of the con instance (`CON_SYSTEM`).
    system: Option<String>,
    /// journald's `_HOSTNAME`.
    hostname: Option<String>,
    /// journald's `_MACHINE_ID`.
    machine_id: Option<String>,
    log_id: String,
    #[serde(flatten)]
    session: SessionJson,
}

/// `--since` and `--until` as ns since the epoch.
fn time_window(args: &ReplayArgs) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    let since = args
        .since
        .as_deref()
        .map(|v| crate::time_bound::parse("--since", v, SystemTime::now()))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|v| crate::time_bound::parse("--until", v, SystemTime::now()))
        .transpose()?;
    Ok((since, until))
}

/// `con replay --list`: every session of every log, in order of start.
fn list_all(source: &mut dyn Source, args: &ReplayArgs) -> anyhow::Result<String> {
    let (since, until) = time_window(args)?;
    let kinds: Vec<u16> = ["session.started", "llm.response", "session.ended"]
        .into_iter()
        .filter_map(kind_id)
        .collect();
    let mut rows: Vec<(LogOrigin, SessionSummary)> = Vec::new();
    for (origin, events) in source.logs(&kinds)? {
        for s in con_replay::sessions(&events, None, since, until) {
            rows.push((origin.clone(), s));
        }
    }
    rows.sort_by(|(a, x), (b, y)| {
        (x.started_at, &a.log_id, x.start_seq).cmp(&(y.started_at, &b.log_id, y.start_seq))
    });
    if !args.json {
        let text_rows: Vec<text::ListedSession<'_>> = rows
            .iter()
            .map(|(origin, s)| text::ListedSession {
                host: origin.host.name(),
                log_id: &origin.log_id,
                session: s,
            })
            .collect();
        return Ok(text::sessions_of_logs(&text_rows));
    }
    let mut out = String::new();
    for (origin, s) in rows {
        let host = origin.host;
        out.push_str(&serde_json::to_string(&ListedSessionJson {
            host: (host.name() != "-").then(|| host.name().to_owned()),
            system: host.system,
            hostname: host.hostname,
            machine_id: host.machine_id,
            log_id: origin.log_id,
            session: SessionJson::new(s),
        })?);
        out.push('\n');
    }
    Ok(out)
}

/// `con replay --agent A`.
fn list(
    source: &mut dyn Source,
    agent: &str,
    args: &ReplayArgs,
    shown: &mut Vec<Event>,
) -> anyhow::Result<String> {
    let (since, until) = time_window(args)?;
    let events = source.events(
        Query {
            from_seq: 1,
            agent: Some(agent.to_owned()),
            ..Query::default()
        },
        None,
    )?;
    let list = con_replay::sessions(&events, Some(agent), since, until);
    shown.extend(events);
    if !args.json {
        return Ok(text::session_list(&list));
    }
    let mut out = String::new();
    for s in list {
        out.push_str(&serde_json::to_string(&SessionJson::new(s))?);
        out.push('\n');
    }
    Ok(out)
}

/// `con replay --trace T`: the fold is run again each time the sessions it
/// found bring new events, until the tree stops growing.
fn trace(
    source: &mut dyn Source,
    task: &str,
    json: bool,
    shown: &mut Vec<Event>,
) -> anyhow::Result<String> {
    // In a journal of several logs, the one that holds the task.
    source.settle_log(Query {
        from_seq: 1,
        task: Some(task.to_owned()),
        ..Query::default()
    })?;
    let mut by_seq: BTreeMap<u64, Event> = BTreeMap::new();
    for kind in ["inbox.arrived", "task.routed", "session.started"] {
        for e in source.events(
            Query {
                from_seq: 1,
                kind: kind_id(kind),
                ..Query::default()
            },
            None,
        )? {
            by_seq.insert(e.seq(), e);
        }
    }
    let mut contents = Contents::new();
    let mut loaded: BTreeSet<SessionId> = BTreeSet::new();
    let tree = loop {
        let events: Vec<Event> = by_seq.values().cloned().collect();
        let tree = con_replay::trace(task, &events, &contents);
        let new: Vec<SessionId> = tree
            .sessions()
            .into_iter()
            .filter(|s| !loaded.contains(s))
            .collect();
        if new.is_empty() {
            break tree;
        }
        for s in new {
            loaded.insert(s);
            let own = source.events(
                Query {
                    from_seq: 1,
                    session: Some(s),
                    ..Query::default()
                },
                None,
            )?;
            // Tool calls' arguments say what a session wrote where.
            fetch_blobs(
                source,
                own.iter()
                    .filter(|e| matches!(e.payload, Payload::ToolCall(_))),
                &mut contents,
            )?;
            for e in own {
                by_seq.insert(e.seq(), e);
            }
        }
    };
    if tree.root.hops.is_empty() && tree.root.sessions.is_empty() {
        anyhow::bail!(
            "no task {} {}",
            con_event::escape_control(task),
            source.scope()
        );
    }
    shown.extend(by_seq.into_values());
    if json {
        Ok(format!("{}\n", serde_json::to_string(&tree)?))
    } else {
        Ok(text::trace(&tree))
    }
}
