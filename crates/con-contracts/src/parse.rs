//! Contract files: YAML text to a [`Contract`] (pure: the caller reads the
//! file). Every error names the file, the contract (once its id is known)
//! and the field, on one line.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::model::{
    Action, Check, Contract, ContractType, DEFAULT_TIMEOUT, MAX_TIMEOUT, OnFail, Probe, Scope,
};

/// Longest contract id accepted.
const MAX_ID_LEN: usize = 64;

/// Longest `mechanism` accepted.
const MAX_MECHANISM_LEN: usize = 32;

/// Why a contract file cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ContractError {
    /// The file.
    pub file: PathBuf,
    /// The contract's id, if the file got that far.
    pub contract: Option<String>,
    /// The field (`checks[1].command.test`), empty for the file as a whole.
    pub field: String,
    /// What is wrong, on one line.
    pub message: String,
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(id) = &self.contract {
            write!(f, ": contract {id}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        // One line, whatever the YAML library said.
        let message: String = self
            .message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        write!(f, ": {message}")
    }
}

/// Parses the text of the contract file `file`.
pub fn parse_contract(file: &Path, text: &str) -> Result<Contract, ContractError> {
    let mut p = Parser {
        file,
        contract: None,
    };
    let doc: Value = serde_yaml::from_str(text).map_err(|e| p.err("", e.to_string()))?;
    let Value::Mapping(top) = doc else {
        return Err(p.err("", "expected a mapping of contract fields"));
    };
    // The id first, so that every later error can name the contract.
    let id = p.string(&top, "", "id")?;
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(p.err(
            "id",
            format!("{id:?}: expected 1 to {MAX_ID_LEN} of A-Z a-z 0-9 - _ ."),
        ));
    }
    p.contract = Some(id.clone());
    p.known(
        &top,
        "",
        &[
            "id",
            "description",
            "type",
            "frequency",
            "scope",
            "checks",
            // A preventive contract's record of what the OS enforces.
            "mechanism",
            "agent",
            "enforcement",
        ],
    )?;
    let description = p.opt_string(&top, "", "description")?.unwrap_or_default();
    let kind = match p.string(&top, "", "type")?.as_str() {
        "detective" => ContractType::Detective,
        "preventive" => ContractType::Preventive,
        other => {
            return Err(p.err(
                "type",
                format!("{other:?}: expected detective or preventive"),
            ));
        }
    };
    let frequency = p
        .opt_string(&top, "", "frequency")?
        .map(|f| p.duration("frequency", &f))
        .transpose()?;
    let scope = match p.opt_string(&top, "", "scope")? {
        None => Scope::System,
        Some(s) if s == "system" => Scope::System,
        Some(s) => match s.strip_prefix("agent:") {
            Some(agent) => Scope::Agent(p.agent_name("scope", agent)?),
            None => {
                return Err(p.err("scope", format!("{s:?}: expected system or agent:<name>")));
            }
        },
    };
    let checks = match top.get("checks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => {
            let mut checks: Vec<Check> = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let field = format!("checks[{i}]");
                let check = p.check(&field, item)?;
                if checks.iter().any(|c| c.name == check.name) {
                    return Err(p.err(
                        &format!("{field}.name"),
                        format!("{:?} is already a check of this contract", check.name),
                    ));
                }
                checks.push(check);
            }
            checks
        }
        Some(_) => return Err(p.err("checks", "expected a list of checks")),
    };
    if checks.is_empty() && kind == ContractType::Detective {
        return Err(p.err("checks", "a detective contract needs at least one check"));
    }
    let mechanism = p.opt_string(&top, "", "mechanism")?;
    if let Some(m) = &mechanism
        && (m.is_empty()
            || m.len() > MAX_MECHANISM_LEN
            || !m
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(p.err(
            "mechanism",
            format!(
                "{m:?}: expected one word of 1 to {MAX_MECHANISM_LEN} of A-Z a-z 0-9 - _ . (nftables, acl, sudoers, file-modes, systemd)"
            ),
        ));
    }
    let agent = p
        .opt_string(&top, "", "agent")?
        .map(|a| p.agent_name("agent", &a))
        .transpose()?;
    if let (Some(a), Some(s)) = (&agent, scope.agent())
        && a != s
    {
        return Err(p.err("agent", format!("{a:?} contradicts scope agent:{s}")));
    }
    let enforcement = p.opt_string(&top, "", "enforcement")?;
    Ok(Contract {
        id,
        description,
        kind,
        frequency,
        scope,
        checks,
        mechanism,
        agent,
        enforcement,
    })
}

struct Parser<'a> {
    file: &'a Path,
    contract: Option<String>,
}

impl Parser<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> ContractError {
        ContractError {
            file: self.file.to_owned(),
            contract: self.contract.clone(),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn path(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    }

    /// Refuses keys outside `known`: a misspelt field would otherwise be
    /// silently ignored (an `on_fial` that never acts).
    fn known(&self, map: &Mapping, prefix: &str, known: &[&str]) -> Result<(), ContractError> {
        for key in map.keys() {
            match key.as_str() {
                Some(k) if known.contains(&k) => {}
                Some(k) => {
                    return Err(self.err(
                        &Self::path(prefix, k),
                        format!("unknown field (expected one of {})", known.join(", ")),
                    ));
                }
                None => return Err(self.err(prefix, "field names must be strings")),
            }
        }
        Ok(())
    }

    fn opt_string(
        &self,
        map: &Mapping,
        prefix: &str,
        key: &str,
    ) -> Result<Option<String>, ContractError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            // `frequency: 60` or `id: 7` are written without quotes often
            // enough; their text is what was meant.
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(self.err(&Self::path(prefix, key), "expected a string")),
        }
    }

    fn string(&self, map: &Mapping, prefix: &str, key: &str) -> Result<String, ContractError> {
        self.opt_string(map, prefix, key)?
            .ok_or_else(|| self.err(&Self::path(prefix, key), "missing"))
    }

    fn duration(&self, field: &str, text: &str) -> Result<Duration, ContractError> {
        con_config::parse_duration_secs(text)
            .map(Duration::from_secs)
            .map_err(|e| self.err(field, e))
    }

    fn agent_name(&self, field: &str, name: &str) -> Result<String, ContractError> {
        con_config::validate_agent_name(name)
            .map(|()| name.to_owned())
            .map_err(|e| self.err(field, format!("{name:?}: {e}")))
    }

    fn check(&self, field: &str, item: &Value) -> Result<Check, ContractError> {
        let Value::Mapping(map) = item else {
            return Err(self.err(field, "expected a mapping with name and command or script"));
        };
        self.known(map, field, &["name", "command", "script", "on_fail"])?;
        let name = self.string(map, field, "name")?;
        if name.is_empty() || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(self.err(
                &Self::path(field, "name"),
                format!("{name:?}: expected a non-empty name without / or control characters"),
            ));
        }
        let (probe, timeout) = match (map.get("command"), map.get("script")) {
            (Some(_), Some(_)) => {
                return Err(self.err(field, "has both command and script; expected one"));
            }
            (None, None) => return Err(self.err(field, "needs a command or a script")),
            (Some(command), None) => {
                let f = Self::path(field, "command");
                let Value::Mapping(c) = command else {
                    return Err(self.err(&f, "expected a mapping with run and test"));
                };
                self.known(c, &f, &["run", "test"])?;
                let run = self.string(c, &f, "run")?;
                let test = self.string(c, &f, "test")?;
                (Probe::Command { run, test }, DEFAULT_TIMEOUT)
            }
            (None, Some(script)) => {
                let f = Self::path(field, "script");
                let Value::Mapping(s) = script else {
                    return Err(self.err(&f, "expected a mapping with path and timeout"));
                };
                self.known(s, &f, &["path", "timeout"])?;
                let path = PathBuf::from(self.string(s, &f, "path")?);
                // Scripts stay inside the contracts directory, so what runs
                // is what that directory's owners put there.
                let inside = path
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                if !inside || path.as_os_str().is_empty() {
                    return Err(self.err(
                        &Self::path(&f, "path"),
                        format!(
                            "{}: expected a path relative to the contract's directory, without ..",
                            path.display()
                        ),
                    ));
                }
                let timeout = match self.opt_string(s, &f, "timeout")? {
                    None => DEFAULT_TIMEOUT,
                    Some(t) => {
                        let tf = Self::path(&f, "timeout");
                        let d = self.duration(&tf, &t)?;
                        if d > MAX_TIMEOUT {
                            return Err(
                                self.err(&tf, format!("{t:?}: at most {}s", MAX_TIMEOUT.as_secs()))
                            );
                        }
                        d
                    }
                };
                (Probe::Script { path }, timeout)
            }
        };
        let on_fail = match map.get("on_fail") {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(o)) => {
                let f = Self::path(field, "on_fail");
                self.known(o, &f, &["action", "escalate", "message"])?;
                let action = self.string(o, &f, "action")?;
                let action = Action::parse(&action).ok_or_else(|| {
                    let all: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                    self.err(
                        &Self::path(&f, "action"),
                        format!("{action:?}: expected one of {}", all.join(", ")),
                    )
                })?;
                let escalate = self
                    .opt_string(o, &f, "escalate")?
                    .map(|a| self.agent_name(&Self::path(&f, "escalate"), &a))
                    .transpose()?;
                let message = self.opt_string(o, &f, "message")?;
                Some(OnFail {
                    action,
                    escalate,
                    message,
                })
            }
            Some(_) => {
                return Err(self.err(
                    &Self::path(field, "on_fail"),
                    "expected a mapping with action, escalate and message",
                ));
            }
        };
        Ok(Check {
            name,
            probe,
            timeout,
            on_fail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Contract, String> {
        parse_contract(Path::new("/c/X.yaml"), text).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
id: CON-T-001
description: a test
type: detective
frequency: 60s
scope: agent:scribe
checks:
  - name: value
    command:
      run: "echo 3"
      test: "[ $RESULT -ge 1 ]"
    on_fail:
      action: quarantine
      escalate: sysadmin
      message: "too low"
  - name: script
    script:
      path: scripts/x.sh
      timeout: 5s
"#;

    #[test]
    fn a_full_contract_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.id, "CON-T-001");
        assert_eq!(c.kind, ContractType::Detective);
        assert_eq!(c.frequency, Some(Duration::from_secs(60)));
        assert_eq!(c.scope, Scope::Agent("scribe".into()));
        assert_eq!(c.checks.len(), 2);
        assert_eq!(
            c.checks[0].probe,
            Probe::Command {
                run: "echo 3".into(),
                test: "[ $RESULT -ge 1 ]".into()
            }
        );
        assert_eq!(c.checks[0].timeout, DEFAULT_TIMEOUT);
        let on_fail = c.checks[0].on_fail.clone().unwrap();
        assert_eq!(on_fail.action, Action::Quarantine);
        assert_eq!(on_fail.escalate.as_deref(), Some("sysadmin"));
        assert_eq!(
            c.checks[1].probe,
            Probe::Script {
                path: "scripts/x.sh".into()
            }
        );
        assert_eq!(c.checks[1].timeout, Duration::from_secs(5));
        assert_eq!(c.checks[1].on_fail, None);
    }

    #[test]
    fn a_preventive_record_needs_no_checks() {
        let c = parse(
            "id: CON-P-1\ntype: preventive\nmechanism: nftables\nagent: scribe\nenforcement: |\n  nft add rule x\n",
        )
        .unwrap();
        assert_eq!(c.kind, ContractType::Preventive);
        assert!(c.checks.is_empty());
        assert_eq!(c.scope, Scope::System);
        assert_eq!(c.mechanism.as_deref(), Some("nftables"));
        assert_eq!(c.enforcement.as_deref(), Some("nft add rule x\n"));
        assert_eq!(c.applies_to(), Some("scribe"));
        let every = parse("id: CON-P-2\ntype: preventive\nmechanism: acl\n").unwrap();
        assert_eq!(every.applies_to(), None);
        let scoped = parse("id: CON-P-3\ntype: preventive\nscope: agent:scout\n").unwrap();
        assert_eq!(scoped.applies_to(), Some("scout"));
        for (text, want) in [
            (
                "id: P\ntype: preventive\nmechanism: 'two words'\n",
                "/c/X.yaml: contract P: mechanism: \"two words\": expected one word",
            ),
            (
                "id: P\ntype: preventive\nscope: agent:scout\nagent: scribe\n",
                "/c/X.yaml: contract P: agent: \"scribe\" contradicts scope agent:scout",
            ),
            (
                "id: P\ntype: preventive\nagent: 'Bad/Name'\n",
                "/c/X.yaml: contract P: agent: \"Bad/Name\"",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn errors_name_the_file_the_contract_and_the_field_on_one_line() {
        let cases: &[(&str, &str)] = &[
            ("id: [1]\n", "/c/X.yaml: id: expected a string"),
            ("type: detective\n", "/c/X.yaml: id: missing"),
            ("id: 'a b'\n", "/c/X.yaml: id: \"a b\": expected 1 to 64"),
            (
                "id: A\ntype: other\n",
                "/c/X.yaml: contract A: type: \"other\": expected detective or preventive",
            ),
            (
                "id: A\ntype: detective\n",
                "/c/X.yaml: contract A: checks: a detective contract needs at least one check",
            ),
            (
                "id: A\ntype: detective\nfrequency: 60\nchecks: []\n",
                "/c/X.yaml: contract A: frequency: \"60\": expected a duration",
            ),
            (
                "id: A\ntype: detective\nscope: team:x\n",
                "/c/X.yaml: contract A: scope: \"team:x\": expected system or agent:<name>",
            ),
            (
                "id: A\ntype: detective\nscope: agent:Bad\n",
                "/c/X.yaml: contract A: scope: \"Bad\": must match",
            ),
            (
                "id: A\ntype: detective\nfrequncy: 60s\n",
                "/c/X.yaml: contract A: frequncy: unknown field",
            ),
            (
                "id: A\ntype: detective\nchecks:\n  - name: x\n",
                "/c/X.yaml: contract A: checks[0]: needs a command or a script",
            ),
            (
                "id: A\ntype: detective\nchecks:\n  - name: x\n    command: {run: x}\n",
                "/c/X.yaml: contract A: checks[0].command.test: missing",
            ),
            (
                "id: A\ntype: detective\nchecks:\n  - name: x\n    script: {path: ../x.sh}\n",
                "/c/X.yaml: contract A: checks[0].script.path: ../x.sh: expected a path relative",
            ),
            (
                "id: A\ntype: detective\nchecks:\n  - name: x\n    script: {path: /bin/x}\n",
                "/c/X.yaml: contract A: checks[0].script.path: /bin/x: expected a path relative",
            ),
            (
                "id: A\ntype: detective\nchecks:\n  - name: x\n    script: {path: x, timeout: 1h}\n",
                "/c/X.yaml: contract A: checks[0].script.timeout: \"1h\": at most 600s",
            ),
            (
                "id: A\ntype: detective\nchecks:\n  - name: x\n    script: {path: x}\n    on_fail: {action: reboot}\n",
                "/c/X.yaml: contract A: checks[0].on_fail.action: \"reboot\": expected one of alert, kill_session, quarantine, halt_agents, halt_workers",
            ),
            (
                "id: A\ntype: detective\nchecks:\n  - name: x\n    script: {path: x}\n  - name: x\n    script: {path: y}\n",
                "/c/X.yaml: contract A: checks[1].name: \"x\" is already a check",
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err();
            assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
            assert_eq!(got.lines().count(), 1, "{got}");
        }
        // The YAML library's own message, flattened to one line.
        let got = parse("id: A\n  : : [\n").unwrap_err();
        assert!(got.starts_with("/c/X.yaml: "), "{got}");
        assert_eq!(got.lines().count(), 1, "{got}");
    }
}
