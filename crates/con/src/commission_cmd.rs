//! `con commission` and `con decommission`: add or remove one agent at
//! runtime (config entry, then the same plan → apply as bootstrap), and
//! record what changed.

use std::process::ExitCode;

use con_config::Tier;
use con_event::payloads::AgentCondition;
use con_layout::Layout;
use con_provision::NewAgent;

use crate::bootstrap_cmd::finish;

/// `con commission` options.
#[derive(Debug, clap::Args)]
pub struct CommissionArgs {
    /// The new agent's name (`[a-z][a-z0-9-]{0,30}`); its Linux user is
    /// <user prefix><name>.
    name: String,
    /// Its tier: officer, operator or worker.
    #[arg(long, default_value = "worker", value_name = "TIER")]
    tier: String,
    /// A role from the installed profile (<config dir>/roles/<role>);
    /// repeat for several.
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// `con decommission` options.
#[derive(Debug, clap::Args)]
pub struct DecommissionArgs {
    /// The agent to remove.
    name: String,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Runs `con commission`.
pub fn commission(args: CommissionArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    // The name becomes a user and path names: checked before anything else.
    con_config::validate_agent_name(&args.name)
        .map_err(|m| anyhow::anyhow!("agent name {:?}: {m}", args.name))?;
    let tier: Tier = args
        .tier
        .parse()
        .map_err(|m| anyhow::anyhow!("--tier: {m}"))?;
    con_provision::commission::require_root_for("commission")?;
    let agent = NewAgent {
        name: args.name,
        tier,
        roles: args.roles,
    };
    let env = con_config::collect_environment(std::env::vars_os())?;
    let caller = sudo_user()?;
    let quarantined = crate::bootstrap_cmd::quarantined(layout)?;
    let report =
        con_provision::commission(layout, &env, &agent, caller.as_deref(), None, &quarantined)?;
    finish(
        &format!("commission {}", agent.name),
        &report,
        args.json,
        layout,
        Vec::new(),
    )
}

/// Runs `con decommission`.
pub fn decommission(args: DecommissionArgs, layout: &Layout) -> anyhow::Result<ExitCode> {
    con_config::validate_agent_name(&args.name)
        .map_err(|m| anyhow::anyhow!("agent name {:?}: {m}", args.name))?;
    con_provision::commission::require_root_for("decommission")?;
    let env = con_config::collect_environment(std::env::vars_os())?;
    let caller = sudo_user()?;
    let quarantined = crate::bootstrap_cmd::quarantined(layout)?;
    let done = con_provision::decommission(
        layout,
        &env,
        &args.name,
        caller.as_deref(),
        None,
        &quarantined,
    )?;
    let state = if done.removed {
        vec![con_protocol::SetCondition {
            agent: args.name.clone(),
            condition: AgentCondition::Decommissioned,
            reason: "con decommission".to_owned(),
        }]
    } else {
        Vec::new()
    };
    finish(
        &format!("decommission {}", args.name),
        &done.report,
        args.json,
        layout,
        state,
    )
}

/// The user sudo says ran this command, if it ran through sudo: what an
/// agent may commission or decommission is bounded by what it is
/// (`con_provision::commission::Delegation`). sudo sets `SUDO_UID` itself,
/// so the agent cannot choose it, and only root gets this far.
fn sudo_user() -> anyhow::Result<Option<String>> {
    let Some(raw) = std::env::var_os("SUDO_UID") else {
        return Ok(None);
    };
    let uid: u32 = raw
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("SUDO_UID {raw:?} is not a uid: refused"))?;
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))? {
        Some(user) => Ok(Some(user.name)),
        None => anyhow::bail!("SUDO_UID {uid} has no passwd entry: refused"),
    }
}
