//! `con.toml`: schema, resolution and validation.
//!
//! [`load`] reads one file; everything else is pure. Environment overrides are passed
//! in as a map rather than read from the process, so callers decide what the
//! environment is (and tests need not mutate it).
//!
//! Resolution of every overridable agent field, highest first:
//!
//! 1. `CON_AGENT_<NAME>_<FIELD>`, then the `[[agents]]` entry;
//! 2. `CON_BASE_<TIER>_<FIELD>`, then `[base.<tier>]`, then the legacy `[defaults.<tier>]`
//!    (`[base.<tier>]` wins field by field when both tables exist);
//! 3. `CON_BASE_<FIELD>`, then `[base]`;
//! 4. built-in defaults.
//!
//! The legacy key `cli` is accepted wherever `runner` is.

mod cron;
mod env;
mod error;
mod level;
mod model;
mod raw;
mod resolve;

use std::collections::BTreeMap;
use std::path::Path;

pub use cron::{CronError, CronSchedule, cron_to_on_calendar};
pub use env::collect_environment;
pub use error::{ConfigError, ErrorKind};
pub use model::{
    Agent, Config, ContractsConfig, Dashboard, FleetView, Inbox, Infra, KnownCli, Mode, Network,
    Price, Provider, Runner, SYSADMIN_ROLE, Schedule, Supervisor, System, SystemContracts, Tier,
};

/// The rule agent names (and role, group and scope names) must follow.
///
/// Names become Linux user names and path components, so this is a security
/// boundary, not a style rule: no `/`, `.`, shell metacharacters or upper case, and
/// short enough that `a-<name>` stays within the 32-byte user-name limit.
pub const AGENT_NAME_PATTERN: &str = "^[a-z][a-z0-9-]{0,30}$";

/// Names the event log uses for things that are not agents (the outer inbox,
/// routing destinations); an agent by one of these names would be confused
/// with them, and could read what is recorded under them.
pub const RESERVED_NAMES: &[&str] = &["outer", "processed", "outbox", "failed"];

/// Checks `name` against [`AGENT_NAME_PATTERN`] and [`RESERVED_NAMES`]; the
/// error is the message to show.
pub fn validate_agent_name(name: &str) -> Result<(), String> {
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} is reserved (reserved: {})",
            RESERVED_NAMES.join(", ")
        ));
    }
    let bytes = name.as_bytes();
    let ok = matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= 31
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("must match {AGENT_NAME_PATTERN}"))
    }
}

/// Parses a duration such as `60s`, `5m`, `1h` or `1h30m` into seconds (> 0).
///
/// Units are `s`, `m`, `h` and `d`; a unit is required so that `60` cannot be
/// misread as minutes. Contract files use the same notation.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?}: expected a duration like 60s, 5m or 1h");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("{text:?}: duration is too large"))?;
    }
    // Trailing digits without a unit, or an empty string.
    if !digits.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    if total == 0 {
        return Err(format!("{text:?}: must be greater than zero"));
    }
    Ok(total)
}

/// Reads `path` and returns the resolved, validated configuration.
///
/// `env` is the environment to take overrides from (usually
/// [`collect_environment`] of the process's variables).
pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
    parse(&source, path, env)
}

/// Like [`load`], but from text already in memory; `origin` is only used in errors
/// and as [`Config::source`].
pub fn parse(
    source: &str,
    origin: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(source).map_err(|e| {
        let position = e.span().map(|span| line_col(source, span.start));
        ConfigError::syntax(origin, position, e.message())
    })?;
    resolve::resolve(raw, origin, env)
}

/// 1-based line and column (in characters) of a byte offset, as editors count them.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        for ok in [
            "a",
            "concierge",
            "night-owl",
            "a1",
            &format!("a{}", "b".repeat(30)),
        ] {
            assert_eq!(validate_agent_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a;b",
            "Upper",
            "1abc",
            "-a",
            "a_b",
            "a.b",
            "a b",
            "é",
            &format!("a{}", "b".repeat(31)),
        ] {
            assert!(validate_agent_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("60s"), Ok(60));
        assert_eq!(parse_duration_secs("5m"), Ok(300));
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        for bad in ["", "60", "s", "5x", "-5s", "1.5h", "m5"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration_secs("0s"),
            Err("\"0s\": must be greater than zero".to_owned())
        );
        assert!(parse_duration_secs("99999999999999999999d").is_err());
    }

    #[test]
    fn line_col_counts_characters() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        // After the two-byte 'é': the third character of line 2.
        assert_eq!(line_col(src, 9), (2, 3));
    }
}
