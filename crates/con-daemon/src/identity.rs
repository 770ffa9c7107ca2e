//! Who is on the other end of a connection, from `SO_PEERCRED` alone.

use con_event::{Authority, Payload};
use con_layout::Layout;
use nix::unistd::{Group, Uid, User};

/// A caller as the kernel identified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Root, or a member of the trusted group.
    Operator {
        /// Its uid.
        uid: u32,
    },
    /// An agent user (`<prefix><name>`).
    Agent {
        /// Its uid.
        uid: u32,
        /// Agent name (the user name without the prefix).
        name: String,
    },
}

impl Identity {
    /// The uid.
    pub fn uid(&self) -> u32 {
        match self {
            Identity::Operator { uid } | Identity::Agent { uid, .. } => *uid,
        }
    }

    /// The agent name, for agents.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Identity::Agent { name, .. } => Some(name),
            Identity::Operator { .. } => None,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Operator { uid } => write!(f, "operator (uid {uid})"),
            Identity::Agent { uid, name } => write!(f, "agent {name} (uid {uid})"),
        }
    }
}

/// Maps a peer uid to an identity; anyone else is refused. Only users of
/// configured agents are agents (a `<prefix><name>` user of another
/// conspiracy, or a leftover one, is nobody here).
pub fn identify(uid: u32, layout: &Layout, agents: &[String]) -> Result<Identity, String> {
    if uid == 0 {
        return Ok(Identity::Operator { uid });
    }
    let user = User::from_uid(Uid::from_raw(uid))
        .map_err(|e| format!("uid {uid}: cannot look up the user: {e}"))?
        .ok_or_else(|| format!("uid {uid} has no user entry"))?;
    if let Ok(Some(group)) = Group::from_name(&layout.trusted_group())
        && (user.gid == group.gid || group.mem.contains(&user.name))
    {
        return Ok(Identity::Operator { uid });
    }
    if let Some(name) = user.name.strip_prefix(layout.user_prefix())
        && agents.iter().any(|a| a == name)
    {
        return Ok(Identity::Agent {
            uid,
            name: name.to_owned(),
        });
    }
    Err(format!(
        "uid {uid} ({}) is neither an operator nor an agent",
        user.name
    ))
}

/// Whether `identity` may append `payload` through the socket; the reason
/// when not. The kind's [`Authority`] decides: daemon kinds never come from a
/// client, agent-run kinds only from an agent about itself (the caller checks
/// that the session is one the agent opened), operator kinds only from
/// operators.
pub fn may_append(identity: &Identity, payload: &Payload) -> Result<(), String> {
    let kind = payload.spec();
    match (kind.authority, identity) {
        (Authority::Daemon, _) => Err(format!(
            "{} events are recorded by the daemon only",
            kind.name
        )),
        (Authority::Operator, Identity::Operator { .. }) => Ok(()),
        (Authority::Operator, Identity::Agent { .. }) => {
            Err(format!("agents may not record {} events", kind.name))
        }
        (Authority::AgentRun, Identity::Operator { .. }) => Err(format!(
            "{} events are recorded by agent runs only",
            kind.name
        )),
        (Authority::AgentRun, Identity::Agent { name, .. }) => match payload.subject_agent() {
            Some(subject) if subject != name => Err(format!(
                "agent {name} may not record {} events about agent {subject}",
                kind.name
            )),
            _ => Ok(()),
        },
    }
}
