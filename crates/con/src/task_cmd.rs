//! `con task`: drop a task file, atomically, as the calling user, and
//! optionally wait for its answer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use con_event::payloads::{Kind, Outcome, SessionEnded};
use con_event::{Event, Payload};
use con_layout::Layout;
use con_protocol::{Client, ClientError, Query};

/// Arguments of `con task`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The task text (use `-` to read it from standard input).
    message: String,
    /// Deliver straight to this agent's inbox instead of the outer inbox
    /// (needs write access to it, granted by ACL).
    #[arg(long, value_name = "AGENT")]
    to: Option<String>,
    /// Wait for the task's first session to end: print the answer and exit
    /// 0, or say why it failed (a missing key, a provider error…) and exit 1.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 1).
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "wait")]
    timeout: u64,
}

/// Runs `con task`.
pub fn run(args: TaskArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let inbox: PathBuf = match &args.to {
        None => layout.outer_inbox(),
        Some(agent) => {
            con_config::validate_agent_name(agent)
                .map_err(|e| anyhow::anyhow!("--to {agent:?}: {e}"))?;
            layout.agent_inbox(agent)
        }
    };
    let message = if args.message == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        text
    } else {
        args.message
    };
    if message.trim().is_empty() {
        anyhow::bail!("the task is empty");
    }
    let dest = con_inbox::submit_task(&inbox, &message)
        .with_context(|| format!("{}: cannot write the task", inbox.display()))?;
    if !args.wait {
        println!("{}", dest.display());
        return Ok(ExitCode::SUCCESS);
    }
    let id = dest
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".task").to_owned())
        .unwrap_or_default();
    wait_for_answer(layout, &id, Duration::from_secs(args.timeout))
}

/// Follows the log for the end of task `id`'s first session: its answer on
/// stdout, or why it ended without one on stderr.
fn wait_for_answer(layout: &Layout, id: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect_with_timeout(&layout.socket(), timeout)?;
    let mut ended = None;
    let followed = client.query(
        Query {
            from_seq: 1,
            task: Some(id.to_owned()),
            kind: Some(SessionEnded::SPEC.id),
            follow: true,
            ..Query::default()
        },
        |bytes| match Event::from_stored(&bytes) {
            Ok(Event {
                payload: Payload::SessionEnded(end),
                ..
            }) => {
                ended = Some(end);
                false
            }
            _ => true,
        },
    );
    match (followed, ended) {
        (_, Some(end)) => {
            // A new connection: the followed query may still be streaming
            // on this one.
            let answer = match end.response {
                Some(r) => {
                    Some(Client::connect_with_timeout(&layout.socket(), timeout)?.blob(r.digest)?)
                }
                None => None,
            };
            if let Some(answer) = &answer {
                std::io::Write::write_all(&mut std::io::stdout(), answer)?;
            }
            if end.outcome == Outcome::Ok {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "con: task {id}: {}: {}",
                end.outcome.as_str(),
                con_event::escape_control(&end.detail)
            );
            Ok(ExitCode::FAILURE)
        }
        (Err(ClientError::NoAnswer { .. }), None) => {
            let waited = timeout.as_secs();
            // What the daemon knows is wrong says more than a guess.
            let problems: Vec<String> = crate::status_cmd::fetch(layout)
                .map(|view| view.problems.into_iter().map(|p| p.message).collect())
                .unwrap_or_default();
            if problems.is_empty() {
                anyhow::bail!(
                    "task {id}: no session of it ended within {waited} s (is an agent running it? `con status`)"
                )
            }
            anyhow::bail!(
                "task {id}: no session of it ended within {waited} s; `con status` lists: {}",
                con_event::escape_control(&problems.join("; "))
            )
        }
        (Err(e), None) => Err(e.into()),
        (Ok(_), None) => anyhow::bail!("task {id}: the daemon ended the stream"),
    }
}
