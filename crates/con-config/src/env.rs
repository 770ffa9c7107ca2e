//! Environment overrides (`CON_BASE_*`, `CON_AGENT_*`, `CON_SYSTEM_NAME`).
//!
//! The caller passes the environment in as data, so this crate stays pure and tests
//! need not mutate the process environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::ConfigError;
use crate::level::{Field, Level};
use crate::model::Tier;

const BASE_PREFIX: &str = "CON_BASE_";
const AGENT_PREFIX: &str = "CON_AGENT_";
const SYSTEM_NAME: &str = "CON_SYSTEM_NAME";

/// Every variable con reads starts with this.
const CON_PREFIX: &str = "CON_";

/// The environment as text, from the process's variables (pass
/// `std::env::vars_os()`), for [`crate::load`] and [`crate::parse`].
///
/// The one rule for variables that are not UTF-8: one whose name starts
/// with `CON_` is an error, because con would otherwise run with the file's
/// value while the operator believes the override is in force; any other is
/// skipped, because it cannot be one of con's and another program's
/// variables must not stop con.
pub fn collect_environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut env = BTreeMap::new();
    for (key, value) in vars {
        let is_con = key.as_bytes().starts_with(CON_PREFIX.as_bytes());
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => {
                env.insert(k, v);
            }
            (Ok(k), Err(_)) if is_con => {
                return Err(ConfigError::env(&k, "value is not valid UTF-8"));
            }
            (Err(k), _) if is_con => {
                return Err(ConfigError::env(
                    &k.to_string_lossy(),
                    "name is not valid UTF-8",
                ));
            }
            _ => {}
        }
    }
    Ok(env)
}

/// Overrides found in the environment, one overlay per level they name.
#[derive(Debug, Default)]
pub(crate) struct EnvOverrides {
    pub system_name: Option<(String, String)>,
    pub base: Level,
    pub tiers: BTreeMap<Tier, Level>,
    /// Keyed by the agent's env key (upper-case, `-` → `_`).
    pub agents: BTreeMap<String, Level>,
}

impl EnvOverrides {
    pub fn tier(&self, tier: Tier) -> Level {
        self.tiers.get(&tier).cloned().unwrap_or_default()
    }

    pub fn agent(&self, name: &str) -> Level {
        self.agents
            .get(&agent_env_key(name))
            .cloned()
            .unwrap_or_default()
    }
}

/// How an agent name appears in `CON_AGENT_<NAME>_<FIELD>`.
pub(crate) fn agent_env_key(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

fn field_list() -> String {
    Field::ALL
        .iter()
        .map(|f| f.env_suffix())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the overrides out of `env`, in sorted variable order so the first error is
/// deterministic.
///
/// Variables under the `CON_BASE_` and `CON_AGENT_` prefixes are reserved: a name
/// there that is not a known override is an error rather than silently ignored,
/// because a typo would otherwise leave the file's value in force unnoticed. Empty
/// values count as unset, since `VAR= con …` is the usual way to blank one out.
pub(crate) fn parse_env(
    env: &BTreeMap<String, String>,
    agent_names: &[&str],
    path: &Path,
) -> Result<EnvOverrides, ConfigError> {
    let mut out = EnvOverrides::default();
    for (var, value) in env {
        if value.is_empty() {
            continue;
        }
        if var == SYSTEM_NAME {
            crate::resolve::check_system_name(value).map_err(|m| ConfigError::env(var, m))?;
            out.system_name = Some((var.clone(), value.clone()));
        } else if let Some(rest) = var.strip_prefix(BASE_PREFIX) {
            let tier_match = Tier::ALL.into_iter().find_map(|t| {
                rest.strip_prefix(tier_key(t))
                    .and_then(|r| r.strip_prefix('_'))
                    .map(|r| (t, r))
            });
            let (level, rest) = match tier_match {
                Some((tier, rest)) => (out.tiers.entry(tier).or_default(), rest),
                None => (&mut out.base, rest),
            };
            let field = Field::ALL
                .into_iter()
                .find(|f| f.env_suffix() == rest)
                .ok_or_else(|| {
                    ConfigError::env(
                        var,
                        format!(
                            "not a known override (expected CON_BASE_<FIELD> or CON_BASE_<TIER>_<FIELD>, FIELD one of {})",
                            field_list()
                        ),
                    )
                })?;
            level
                .set_from_env(field, value)
                .map_err(|m| ConfigError::env(var, m))?;
        } else if let Some(rest) = var.strip_prefix(AGENT_PREFIX) {
            // No field name is a suffix of another, so the field is found unambiguously
            // from the end even though agent names may contain '_' (from '-').
            let (key, field) = Field::ALL
                .into_iter()
                .find_map(|f| {
                    rest.strip_suffix(f.env_suffix())
                        .and_then(|k| k.strip_suffix('_'))
                        .filter(|k| !k.is_empty())
                        .map(|k| (k, f))
                })
                .ok_or_else(|| {
                    ConfigError::env(
                        var,
                        format!(
                            "not a known override (expected CON_AGENT_<NAME>_<FIELD>, FIELD one of {})",
                            field_list()
                        ),
                    )
                })?;
            if !agent_names.iter().any(|n| agent_env_key(n) == key) {
                let guess = key.to_ascii_lowercase().replace('_', "-");
                return Err(ConfigError::env(
                    var,
                    format!("no agent named {guess:?} in {}", path.display()),
                ));
            }
            out.agents
                .entry(key.to_owned())
                .or_default()
                .set_from_env(field, value)
                .map_err(|m| ConfigError::env(var, m))?;
        }
    }
    Ok(out)
}

fn tier_key(tier: Tier) -> &'static str {
    match tier {
        Tier::Officer => "OFFICER",
        Tier::Operator => "OPERATOR",
        Tier::Worker => "WORKER",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;
    use crate::model::Runner;

    #[test]
    fn non_utf8_is_refused_under_con_and_skipped_elsewhere() {
        let bad = || OsString::from_vec(vec![b'x', 0xff]);
        let vars = |extra: (OsString, OsString)| {
            vec![
                (OsString::from("CON_BASE_MODEL"), OsString::from("m")),
                extra,
            ]
        };
        let env = collect_environment(vars((OsString::from("LESSOPEN"), bad()))).unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env["CON_BASE_MODEL"], "m");
        let err = collect_environment(vars((OsString::from("CON_ROOT"), bad()))).unwrap_err();
        assert_eq!(err.to_string(), "env CON_ROOT: value is not valid UTF-8");
        let mut name = b"CON_".to_vec();
        name.push(0xff);
        let err = collect_environment(vars((OsString::from_vec(name), "v".into()))).unwrap_err();
        assert_eq!(err.env_var(), Some("CON_\u{FFFD}"));
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn levels_are_told_apart() {
        let o = parse_env(
            &env(&[
                ("CON_BASE_MODEL", "m0"),
                ("CON_BASE_WORKER_MODEL", "m1"),
                ("CON_AGENT_NIGHT_OWL_MAX_SESSION_MIN", "5"),
                ("CON_AGENT_NIGHT_OWL_RUNNER", "exec:cat"),
                ("HOME", "/root"),
                ("CON_ROOT", "/tmp/x"),
                ("CON_BASE_PROVIDER", ""),
            ]),
            &["night-owl"],
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(o.base.model.as_deref(), Some("m0"));
        assert_eq!(o.base.provider, None);
        assert_eq!(o.tier(Tier::Worker).model.as_deref(), Some("m1"));
        assert_eq!(o.tier(Tier::Officer), Level::default());
        let a = o.agent("night-owl");
        assert_eq!(a.max_session_min, Some(5));
        assert_eq!(a.runner, Some(Runner::Exec("cat".into())));
    }

    #[test]
    fn unknown_override_fields_are_errors() {
        let err =
            parse_env(&env(&[("CON_BASE_MODLE", "x")]), &[], Path::new("c.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("env CON_BASE_MODLE: not a known override")
        );
        let err = parse_env(
            &env(&[("CON_AGENT_X_COLOUR", "x")]),
            &["x"],
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("env CON_AGENT_X_COLOUR: not a known override")
        );
        // A field with no agent part at all.
        assert!(parse_env(&env(&[("CON_AGENT_MODEL", "x")]), &[], Path::new("c")).is_err());
    }
}
