//! One level of the resolution stack (agent, `base.<tier>`, base, or an env overlay of
//! one of them), with every present value already checked.
//!
//! File and environment values go through the same checks here so a value means the
//! same thing wherever it is set; only the error's context differs.

use crate::model::{Provider, Runner};
use crate::raw::RawLevel;

/// The fields that can be set at every level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Runner,
    Provider,
    Model,
    ApiKeyEnv,
    BaseUrl,
    MaxSessions,
    MaxIterations,
    MaxSessionMin,
    DailyBudgetUsd,
}

impl Field {
    pub const ALL: [Field; 9] = [
        Field::Runner,
        Field::Provider,
        Field::Model,
        Field::ApiKeyEnv,
        Field::BaseUrl,
        Field::MaxSessions,
        Field::MaxIterations,
        Field::MaxSessionMin,
        Field::DailyBudgetUsd,
    ];

    /// The key in `con.toml`.
    pub fn key(self) -> &'static str {
        match self {
            Field::Runner => "runner",
            Field::Provider => "provider",
            Field::Model => "model",
            Field::ApiKeyEnv => "api_key_env",
            Field::BaseUrl => "base_url",
            Field::MaxSessions => "max_sessions",
            Field::MaxIterations => "max_iterations",
            Field::MaxSessionMin => "max_session_min",
            Field::DailyBudgetUsd => "daily_budget_usd",
        }
    }

    /// The suffix of the environment variables that override it.
    pub fn env_suffix(self) -> &'static str {
        match self {
            Field::Runner => "RUNNER",
            Field::Provider => "PROVIDER",
            Field::Model => "MODEL",
            Field::ApiKeyEnv => "API_KEY_ENV",
            Field::BaseUrl => "BASE_URL",
            Field::MaxSessions => "MAX_SESSIONS",
            Field::MaxIterations => "MAX_ITERATIONS",
            Field::MaxSessionMin => "MAX_SESSION_MIN",
            Field::DailyBudgetUsd => "DAILY_BUDGET_USD",
        }
    }
}

/// Inclusive bounds of the integer fields; shared with `[contracts.system]`.
pub(crate) const MAX_SESSIONS: (i64, i64) = (1, 64);
pub(crate) const MAX_ITERATIONS: (i64, i64) = (1, 10_000);
/// A day: longer sessions are almost certainly a unit mistake (hours vs minutes).
pub(crate) const MAX_SESSION_MIN: (i64, i64) = (1, 1440);

/// Checked values of one level; `None` means "not set here, ask the next level".
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Level {
    pub runner: Option<Runner>,
    pub provider: Option<Provider>,
    pub model: Option<String>,
    pub api_key_env: Option<String>,
    pub base_url: Option<String>,
    pub max_sessions: Option<u32>,
    pub max_iterations: Option<u32>,
    pub max_session_min: Option<u32>,
    pub daily_budget_usd: Option<f64>,
}

impl Level {
    /// Checks a level read from the file; the error names the first bad field.
    pub fn from_raw(raw: &RawLevel) -> Result<Level, (Field, String)> {
        fn opt<T, U>(
            field: Field,
            v: &Option<T>,
            check: impl Fn(&T) -> Result<U, String>,
        ) -> Result<Option<U>, (Field, String)> {
            v.as_ref()
                .map(check)
                .transpose()
                .map_err(|msg| (field, msg))
        }
        Ok(Level {
            runner: opt(Field::Runner, &raw.runner, |s| s.parse())?,
            provider: opt(Field::Provider, &raw.provider, |s| s.parse())?,
            model: opt(Field::Model, &raw.model, |s| check_model(s))?,
            api_key_env: opt(Field::ApiKeyEnv, &raw.api_key_env, |s| check_env_name(s))?,
            base_url: opt(Field::BaseUrl, &raw.base_url, |s| check_base_url(s))?,
            max_sessions: opt(Field::MaxSessions, &raw.max_sessions, |&n| {
                check_range(n, MAX_SESSIONS)
            })?,
            max_iterations: opt(Field::MaxIterations, &raw.max_iterations, |&n| {
                check_range(n, MAX_ITERATIONS)
            })?,
            max_session_min: opt(Field::MaxSessionMin, &raw.max_session_min, |&n| {
                check_range(n, MAX_SESSION_MIN)
            })?,
            daily_budget_usd: opt(Field::DailyBudgetUsd, &raw.daily_budget_usd, |&x| {
                check_budget(x)
            })?,
        })
    }

    /// Sets one field from an environment variable's text.
    pub fn set_from_env(&mut self, field: Field, value: &str) -> Result<(), String> {
        match field {
            Field::Runner => self.runner = Some(value.parse()?),
            Field::Provider => self.provider = Some(value.parse()?),
            Field::Model => self.model = Some(check_model(value)?),
            Field::ApiKeyEnv => self.api_key_env = Some(check_env_name(value)?),
            Field::BaseUrl => self.base_url = Some(check_base_url(value)?),
            Field::MaxSessions => {
                self.max_sessions = Some(check_range(env_int(value)?, MAX_SESSIONS)?);
            }
            Field::MaxIterations => {
                self.max_iterations = Some(check_range(env_int(value)?, MAX_ITERATIONS)?);
            }
            Field::MaxSessionMin => {
                self.max_session_min = Some(check_range(env_int(value)?, MAX_SESSION_MIN)?);
            }
            Field::DailyBudgetUsd => {
                let x: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{value:?} is not a number"))?;
                self.daily_budget_usd = Some(check_budget(x)?);
            }
        }
        Ok(())
    }

    /// Field by field, `self` where set, else `lower`.
    pub fn over(&self, lower: &Level) -> Level {
        Level {
            runner: self.runner.clone().or_else(|| lower.runner.clone()),
            provider: self.provider.or(lower.provider),
            model: self.model.clone().or_else(|| lower.model.clone()),
            api_key_env: self
                .api_key_env
                .clone()
                .or_else(|| lower.api_key_env.clone()),
            base_url: self.base_url.clone().or_else(|| lower.base_url.clone()),
            max_sessions: self.max_sessions.or(lower.max_sessions),
            max_iterations: self.max_iterations.or(lower.max_iterations),
            max_session_min: self.max_session_min.or(lower.max_session_min),
            daily_budget_usd: self.daily_budget_usd.or(lower.daily_budget_usd),
        }
    }
}

fn env_int(value: &str) -> Result<i64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))
}

/// Checks an integer against inclusive bounds.
pub(crate) fn check_range(n: i64, (min, max): (i64, i64)) -> Result<u32, String> {
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}, got {n}"));
    }
    u32::try_from(n).map_err(|_| format!("must be between {min} and {max}, got {n}"))
}

fn check_budget(x: f64) -> Result<f64, String> {
    // Zero would silently disable the agent; "unlimited" is spelled by omitting the key.
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(format!(
            "must be a positive amount of USD, got {x} (omit it for no limit)"
        ))
    }
}

fn check_model(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// The value names a variable in /etc/con/env, which is shell-sourced by tooling.
fn check_env_name(s: &str) -> Result<String, String> {
    let mut chars = s.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a valid environment variable name (expected [A-Za-z_][A-Za-z0-9_]*)"
        ))
    }
}

fn check_base_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{s:?} has no host"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} must not contain whitespace or control characters"
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_prefers_the_upper_level_field_by_field() {
        let upper = Level {
            model: Some("a".into()),
            ..Level::default()
        };
        let lower = Level {
            model: Some("b".into()),
            max_sessions: Some(3),
            ..Level::default()
        };
        let merged = upper.over(&lower);
        assert_eq!(merged.model.as_deref(), Some("a"));
        assert_eq!(merged.max_sessions, Some(3));
    }

    #[test]
    fn env_numbers_are_checked() {
        let mut l = Level::default();
        assert_eq!(
            l.set_from_env(Field::MaxSessions, "x"),
            Err("\"x\" is not a number".to_owned())
        );
        assert_eq!(
            l.set_from_env(Field::MaxSessions, "65"),
            Err("must be between 1 and 64, got 65".to_owned())
        );
        assert!(l.set_from_env(Field::DailyBudgetUsd, "NaN").is_err());
        l.set_from_env(Field::MaxSessions, "4").unwrap();
        assert_eq!(l.max_sessions, Some(4));
    }

    #[test]
    fn env_names_and_urls() {
        assert!(check_env_name("CON_KEY_1").is_ok());
        assert!(check_env_name("1KEY").is_err());
        assert!(check_env_name("A-B").is_err());
        assert!(check_env_name("").is_err());
        assert!(check_base_url("http://127.0.0.1:8080/v1").is_ok());
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("https://").is_err());
        assert!(check_base_url("https://a b").is_err());
    }
}
