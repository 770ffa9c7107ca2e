//! `con agent`: list agents with their condition; halt, quarantine, kill
//! or resume one (operators). Each order is carried out and recorded by
//! the daemon (`enforcement.action` with the caller's uid, then
//! `enforcement.done`); this command only asks and prints.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use con_event::escape_control;
use con_layout::Layout;
use con_protocol::{AgentAction, AgentOrder, Client};

/// `con agent …`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List agents: condition, inbox, running sessions.
    List(ListArgs),
    /// Stop an agent (every process of its user) and keep it stopped: no
    /// run starts until `con agent resume`; its tasks wait in its inbox.
    Halt(NameArgs),
    /// Halt an agent and take every other agent's write access to its
    /// inbox away, until `con agent resume`.
    Quarantine(NameArgs),
    /// End an agent's running sessions and every process of its user; it
    /// stays active and takes its next task as usual.
    Kill(NameArgs),
    /// Undo a halt or quarantine: restore exactly what it removed and let
    /// the agent run again.
    Resume(NameArgs),
}

/// Arguments of `con agent list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the agents' rows of the status view as JSON.
    #[arg(long)]
    json: bool,
}

/// An agent's name, and the output format.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The agent.
    name: String,
    /// Print the recorded `enforcement.done` (and the seqs) as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `con agent …`.
pub fn run(cmd: AgentCommand, layout: &Layout) -> anyhow::Result<ExitCode> {
    let (args, action) = match cmd {
        AgentCommand::List(args) => return list(&args, layout),
        AgentCommand::Halt(a) => (a, AgentAction::Halt),
        AgentCommand::Quarantine(a) => (a, AgentAction::Quarantine),
        AgentCommand::Kill(a) => (a, AgentAction::Kill),
        AgentCommand::Resume(a) => (a, AgentAction::Resume),
    };
    con_config::validate_agent_name(&args.name)
        .map_err(|e| anyhow::anyhow!("agent {:?}: {e}", args.name))?;
    // No timeout: killing and changing ACLs take what they take, and the
    // answer comes once everything is recorded.
    let view = Client::connect(&layout.socket())?.agent_order(AgentOrder {
        agent: args.name,
        action,
    })?;
    let text = if args.json {
        serde_json::to_string_pretty(&view)? + "\n"
    } else {
        let d = &view.done;
        let mut out = format!(
            "{} {}: {} (seq {} → {})\n",
            d.action,
            escape_control(d.target.as_deref().unwrap_or("-")),
            if d.ok { "done" } else { "FAILED" },
            view.action_seq,
            view.done_seq
        );
        if !d.detail.is_empty() {
            let _ = writeln!(out, "  {}", escape_control(&d.detail));
        }
        if !d.pids.is_empty() {
            let pids: Vec<String> = d.pids.iter().map(u32::to_string).collect();
            let _ = writeln!(out, "  killed: {}", pids.join(" "));
        }
        for g in &d.acl_removed {
            let _ = writeln!(
                out,
                "  removed: {} on {}",
                escape_control(&g.entry),
                escape_control(&g.path)
            );
        }
        out
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(if view.done.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn list(args: &ListArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    let view = crate::status_cmd::fetch(layout)?;
    let text = if args.json {
        serde_json::to_string_pretty(&view.agents)? + "\n"
    } else {
        let mut out = format!(
            "{:<16} {:<14} {:>6} {:>8}\n",
            "AGENT", "CONDITION", "INBOX", "RUNNING"
        );
        for a in &view.agents {
            let name = if a.configured {
                a.name.clone()
            } else {
                format!("{} (gone)", escape_control(&a.name))
            };
            let _ = writeln!(
                out,
                "{:<16} {:<14} {:>6} {:>8}",
                name,
                a.condition.as_str(),
                a.inbox_depth,
                a.running_sessions
            );
        }
        out
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}
