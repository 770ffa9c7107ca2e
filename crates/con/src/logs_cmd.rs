//! `con logs`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use con_event::{Event, kind_by_name};
use con_protocol::{Client, Query};
use serde_json::json;

use crate::paths::Paths;

/// Arguments of `con logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new events as they are committed.
    #[arg(short, long)]
    follow: bool,
    /// Only events by or about this agent.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// Only this kind (`tool.call` or `tool_call`).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Start at this seq.
    #[arg(long, default_value_t = 1, value_name = "SEQ")]
    from: u64,
    /// At most this many events.
    #[arg(short = 'n', long, value_name = "N")]
    limit: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Runs `con logs`.
pub fn run(args: LogsArgs, paths: &Paths) -> anyhow::Result<ExitCode> {
    let kind = match &args.kind {
        None => None,
        Some(name) => Some(
            kind_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("--kind {name}: no such event kind"))?
                .id,
        ),
    };
    let mut client = Client::connect(&paths.socket())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failure = None;
    client.query(
        Query {
            from_seq: args.from,
            agent: args.agent,
            kind,
            session: None,
            limit: args.limit,
            follow: args.follow,
        },
        |bytes| {
            let line = match Event::from_stored(&bytes) {
                Ok(event) if args.json => event_json(&event).to_string(),
                Ok(event) => event_line(&event),
                Err(e) => {
                    failure = Some(anyhow::anyhow!("undecodable event from the daemon: {e}"));
                    return false;
                }
            };
            // A closed pipe (`con logs | head`) ends the listing quietly.
            writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn timestamp(nanos: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// `seq time kind agent message`.
pub fn event_line(event: &Event) -> String {
    let env = &event.envelope;
    let agent = event
        .payload
        .subject_agent()
        .or(env.actor.agent.as_deref())
        .unwrap_or("-");
    format!(
        "{:>8}  {}  {:<24}  {:<12}  {}",
        env.seq,
        timestamp(env.ts_unix_nanos),
        event.payload.spec().name,
        agent,
        event.payload.message()
    )
}

/// The event as one JSON object.
pub fn event_json(event: &Event) -> serde_json::Value {
    let env = &event.envelope;
    json!({
        "seq": env.seq,
        "id": env.id.to_hex(),
        "time": timestamp(env.ts_unix_nanos),
        "ts_unix_nanos": env.ts_unix_nanos,
        "actor": { "uid": env.actor.uid, "agent": env.actor.agent },
        "session": env.session.map(|s| s.to_hex()),
        "task": env.task,
        "causation": env.causation,
        "kind": event.payload.spec().name,
        "kind_version": env.kind_version,
        "message": event.payload.message(),
        "payload": event.payload,
        "hash": event.hash.to_hex(),
        "prev_hash": env.prev_hash.to_hex(),
    })
}
