//! Assembling an agent's `AGENTS.md` from the profile's layers.

use con_config::{Agent, Config, Tier};
use con_layout::Layout;

use crate::ProvisionError;
use crate::profile::Profile;

/// The assembled instructions of `agent`: every layer that exists, in order
/// base → `groups/<tier group>` → `groups/<g>`… → `roles/<r>`… →
/// `scopes/<s>`… → `agents/<name>` → the inline `instructions`, then the
/// roster of `config`'s agents ([`roster`]), each preceded by an HTML
/// comment naming its source (invisible when rendered, plain to anyone
/// auditing what an agent was told). The header names the layout's profile
/// directory, where the layers live.
///
/// Because the roster is part of every agent's file, a plan for a config
/// with an agent more or less (commission, decommission) rewrites every
/// remaining agent's `AGENTS.md`, and the apply's report (recorded in
/// `provision.applied`) lists each of them.
pub fn assemble(
    agent: &Agent,
    config: &Config,
    profile: &Profile,
    layout: &Layout,
) -> Result<String, ProvisionError> {
    let mut layers = vec!["base/AGENTS.md".to_owned()];
    layers.push(format!(
        "groups/{}/AGENTS.md",
        agent.tier.group().base_name()
    ));
    layers.extend(agent.groups.iter().map(|g| format!("groups/{g}/AGENTS.md")));
    layers.extend(agent.roles.iter().map(|r| format!("roles/{r}/AGENTS.md")));
    layers.extend(agent.scopes.iter().map(|s| format!("scopes/{s}/AGENTS.md")));
    layers.push(format!("agents/{}/AGENTS.md", agent.name));

    let mut out = format!(
        "<!-- AGENTS.md for agent {}, assembled by con provisioning (bootstrap, \
         commission, decommission) from {}; do not edit: it is overwritten. -->\n",
        agent.name,
        layout.profile_dir().display()
    );
    for layer in &layers {
        if let Some(text) = profile.text(layer)? {
            push_layer(&mut out, layer, text);
        }
    }
    if let Some(text) = &agent.instructions {
        push_layer(
            &mut out,
            &format!("con.toml: instructions of agent {}", agent.name),
            text,
        );
    }
    push_layer(
        &mut out,
        "con.toml: the configured agents",
        &roster(agent, config, layout),
    );
    Ok(out)
}

/// Who exists and what each does: every configured agent (file order) with
/// its tier, roles and inbox, and what its tier means for the reader. Kept
/// current by provisioning, so agents need not list `/srv/con/agents/`
/// (which also shows decommissioned agents' directories).
pub fn roster(me: &Agent, config: &Config, layout: &Layout) -> String {
    let mut out = String::from(
        "## Who is here\n\n\
         The agents of this conspiracy now. This list is rewritten whenever an \
         agent is commissioned or decommissioned; an agent not listed here does \
         not exist (any more).\n\n",
    );
    for a in &config.agents {
        let you = if a.name == me.name { " (you)" } else { "" };
        let roles = if a.roles.is_empty() {
            "no role".to_owned()
        } else {
            format!("roles: {}", a.roles.join(", "))
        };
        let job = match a.tier {
            Tier::Officer => "sets direction",
            Tier::Operator => "runs the system",
            Tier::Worker => "does delegated work",
        };
        out.push_str(&format!(
            "- `{}`{you}: {} ({job}); {roles}; inbox `{}/`\n",
            a.name,
            a.tier.as_str(),
            layout.agent_inbox(&a.name).display()
        ));
    }
    out
}

fn push_layer(out: &mut String, source: &str, text: &str) {
    out.push_str(&format!("\n<!-- from {source} -->\n"));
    out.push_str(text.trim_end());
    out.push('\n');
}
