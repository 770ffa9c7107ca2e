//! `con task`: drop a task file, atomically, as the calling user.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use con_layout::Layout;

/// Arguments of `con task`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The task text (use `-` to read it from standard input).
    message: String,
    /// Deliver straight to this agent's inbox instead of the outer inbox
    /// (needs write access to it, granted by ACL).
    #[arg(long, value_name = "AGENT")]
    to: Option<String>,
}

/// A task id that sorts by creation time and stays unique for many tasks
/// per second and across writers: UTC time to the nanosecond, then random.
fn task_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_nanos(UNIX_EPOCH + now).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{compact}-{}", &random[..8])
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
    let dest = inbox.join(format!("{}.task", task_id()));
    // Staged under a hidden name the watcher ignores: readers never see a
    // half-written task, and a task already there is never replaced.
    let mut task = con_fs::StagedFile::begin(&dest, 0o666)
        .with_context(|| format!("{}: cannot write a task here", inbox.display()))?;
    task.write_all(message.as_bytes())
        .and_then(|()| task.commit_new())
        .with_context(|| format!("{}: cannot write the task", dest.display()))?;
    println!("{}", dest.display());
    Ok(ExitCode::SUCCESS)
}
