//! The file as written: every table optional, every key known.
//!
//! Values stay loosely typed here (strings, i64) so that range and enum checks happen
//! in `resolve`, where the error can name the agent and the field; only TOML-level
//! problems (syntax, wrong type, unknown key) are left to serde and carry a line:col.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub system: Option<RawSystem>,
    pub base: Option<RawBase>,
    /// The seed's spelling of `[base.<tier>]`.
    pub defaults: Option<RawDefaults>,
    pub network: Option<RawNetwork>,
    pub contracts: Option<RawContracts>,
    pub dashboard: Option<RawDashboard>,
    pub infra: Option<RawInfra>,
    pub inbox: Option<RawInbox>,
    pub gateway: Option<RawGateway>,
    pub fleet_view: Option<RawFleetView>,
    /// `[pricing."<model>"]`: USD per million tokens, for cost accounting.
    #[serde(default)]
    pub pricing: std::collections::BTreeMap<String, RawPrice>,
    pub budgets: Option<RawBudgets>,
    #[serde(default)]
    pub agents: Vec<RawAgent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    pub input_usd_per_mtok: Option<f64>,
    pub output_usd_per_mtok: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudgets {
    pub officer: Option<f64>,
    pub operator: Option<f64>,
    pub worker: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSystem {
    pub name: Option<String>,
}

/// Defines `RawLevel`, the overridable fields as they appear at every level,
/// and the tables that carry them inline (`[base]`, `[[agents]]`) with a
/// `level()` accessor. One list, so the three cannot drift apart.
///
/// Spelled out field by field instead of `#[serde(flatten)]` because flatten
/// silently disables `deny_unknown_fields`, and typo protection is the point.
macro_rules! with_level_fields {
    (@level [$($(#[$fm:meta])* $field:ident: $ty:ty,)*]) => {
        /// The overridable fields, as they appear at every level.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct RawLevel {
            $($(#[$fm])* pub $field: $ty,)*
        }
    };
    (
        @table [$($(#[$fm:meta])* $field:ident: $ty:ty,)*]
        $(#[$attr:meta])* $name:ident [$($before:tt)*] [$($after:tt)*]
    ) => {
        $(#[$attr])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            $($before)*
            $($(#[$fm])* pub $field: $ty,)*
            $($after)*
        }

        impl $name {
            /// The overridable fields as set in this table.
            pub fn level(&self) -> RawLevel {
                RawLevel {
                    $($field: self.$field.clone(),)*
                }
            }
        }
    };
    (@tables $fields:tt) => {};
    (
        @tables $fields:tt
        $(#[$attr:meta])* struct $name:ident { $($before:tt)* } .. { $($after:tt)* }
        $($rest:tt)*
    ) => {
        with_level_fields! { @table $fields $(#[$attr])* $name [$($before)*] [$($after)*] }
        with_level_fields! { @tables $fields $($rest)* }
    };
    (@with $fields:tt $($tables:tt)*) => {
        with_level_fields! { @level $fields }
        with_level_fields! { @tables $fields $($tables)* }
    };
    ($($tables:tt)*) => {
        with_level_fields! { @with [
            /// `cli` is the seed's name for it.
            #[serde(alias = "cli")]
            runner: Option<String>,
            provider: Option<String>,
            model: Option<String>,
            api_key_env: Option<String>,
            base_url: Option<String>,
            max_sessions: Option<i64>,
            max_iterations: Option<i64>,
            max_session_min: Option<i64>,
            daily_budget_usd: Option<f64>,
        ] $($tables)* }
    };
}

with_level_fields! {
    /// `[base]`: the overridable fields plus one sub-table per tier.
    struct RawBase {} .. {
        pub officer: Option<RawLevel>,
        pub operator: Option<RawLevel>,
        pub worker: Option<RawLevel>,
    }

    /// One `[[agents]]` entry.
    struct RawAgent {
        /// Optional here so a missing name is reported with the agent's index, not a span.
        pub name: Option<String>,
        pub tier: Option<String>,
        #[serde(default)]
        pub roles: Vec<String>,
        #[serde(default)]
        pub groups: Vec<String>,
        #[serde(default)]
        pub scopes: Vec<String>,
        pub mode: Option<String>,
        pub cron: Option<String>,
    } .. {
        pub instructions: Option<String>,
    }
}

/// `[defaults.<tier>]` (legacy); only tier tables, as in the seed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub officer: Option<RawLevel>,
    pub operator: Option<RawLevel>,
    pub worker: Option<RawLevel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub outbound_filter: Option<bool>,
    pub allowed_ports: Option<Vec<u16>>,
    pub allow_dns: Option<bool>,
    pub dns_servers: Option<Vec<String>>,
    pub allow_loopback: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContracts {
    pub system: Option<RawSystemContracts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSystemContracts {
    pub healthcheck_interval: Option<String>,
    pub disk_min_free_pct: Option<i64>,
    pub mem_min_free_pct: Option<i64>,
    /// `max_load_factor` is the Go original's name for the same threshold.
    #[serde(alias = "max_load_factor")]
    pub max_load_per_cpu: Option<f64>,
    pub max_session_min: Option<i64>,
    pub log_max_mb: Option<i64>,
    pub log_reserve_mb: Option<i64>,
    pub log_min_free_mb: Option<i64>,
    pub agent_max_event_kb: Option<i64>,
    pub agent_max_attachment_kb: Option<i64>,
    pub agent_max_mb_per_minute: Option<i64>,
    pub agent_max_mb_per_hour: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDashboard {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    /// The Go original's spelling: a port on loopback.
    pub port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInbox {
    pub max_task_kb: Option<i64>,
    pub max_attempts: Option<i64>,
    pub stalled_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInfra {
    pub supervisor: Option<String>,
    pub client_idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub loopback_server_users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleetView {
    pub operators: Option<bool>,
}
