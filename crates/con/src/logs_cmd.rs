//! `con logs`.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use con_event::{Event, EventJson, SessionId, escape_control, kind_by_name};
use con_protocol::{Client, Query};

use con_layout::Layout;

/// Arguments of `con logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new events as they are committed.
    #[arg(short, long)]
    follow: bool,
    /// Only events by or about this agent.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// Only events of this session (32 hex digits).
    #[arg(long, value_name = "SESSION")]
    session: Option<String>,
    /// Only events of this task.
    #[arg(long, value_name = "TASK")]
    task: Option<String>,
    /// Only this kind (`tool.call` or `tool_call`).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Start at this seq.
    #[arg(long, default_value_t = 1, value_name = "SEQ")]
    from: u64,
    /// At most this many events.
    #[arg(short = 'n', long, value_name = "N")]
    limit: Option<u64>,
    /// One JSON object per line: the event JSON view (docs/event-json.md).
    #[arg(long)]
    json: bool,
}

/// Runs `con logs`.
pub fn run(args: LogsArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let kind = match &args.kind {
        None => None,
        Some(name) => Some(
            kind_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("--kind {name}: no such event kind"))?
                .id,
        ),
    };
    let session =
        match &args.session {
            None => None,
            Some(s) => Some(SessionId::from_hex(s).ok_or_else(|| {
                anyhow::anyhow!("--session {s:?}: not a session id (32 hex digits)")
            })?),
        };
    let mut client = Client::connect(&layout.socket())?;
    if !args.follow {
        // A follower waits for new events as long as it takes.
        client.set_timeout(Some(crate::DAEMON_TIMEOUT))?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failure = None;
    client.query(
        Query {
            from_seq: args.from,
            agent: args.agent,
            kind,
            session,
            task: args.task,
            limit: args.limit,
            follow: args.follow,
        },
        |bytes| {
            let line = match Event::from_stored(&bytes) {
                Ok(event) if args.json => {
                    match serde_json::to_string(&EventJson::from_event(&event)) {
                        Ok(line) => line,
                        Err(e) => {
                            failure = Some(anyhow::anyhow!(
                                "seq {}: cannot write JSON: {e}",
                                event.seq()
                            ));
                            return false;
                        }
                    }
                }
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
    humantime::format_rfc3339_millis(con_event::json::recorded_time(nanos)).to_string()
}

/// `seq time kind agent message`, with every agent-controlled string
/// escaped so that a name or an output cannot forge a line.
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
        escape_control(agent),
        escape_control(&event.payload.message())
    )
}
