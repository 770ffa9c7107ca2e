//! The one error type of the crate.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What kind of input a [`ConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML, or a value has the wrong type, or a key is unknown.
    Syntax,
    /// The file parsed but a value is not acceptable.
    Invalid,
    /// An environment override is malformed or names something that does not exist.
    Env,
}

/// A configuration error.
///
/// `Display` is always exactly one line, e.g.
/// `configs/x.toml: agents[2] "Bad_Name": name: must match ^[a-z][a-z0-9-]{0,30}$`,
/// because the CLI prints it as-is and sysadmins grep logs for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ConfigError {
    // Boxed: errors are rare and a fat `Err` would bloat every `Result` on the happy path.
    details: Box<Details>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Details {
    kind: ErrorKind,
    path: Option<PathBuf>,
    position: Option<(usize, usize)>,
    env_var: Option<String>,
    agent_index: Option<usize>,
    agent_name: Option<String>,
    field: Option<String>,
    message: String,
}

impl ConfigError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            details: Box::new(Details {
                kind,
                path: None,
                position: None,
                env_var: None,
                agent_index: None,
                agent_name: None,
                field: None,
                message: one_line(&message.into()),
            }),
        }
    }

    pub(crate) fn io(path: &Path, err: &std::io::Error) -> Self {
        let mut e = Self::new(ErrorKind::Io, format!("cannot read: {err}"));
        e.details.path = Some(path.to_path_buf());
        e
    }

    pub(crate) fn syntax(path: &Path, position: Option<(usize, usize)>, message: &str) -> Self {
        let mut e = Self::new(ErrorKind::Syntax, message);
        e.details.path = Some(path.to_path_buf());
        e.details.position = position;
        e
    }

    /// An error about a top-level section field, e.g. `network.allowed_ports`.
    pub(crate) fn section(path: &Path, field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::Invalid, message);
        e.details.path = Some(path.to_path_buf());
        e.details.field = Some(field.to_owned());
        e
    }

    /// An error about one field of one `[[agents]]` entry.
    pub(crate) fn agent(
        path: &Path,
        index: usize,
        name: Option<&str>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(ErrorKind::Invalid, message);
        e.details.path = Some(path.to_path_buf());
        e.details.agent_index = Some(index);
        e.details.agent_name = name.map(str::to_owned);
        e.details.field = Some(field.to_owned());
        e
    }

    pub(crate) fn env(var: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::Env, message);
        e.details.env_var = Some(var.to_owned());
        e
    }

    /// What kind of input the error is about.
    pub fn kind(&self) -> ErrorKind {
        self.details.kind
    }

    /// The config file, when the error is about (or was found while reading) a file.
    pub fn path(&self) -> Option<&Path> {
        self.details.path.as_deref()
    }

    /// 1-based line and column in the file, for syntax errors.
    pub fn position(&self) -> Option<(usize, usize)> {
        self.details.position
    }

    /// The environment variable at fault, for environment overrides.
    pub fn env_var(&self) -> Option<&str> {
        self.details.env_var.as_deref()
    }

    /// Index of the `[[agents]]` entry in file order, when the error is about an agent.
    pub fn agent_index(&self) -> Option<usize> {
        self.details.agent_index
    }

    /// That agent's name as written, when it has one.
    pub fn agent_name(&self) -> Option<&str> {
        self.details.agent_name.as_deref()
    }

    /// The field at fault, e.g. `cron` or `contracts.system.healthcheck_interval`.
    pub fn field(&self) -> Option<&str> {
        self.details.field.as_deref()
    }

    /// What is wrong, without the location prefix.
    pub fn message(&self) -> &str {
        &self.details.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.details;
        if let Some(path) = &d.path {
            write!(f, "{}", path.display())?;
            if let Some((line, col)) = d.position {
                write!(f, ":{line}:{col}")?;
            }
            f.write_str(": ")?;
        }
        if let Some(var) = &d.env_var {
            write!(f, "env {var}: ")?;
        }
        if let Some(index) = d.agent_index {
            write!(f, "agents[{index}]")?;
            if let Some(name) = &d.agent_name {
                // Debug quoting escapes control characters, keeping the error on one line
                // even for a hostile name such as "a\nb".
                write!(f, " {name:?}")?;
            }
            f.write_str(": ")?;
        }
        if let Some(field) = &d.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&d.message)
    }
}

/// Collapses a possibly multi-line message (toml and io errors can have several) into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_messages_are_joined() {
        let e = ConfigError::env("CON_BASE_MODEL", "first\n  second\n\nthird");
        assert_eq!(e.to_string(), "env CON_BASE_MODEL: first; second; third");
    }

    #[test]
    fn agent_name_is_escaped() {
        let e = ConfigError::agent(Path::new("c.toml"), 1, Some("a\nb"), "name", "bad");
        assert_eq!(e.to_string(), r#"c.toml: agents[1] "a\nb": name: bad"#);
    }
}
