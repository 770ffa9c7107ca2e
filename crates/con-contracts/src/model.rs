//! What a contract file says, once parsed and checked.

use std::path::PathBuf;
use std::time::Duration;

/// Longest a check may run when its file names no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest timeout a contract may ask for: a check holds a slot of the
/// daemon's evaluation until it ends.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The name a contract with `id` is stored under when added through the
/// daemon (`<id>.yaml`), or why `id` cannot name a file: the parser's id
/// rule already keeps `/` and everything but `A-Z a-z 0-9 - _ .` out; a
/// leading `.` (hidden files, `..`) or `-` (read as an option by the
/// tools that list the directory) is refused here.
pub fn stored_name(id: &str) -> Result<String, String> {
    let safe = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if safe {
        Ok(format!("{id}.yaml"))
    } else {
        Err(format!(
            "{id:?} is not a safe file name (A-Z a-z 0-9 - _ ., not starting with . or -)"
        ))
    }
}

/// One contract file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contract {
    /// `id` (`CON-SYS-001`).
    pub id: String,
    /// `description`.
    pub description: String,
    /// `type`.
    pub kind: ContractType,
    /// `frequency`: how often the daemon evaluates it on its own (`None`:
    /// only when asked).
    pub frequency: Option<Duration>,
    /// `scope`.
    pub scope: Scope,
    /// `checks`, in file order (may be empty only for a preventive contract,
    /// which records an enforcement that the OS carries out).
    pub checks: Vec<Check>,
    /// `mechanism`: for a preventive contract, what enforces it elsewhere
    /// (`nftables`, `acl`, `sudoers`, `file-modes`, `systemd`, …).
    pub mechanism: Option<String>,
    /// `agent`: the one agent a preventive contract is about, when not every
    /// agent (what `scope: agent:<name>` says; both may be given if they
    /// agree).
    pub agent: Option<String>,
    /// `enforcement`: how the mechanism enforces it (a command, a rule, a
    /// sentence), for the record.
    pub enforcement: Option<String>,
}

impl Contract {
    /// The agent the contract is about (its scope's, or its `agent`), or
    /// `None` for every agent.
    pub fn applies_to(&self) -> Option<&str> {
        self.scope.agent().or(self.agent.as_deref())
    }
}

/// `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractType {
    /// Detects a violation after the fact: its checks run on a schedule.
    Detective,
    /// Prevents a violation (the OS enforces it); registered for the record,
    /// its checks (if any) verify that the enforcement is in place.
    Preventive,
}

impl ContractType {
    /// Spelling in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ContractType::Detective => "detective",
            ContractType::Preventive => "preventive",
        }
    }
}

/// `scope`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The host.
    System,
    /// One agent (`agent:<name>`).
    Agent(String),
}

impl Scope {
    /// The agent, if scoped to one.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Scope::System => None,
            Scope::Agent(a) => Some(a),
        }
    }
}

/// One check of a contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `name`, unique within the contract.
    pub name: String,
    /// What runs.
    pub probe: Probe,
    /// How long it may run before its process group is killed.
    pub timeout: Duration,
    /// `on_fail`, if given.
    pub on_fail: Option<OnFail>,
}

/// How a check is evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `command: {run, test}`: `run`'s standard output, trimmed, is
    /// `$RESULT` for the shell test `test`.
    Command {
        /// Shell command producing the value.
        run: String,
        /// Shell test of `$RESULT`.
        test: String,
    },
    /// `script: {path, timeout}`: a shell script, relative to the
    /// contract's directory.
    Script {
        /// Relative path (no `..`, not absolute).
        path: PathBuf,
    },
}

/// `on_fail`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnFail {
    /// `action`.
    pub action: Action,
    /// `escalate`: the agent told when the check starts failing.
    pub escalate: Option<String>,
    /// `message`.
    pub message: Option<String>,
}

/// What a failing check asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Record and escalate only.
    Alert,
    /// End the scope agent's running session.
    KillSession,
    /// Stop the scope agent and close its inbox.
    Quarantine,
    /// Stop every agent.
    HaltAgents,
    /// Stop worker-tier agents.
    HaltWorkers,
}

impl Action {
    /// Every action, in the order they are documented.
    pub const ALL: [Action; 5] = [
        Action::Alert,
        Action::KillSession,
        Action::Quarantine,
        Action::HaltAgents,
        Action::HaltWorkers,
    ];

    /// Spelling in the file and in `enforcement.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::KillSession => "kill_session",
            Action::Quarantine => "quarantine",
            Action::HaltAgents => "halt_agents",
            Action::HaltWorkers => "halt_workers",
        }
    }

    /// The action spelled `s`.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_are_plain_file_names() {
        assert_eq!(
            stored_name("CON-SYS-009").as_deref(),
            Ok("CON-SYS-009.yaml")
        );
        assert_eq!(stored_name("a.b_c").as_deref(), Ok("a.b_c.yaml"));
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(stored_name(bad).is_err(), "{bad:?}");
        }
    }
}
