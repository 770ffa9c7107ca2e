//! `con policy explain <agent>`: the effective policy of one agent, from
//! the plan bootstrap enforces, each right with the config line it comes from.

use std::process::ExitCode;

use con_layout::Layout;
use con_provision::Installed;
use con_provision::config_edit::ConfigLines;
use con_provision::policy::{self, ExplainInput};

/// `con policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// What one agent may do: inboxes it can task, directories it can read
    /// or write, sudo rules, egress, unit hardening and the contracts
    /// watching it, each with the config line it comes from.
    Explain(ExplainArgs),
}

/// `con policy explain` options.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The agent.
    agent: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `con policy`.
pub fn run(cmd: PolicyCommand, layout: &Layout) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Explain(args) = cmd;
    con_config::validate_agent_name(&args.agent)
        .map_err(|m| anyhow::anyhow!("agent name {:?}: {m}", args.agent))?;
    let env = con_config::collect_environment(std::env::vars_os())?;
    let installed = Installed::read(layout, &env)?;
    let plan = con_provision::plan(&installed.input, layout)?;
    let lines = ConfigLines::parse(&installed.text);
    let contracts = policy::scan_contracts(&layout.contracts_dir())?;
    let (resolvers, from) = con_provision::egress::resolvers(&installed.input.config.network);
    let explained = policy::explain(
        &plan,
        layout,
        &ExplainInput {
            config: &installed.input.config,
            lines: &lines,
            profile_dir: &installed.profile_dir,
            contracts: &contracts,
            resolvers: (&resolvers, &from),
        },
        &args.agent,
        &policy::exposure,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explained)?);
    } else {
        let name = layout
            .config_file()
            .file_name()
            .map_or_else(|| "con.toml".into(), |n| n.to_string_lossy());
        print!("{}", explained.render(layout.root(), &name));
    }
    Ok(ExitCode::SUCCESS)
}
