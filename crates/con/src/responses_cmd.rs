//! `con responses`: the answers agents wrote, with the task each answers,
//! from the record (`session.ended` and the response it references).

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use con_event::payloads::{Kind, SessionEnded};
use con_event::{Event, Payload, escape_control};
use con_layout::Layout;
use con_protocol::{Client, Query};

/// Arguments of `con responses`.
#[derive(Debug, Args)]
pub struct ResponsesArgs {
    /// Only this agent's answers.
    #[arg(long, value_name = "AGENT")]
    agent: Option<String>,
    /// Keep printing answers as they are recorded.
    #[arg(long, short)]
    follow: bool,
    /// One JSON object per answer.
    #[arg(long)]
    json: bool,
}

/// One answer as `--json` prints it.
#[derive(serde::Serialize)]
struct AnswerJson<'a> {
    seq: u64,
    time: String,
    agent: &'a str,
    task: Option<&'a str>,
    session: Option<String>,
    outcome: &'static str,
    response: String,
}

/// Runs `con responses`.
pub fn run(args: ResponsesArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let mut events = Client::connect(&layout.socket())?;
    if !args.follow {
        events.set_timeout(Some(crate::DAEMON_TIMEOUT))?;
    }
    // Contents on a connection of their own: the query streams on the other.
    let mut contents = Client::connect_with_timeout(&layout.socket(), crate::DAEMON_TIMEOUT)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failure = None;
    events.query(
        Query {
            from_seq: 1,
            agent: args.agent,
            kind: Some(SessionEnded::SPEC.id),
            follow: args.follow,
            ..Query::default()
        },
        |bytes| {
            let Ok(event) = Event::from_stored(&bytes) else {
                return true;
            };
            let Payload::SessionEnded(end) = &event.payload else {
                return true;
            };
            let Some(reference) = end.response else {
                return true;
            };
            let response = match contents.blob(reference.digest) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            };
            let printed = print(&mut out, &event, end, &response, args.json);
            if let Err(e) = printed {
                failure = Some(con_protocol::ClientError::Io(e));
                return false;
            }
            true
        },
    )?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}

fn print(
    out: &mut impl Write,
    event: &Event,
    end: &SessionEnded,
    response: &str,
    json: bool,
) -> std::io::Result<()> {
    let time = humantime::format_rfc3339_seconds(con_event::json::recorded_time(
        event.envelope.ts_unix_nanos,
    ))
    .to_string();
    let task = event.envelope.task.as_deref();
    if json {
        let line = AnswerJson {
            seq: event.envelope.seq,
            time,
            agent: &end.agent,
            task,
            session: event.envelope.session.map(|s| s.to_hex()),
            outcome: end.outcome.as_str(),
            response: response.to_owned(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        return writeln!(out);
    }
    writeln!(
        out,
        "{time}  {}  task {}  ({})",
        escape_control(&end.agent),
        escape_control(task.unwrap_or("-")),
        end.outcome.as_str()
    )?;
    // The answer is the agent's text: each line behind a margin, escaped,
    // so it cannot pass for a header of its own.
    for line in response.lines() {
        writeln!(out, "  | {}", escape_control(line))?;
    }
    out.flush()
}
