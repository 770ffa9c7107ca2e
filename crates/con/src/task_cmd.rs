//! `con task`: drop a task file, atomically, as the calling user.

use std::path::PathBuf;
use std::process::ExitCode;

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
    println!("{}", dest.display());
    Ok(ExitCode::SUCCESS)
}
