//! Assembling an agent's `AGENTS.md` from the profile's layers.

use con_config::Agent;
use con_layout::Layout;

use crate::ProvisionError;
use crate::profile::Profile;

/// The assembled instructions of `agent`: every layer that exists, in order
/// base → `groups/<tier group>` → `groups/<g>`… → `roles/<r>`… →
/// `scopes/<s>`… → `agents/<name>` → the inline `instructions`, each
/// preceded by an HTML comment naming its source (invisible when rendered,
/// plain to anyone auditing what an agent was told). The header names the
/// layout's profile directory, where the layers live.
pub fn assemble(
    agent: &Agent,
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
        "<!-- AGENTS.md for agent {}, assembled by `con bootstrap` from {}; \
         do not edit: it is overwritten. -->\n",
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
    Ok(out)
}

fn push_layer(out: &mut String, source: &str, text: &str) {
    out.push_str(&format!("\n<!-- from {source} -->\n"));
    out.push_str(text.trim_end());
    out.push('\n');
}
