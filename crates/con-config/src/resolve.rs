//! From the raw file plus environment to a validated [`Config`].
//!
//! Checks run in file order (sections, then agents in order) and stop at the first
//! problem, so the same input always yields the same single error line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use con_layout::ConGroup;

use crate::cron::cron_to_on_calendar;
use crate::env::{EnvOverrides, parse_env};
use crate::error::ConfigError;
use crate::level::{self, Field, Level};
use crate::model::{
    Agent, Config, ContractsConfig, Dashboard, FleetView, Gateway, Inbox, Infra, KnownCli, Mode,
    Network, Price, Provider, Runner, Schedule, Supervisor, System, SystemContracts, Tier,
};
use crate::raw::{RawAgent, RawConfig, RawLevel};
use crate::{parse_duration_secs, validate_agent_name};

/// Built-in defaults, the bottom of the resolution stack.
pub(crate) mod defaults {
    /// Default `[system] name`.
    pub const SYSTEM_NAME: &str = "conspiracyos";
    /// Default model for officers and operators (an OpenRouter id).
    pub const MODEL_LEAD: &str = "anthropic/claude-sonnet-4.6";
    /// Default model for workers (an OpenRouter id).
    pub const MODEL_WORKER: &str = "google/gemini-2.0-flash-001";
    pub const MAX_SESSIONS: u32 = 1;
    pub const MAX_ITERATIONS: u32 = 200;
    pub const HEALTHCHECK_INTERVAL: &str = "60s";
    pub const DISK_MIN_FREE_PCT: u8 = 15;
    pub const MEM_MIN_FREE_PCT: u8 = 10;
    pub const MAX_LOAD_PER_CPU: f64 = 4.0;
    pub const MAX_SESSION_MIN: u32 = 30;
    pub const LOG_MAX_MB: u64 = 1024;
    /// Default `[inbox] max_task_kb`: far above any task a person or an
    /// agent writes, far below what a flood of them could cost the log.
    pub const MAX_TASK_KB: u64 = 1024;
    /// Default `[inbox] max_attempts`: a transient failure gets retried,
    /// a task that always fails stops costing model calls soon.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// The reserve is an eighth of `log_max_mb`, at most this.
    pub const LOG_RESERVE_MAX_MB: u64 = 64;
    /// Default `log_min_free_mb`: room for sled's next segments and a
    /// snapshot of a large log, well before the disk is full.
    pub const LOG_MIN_FREE_MB: u64 = 8;
    /// Default `[infra] client_idle_timeout`.
    pub const CLIENT_IDLE_TIMEOUT: &str = "10m";
    /// Default `[inbox] stalled_after`: far longer than any start of a run,
    /// short enough that an operator hears of a stuck inbox the same hour.
    pub const STALLED_AFTER: &str = "10m";
    /// A MiB short of a TiB: anything larger is a typo.
    pub const LOG_MIN_FREE_MAX_MB: u64 = 1024 * 1024 - 1;
    /// Well above an honest run's largest event: an exec runner's output
    /// (1 MiB cap) with its call, or a `read_file` page (256 KiB).
    pub const AGENT_MAX_EVENT_KB: u64 = 3 * 1024;
    pub const AGENT_MAX_ATTACHMENT_KB: u64 = 2 * 1024;
    /// An honest run records a few MiB a minute at most (a 256 KiB tool
    /// result per model round trip); a flood is stopped within seconds.
    pub const AGENT_MAX_MB_PER_MINUTE: u64 = 32;
    pub const AGENT_MAX_MB_PER_HOUR: u64 = 256;
    /// An agent's frame limit: a larger event could never arrive.
    pub const AGENT_FRAME_KB: u64 = 4 * 1024;
    pub const DASHBOARD_LISTEN: &str = "127.0.0.1:8470";
    pub const ALLOWED_PORTS: &[u16] = &[443];
}

pub(crate) fn resolve(
    raw: RawConfig,
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let names: Vec<&str> = raw
        .agents
        .iter()
        .filter_map(|a| a.name.as_deref())
        .collect();
    let env = parse_env(env, &names, path)?;

    let system = resolve_system(&raw, &env, path)?;
    let network = resolve_network(&raw, path)?;
    let contracts = resolve_contracts(&raw, path)?;
    let dashboard = resolve_dashboard(&raw, path)?;
    let infra = resolve_infra(&raw, path)?;
    let inbox = resolve_inbox(&raw, path)?;
    let gateway = resolve_gateway(&raw, path)?;
    let fleet_view = FleetView {
        operators: raw
            .fleet_view
            .as_ref()
            .and_then(|f| f.operators)
            .unwrap_or(false),
    };
    let pricing = resolve_pricing(&raw, path)?;
    let tier_budgets = resolve_budgets(&raw, path)?;

    let base_raw = raw.base.unwrap_or_default();
    let base_file = section_level(&base_raw.level(), "base", path)?;
    let defaults_raw = raw.defaults.unwrap_or_default();
    let mut tier_file = BTreeMap::new();
    for tier in Tier::ALL {
        let (b, d) = match tier {
            Tier::Officer => (&base_raw.officer, &defaults_raw.officer),
            Tier::Operator => (&base_raw.operator, &defaults_raw.operator),
            Tier::Worker => (&base_raw.worker, &defaults_raw.worker),
        };
        let b = section_level(
            &b.clone().unwrap_or_default(),
            &format!("base.{tier}"),
            path,
        )?;
        let d = section_level(
            &d.clone().unwrap_or_default(),
            &format!("defaults.{tier}"),
            path,
        )?;
        // [base.<tier>] is the current spelling, so it wins field by field over the
        // legacy [defaults.<tier>]; a conflict is not an error, to ease migration.
        tier_file.insert(tier, b.over(&d));
    }

    let stack = Stack {
        path,
        env: &env,
        base_file,
        tier_file,
        default_session_min: contracts.system.max_session_min,
    };
    let mut agents = Vec::with_capacity(raw.agents.len());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw_agent) in raw.agents.iter().enumerate() {
        let agent = stack.resolve_agent(index, raw_agent, &seen)?;
        seen.insert(agent.name.clone(), index);
        agents.push(agent);
    }

    Ok(Config {
        source: path.to_path_buf(),
        system,
        network,
        contracts,
        dashboard,
        infra,
        inbox,
        gateway,
        fleet_view,
        pricing,
        tier_budgets,
        agents,
    })
    .and_then(check_budgets_priced)
}

/// A budget is only enforceable when the model's calls have a cost: an
/// agent with a budget (its own or its tier's) must use a priced model.
fn check_budgets_priced(config: Config) -> Result<Config, ConfigError> {
    for (index, agent) in config.agents.iter().enumerate() {
        let budgeted =
            agent.daily_budget_usd.is_some() || config.tier_budgets.contains_key(&agent.tier);
        let Some(model) = agent.model.as_deref() else {
            continue;
        };
        if budgeted && !config.pricing.contains_key(model) {
            return Err(ConfigError::agent(
                &config.source,
                index,
                Some(&agent.name),
                "model",
                format!(
                    "{model:?} has a daily budget but no [pricing.\"{model}\"] entry, so its spend could not be counted"
                ),
            ));
        }
    }
    Ok(config)
}

fn check_usd(x: f64) -> Result<f64, String> {
    if x.is_finite() && (0.0..=1_000_000.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{x} must be a number of USD between 0 and 1000000"))
    }
}

fn resolve_pricing(raw: &RawConfig, path: &Path) -> Result<BTreeMap<String, Price>, ConfigError> {
    let mut out = BTreeMap::new();
    for (model, price) in &raw.pricing {
        let field = |f: &str| format!("pricing.\"{model}\".{f}");
        let get = |v: Option<f64>, f: &str| -> Result<f64, ConfigError> {
            let v = v.ok_or_else(|| ConfigError::section(path, &field(f), "is required"))?;
            check_usd(v).map_err(|m| ConfigError::section(path, &field(f), m))
        };
        out.insert(
            model.clone(),
            Price {
                input_usd_per_mtok: get(price.input_usd_per_mtok, "input_usd_per_mtok")?,
                output_usd_per_mtok: get(price.output_usd_per_mtok, "output_usd_per_mtok")?,
            },
        );
    }
    Ok(out)
}

fn resolve_budgets(raw: &RawConfig, path: &Path) -> Result<BTreeMap<Tier, f64>, ConfigError> {
    let mut out = BTreeMap::new();
    if let Some(b) = &raw.budgets {
        for (tier, value) in [
            (Tier::Officer, b.officer),
            (Tier::Operator, b.operator),
            (Tier::Worker, b.worker),
        ] {
            if let Some(v) = value {
                let v = check_usd(v)
                    .map_err(|m| ConfigError::section(path, &format!("budgets.{tier}"), m))?;
                out.insert(tier, v);
            }
        }
    }
    Ok(out)
}

/// Checks one `[base…]`/`[defaults…]` table, naming `section.field` on error.
fn section_level(raw: &RawLevel, section: &str, path: &Path) -> Result<Level, ConfigError> {
    Level::from_raw(raw).map_err(|(field, msg)| {
        ConfigError::section(path, &format!("{section}.{}", field.key()), msg)
    })
}

/// The system name appears in unit descriptions and journal fields; keep it tame.
pub(crate) fn check_system_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$"
        ))
    }
}

fn resolve_system(raw: &RawConfig, env: &EnvOverrides, path: &Path) -> Result<System, ConfigError> {
    let file_name = raw.system.as_ref().and_then(|s| s.name.clone());
    if let Some(name) = &file_name {
        check_system_name(name).map_err(|m| ConfigError::section(path, "system.name", m))?;
    }
    // The env value was already checked when the overrides were read.
    let name = env
        .system_name
        .as_ref()
        .map(|(_, v)| v.clone())
        .or(file_name)
        .unwrap_or_else(|| defaults::SYSTEM_NAME.to_owned());
    Ok(System { name })
}

fn resolve_network(raw: &RawConfig, path: &Path) -> Result<Network, ConfigError> {
    let n = raw.network.as_ref();
    let mut allowed_ports: Vec<u16> = Vec::new();
    match n.and_then(|n| n.allowed_ports.as_ref()) {
        Some(ports) => {
            for &p in ports {
                if p == 0 {
                    return Err(ConfigError::section(
                        path,
                        "network.allowed_ports",
                        "0 is not a valid port",
                    ));
                }
                if !allowed_ports.contains(&p) {
                    allowed_ports.push(p);
                }
            }
        }
        None => allowed_ports.extend_from_slice(defaults::ALLOWED_PORTS),
    }
    let dns_servers = match n.and_then(|n| n.dns_servers.as_ref()) {
        None => None,
        Some(servers) => Some(
            servers
                .iter()
                .map(|s| {
                    s.parse::<std::net::IpAddr>().map_err(|_| {
                        ConfigError::section(
                            path,
                            "network.dns_servers",
                            format!("{s:?} is not an IP address"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Network {
        outbound_filter: n.and_then(|n| n.outbound_filter).unwrap_or(true),
        allowed_ports,
        allow_dns: n.and_then(|n| n.allow_dns).unwrap_or(true),
        dns_servers,
        allow_loopback: n.and_then(|n| n.allow_loopback).unwrap_or(true),
    })
}

fn resolve_contracts(raw: &RawConfig, path: &Path) -> Result<ContractsConfig, ConfigError> {
    let s = raw.contracts.as_ref().and_then(|c| c.system.as_ref());
    let err = |field: &str, msg: String| {
        ConfigError::section(path, &format!("contracts.system.{field}"), msg)
    };

    let healthcheck_interval = s
        .and_then(|s| s.healthcheck_interval.clone())
        .unwrap_or_else(|| defaults::HEALTHCHECK_INTERVAL.to_owned());
    let healthcheck_interval_secs =
        parse_duration_secs(&healthcheck_interval).map_err(|m| err("healthcheck_interval", m))?;

    let pct = |field: &str, v: Option<i64>, default: u8| -> Result<u8, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) => u8::try_from(n)
                .ok()
                .filter(|&p| p <= 100)
                .ok_or_else(|| err(field, format!("must be between 0 and 100, got {n}"))),
        }
    };
    let disk_min_free_pct = pct(
        "disk_min_free_pct",
        s.and_then(|s| s.disk_min_free_pct),
        defaults::DISK_MIN_FREE_PCT,
    )?;
    let mem_min_free_pct = pct(
        "mem_min_free_pct",
        s.and_then(|s| s.mem_min_free_pct),
        defaults::MEM_MIN_FREE_PCT,
    )?;

    let max_load_per_cpu = match s.and_then(|s| s.max_load_per_cpu) {
        None => defaults::MAX_LOAD_PER_CPU,
        Some(x) if x.is_finite() && x > 0.0 => x,
        Some(x) => {
            return Err(err(
                "max_load_per_cpu",
                format!("must be greater than 0, got {x}"),
            ));
        }
    };
    let max_session_min = match s.and_then(|s| s.max_session_min) {
        None => defaults::MAX_SESSION_MIN,
        Some(n) => {
            level::check_range(n, level::MAX_SESSION_MIN).map_err(|m| err("max_session_min", m))?
        }
    };
    let log_max_mb = match s.and_then(|s| s.log_max_mb) {
        None => defaults::LOG_MAX_MB,
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|&m| m > 0)
            .ok_or_else(|| err("log_max_mb", format!("must be greater than 0, got {n}")))?,
    };

    let log_reserve_mb = match s.and_then(|s| s.log_reserve_mb) {
        None => (log_max_mb / 8).min(defaults::LOG_RESERVE_MAX_MB),
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|&m| m < log_max_mb)
            .ok_or_else(|| {
                err(
                    "log_reserve_mb",
                    format!(
                        "must be between 0 and {} (less than log_max_mb), got {n}",
                        log_max_mb - 1
                    ),
                )
            })?,
    };
    let log_min_free_mb = match s.and_then(|s| s.log_min_free_mb) {
        None => defaults::LOG_MIN_FREE_MB,
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|&m| m <= defaults::LOG_MIN_FREE_MAX_MB)
            .ok_or_else(|| {
                err(
                    "log_min_free_mb",
                    format!(
                        "must be between 0 and {}, got {n}",
                        defaults::LOG_MIN_FREE_MAX_MB
                    ),
                )
            })?,
    };
    let positive = |field: &str, v: Option<i64>, default: u64, max: u64| match v {
        None => Ok(default),
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|&m| (1..=max).contains(&m))
            .ok_or_else(|| err(field, format!("must be between 1 and {max}, got {n}"))),
    };
    let agent_max_event_kb = positive(
        "agent_max_event_kb",
        s.and_then(|s| s.agent_max_event_kb),
        defaults::AGENT_MAX_EVENT_KB,
        defaults::AGENT_FRAME_KB,
    )?;
    let agent_max_attachment_kb = positive(
        "agent_max_attachment_kb",
        s.and_then(|s| s.agent_max_attachment_kb),
        defaults::AGENT_MAX_ATTACHMENT_KB.min(agent_max_event_kb),
        agent_max_event_kb,
    )?;
    // A window smaller than one event would refuse the largest allowed
    // event outright; an hour smaller than a minute would make the minute
    // meaningless.
    let event_mb = agent_max_event_kb.div_ceil(1024);
    let agent_max_mb_per_minute = positive(
        "agent_max_mb_per_minute",
        s.and_then(|s| s.agent_max_mb_per_minute),
        defaults::AGENT_MAX_MB_PER_MINUTE,
        u64::from(u32::MAX),
    )?;
    if agent_max_mb_per_minute < event_mb {
        return Err(err(
            "agent_max_mb_per_minute",
            format!(
                "must be at least agent_max_event_kb in MiB ({event_mb}), got {agent_max_mb_per_minute}"
            ),
        ));
    }
    let agent_max_mb_per_hour = positive(
        "agent_max_mb_per_hour",
        s.and_then(|s| s.agent_max_mb_per_hour),
        defaults::AGENT_MAX_MB_PER_HOUR.max(agent_max_mb_per_minute),
        u64::from(u32::MAX),
    )?;
    if agent_max_mb_per_hour < agent_max_mb_per_minute {
        return Err(err(
            "agent_max_mb_per_hour",
            format!(
                "must be at least agent_max_mb_per_minute ({agent_max_mb_per_minute}), got {agent_max_mb_per_hour}"
            ),
        ));
    }

    Ok(ContractsConfig {
        system: SystemContracts {
            healthcheck_interval,
            healthcheck_interval_secs,
            disk_min_free_pct,
            mem_min_free_pct,
            max_load_per_cpu,
            max_session_min,
            log_max_mb,
            log_reserve_mb,
            log_min_free_mb,
            agent_max_event_kb,
            agent_max_attachment_kb,
            agent_max_mb_per_minute,
            agent_max_mb_per_hour,
        },
    })
}

fn resolve_dashboard(raw: &RawConfig, path: &Path) -> Result<Dashboard, ConfigError> {
    let d = raw.dashboard.as_ref();
    let port = match d.and_then(|d| d.port) {
        None => None,
        Some(p) => Some(u16::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| {
            ConfigError::section(
                path,
                "dashboard.port",
                format!("{p} is not a port (1 to 65535)"),
            )
        })?),
    };
    let listen_text = match (d.and_then(|d| d.listen.clone()), port) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::section(
                path,
                "dashboard.port",
                "set either listen or port, not both".to_owned(),
            ));
        }
        (Some(listen), None) => listen,
        // The original's `port`: the same loopback address, that port.
        (None, Some(port)) => format!("127.0.0.1:{port}"),
        (None, None) => defaults::DASHBOARD_LISTEN.to_owned(),
    };
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::section(
            path,
            "dashboard.listen",
            format!("{listen_text:?} is not an IP:port socket address (e.g. 127.0.0.1:8470)"),
        )
    })?;
    Ok(Dashboard {
        enabled: d.and_then(|d| d.enabled).unwrap_or(false),
        listen,
    })
}

/// Largest `max_task_kb` accepted: 64 MiB.
const MAX_TASK_KB_LIMIT: i64 = 64 * 1024;

fn resolve_inbox(raw: &RawConfig, path: &Path) -> Result<Inbox, ConfigError> {
    let kb = match raw.inbox.as_ref().and_then(|i| i.max_task_kb) {
        None => defaults::MAX_TASK_KB,
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|_| (1..=MAX_TASK_KB_LIMIT).contains(&n))
            .ok_or_else(|| {
                ConfigError::section(
                    path,
                    "inbox.max_task_kb",
                    format!("must be between 1 and {MAX_TASK_KB_LIMIT} (KiB), got {n}"),
                )
            })?,
    };
    let max_attempts = match raw.inbox.as_ref().and_then(|i| i.max_attempts) {
        None => defaults::MAX_ATTEMPTS,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ConfigError::section(
                    path,
                    "inbox.max_attempts",
                    format!("must be between 1 and 100, got {n}"),
                )
            })?,
    };
    let stalled_after = raw
        .inbox
        .as_ref()
        .and_then(|i| i.stalled_after.clone())
        .unwrap_or_else(|| defaults::STALLED_AFTER.to_owned());
    let stalled_after_secs = crate::parse_duration_secs(&stalled_after)
        .map_err(|m| ConfigError::section(path, "inbox.stalled_after", m))?;
    Ok(Inbox {
        max_task_bytes: kb * 1024,
        max_attempts,
        stalled_after,
        stalled_after_secs,
    })
}

fn resolve_infra(raw: &RawConfig, path: &Path) -> Result<Infra, ConfigError> {
    let supervisor = match raw.infra.as_ref().and_then(|i| i.supervisor.as_deref()) {
        None => Supervisor::Auto,
        Some(s) => s
            .parse()
            .map_err(|m| ConfigError::section(path, "infra.supervisor", m))?,
    };
    let client_idle_timeout = raw
        .infra
        .as_ref()
        .and_then(|i| i.client_idle_timeout.clone())
        .unwrap_or_else(|| defaults::CLIENT_IDLE_TIMEOUT.to_owned());
    let client_idle_timeout_secs = crate::parse_duration_secs(&client_idle_timeout)
        .map_err(|m| ConfigError::section(path, "infra.client_idle_timeout", m))?;
    Ok(Infra {
        supervisor,
        client_idle_timeout,
        client_idle_timeout_secs,
    })
}

fn resolve_gateway(raw: &RawConfig, path: &Path) -> Result<Gateway, ConfigError> {
    let names = raw
        .gateway
        .as_ref()
        .and_then(|g| g.loopback_server_users.clone())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for name in &names {
        let refuse = |m: String| ConfigError::section(path, "gateway.loopback_server_users", m);
        check_user_name(name).map_err(refuse)?;
        if !seen.insert(name.as_str()) {
            return Err(refuse(format!("{name:?} is listed twice")));
        }
    }
    Ok(Gateway {
        loopback_server_users: names,
    })
}

/// A Linux user name as `useradd` accepts it by default (Debian's
/// `NAME_REGEX` plus the 32-character limit), so a typo or a uid number
/// is caught here rather than silently trusting no one.
pub(crate) fn check_user_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.len() <= 32
        && name
            .trim_end_matches('$')
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        && name.matches('$').count() <= 1;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a user name (^[a-z_][a-z0-9_-]*[$]?$, at most 32 characters)"
        ))
    }
}

/// Everything an agent resolves against.
struct Stack<'a> {
    path: &'a Path,
    env: &'a EnvOverrides,
    base_file: Level,
    tier_file: BTreeMap<Tier, Level>,
    default_session_min: u32,
}

impl Stack<'_> {
    fn resolve_agent(
        &self,
        index: usize,
        raw: &RawAgent,
        seen: &BTreeMap<String, usize>,
    ) -> Result<Agent, ConfigError> {
        let path = self.path;
        let name_for_err = raw.name.as_deref();
        let err =
            |field: &str, msg: String| ConfigError::agent(path, index, name_for_err, field, msg);

        let name = raw
            .name
            .clone()
            .ok_or_else(|| err("name", "required".to_owned()))?;
        validate_agent_name(&name).map_err(|m| err("name", m))?;
        if let Some(first) = seen.get(&name) {
            return Err(err("name", format!("duplicate of agents[{first}]")));
        }

        let tier: Tier = raw
            .tier
            .as_deref()
            .ok_or_else(|| err("tier", "required (officer, operator or worker)".to_owned()))?
            .parse()
            .map_err(|m| err("tier", m))?;

        let roles = check_names(&raw.roles).map_err(|m| err("roles", m))?;
        let groups = check_names(&raw.groups)
            .and_then(|g| check_groups(&g).map(|()| g))
            .map_err(|m| err("groups", m))?;
        let scopes = check_names(&raw.scopes).map_err(|m| err("scopes", m))?;

        let mode: Mode = match raw.mode.as_deref() {
            None => Mode::OnDemand,
            Some(m) => m.parse().map_err(|m| err("mode", m))?,
        };
        let schedule = match (mode, raw.cron.as_deref()) {
            (Mode::Cron, None) => {
                return Err(err("cron", "required when mode = \"cron\"".to_owned()));
            }
            (Mode::Cron, Some(expr)) => {
                let on_calendar =
                    cron_to_on_calendar(expr).map_err(|e| err("cron", format!("{expr:?}: {e}")))?;
                Some(Schedule {
                    cron: expr.to_owned(),
                    on_calendar,
                })
            }
            (_, None) => None,
            (other, Some(_)) => {
                return Err(err(
                    "cron",
                    format!(
                        "only allowed with mode = \"cron\" (mode is {:?})",
                        other.as_str()
                    ),
                ));
            }
        };

        let agent_file =
            Level::from_raw(&raw.level()).map_err(|(field, msg)| err(field.key(), msg))?;
        let agent_env = self.env.agent(&name);
        let tier_file = self.tier_file.get(&tier).cloned().unwrap_or_default();
        // Highest first: each level's env overlay sits just above that level's file values.
        let merged = agent_env
            .over(&agent_file)
            .over(&self.env.tier(tier))
            .over(&tier_file)
            .over(&self.env.base)
            .over(&self.base_file);

        let runner = merged.runner.clone().unwrap_or(Runner::Builtin);
        let provider = match &runner {
            Runner::Exec(_) => {
                // Provider inherited from [base] is simply not used; set on the agent
                // itself it signals a misunderstanding worth stopping for.
                if agent_env.provider.is_some() || agent_file.provider.is_some() {
                    return Err(err(
                        Field::Provider.key(),
                        format!(
                            "has no effect with an exec runner ({:?}); remove it",
                            runner.to_string()
                        ),
                    ));
                }
                None
            }
            _ => {
                let p = merged.provider.unwrap_or_else(|| default_provider(&runner));
                check_compat(&runner, p).map_err(|m| err(Field::Provider.key(), m))?;
                if p == Provider::OpenAiCompatible && merged.base_url.is_none() {
                    return Err(err(
                        Field::BaseUrl.key(),
                        "required when provider is openai-compatible".to_owned(),
                    ));
                }
                Some(p)
            }
        };

        // The built-in default models are OpenRouter ids; handing them to another
        // provider would only fail later, at the first model call.
        let model = merged.model.clone().or_else(|| match provider {
            Some(Provider::OpenRouter) => Some(default_model(tier).to_owned()),
            _ => None,
        });
        if runner == Runner::Builtin && model.is_none() {
            let p = provider.map_or("", Provider::as_str);
            return Err(err(
                Field::Model.key(),
                format!(
                    "required with provider {p} (the built-in default models are OpenRouter ids)"
                ),
            ));
        }
        let api_key_env = merged.api_key_env.clone().or_else(|| {
            provider
                .and_then(Provider::default_api_key_env)
                .map(str::to_owned)
        });

        Ok(Agent {
            name,
            tier,
            roles,
            groups,
            scopes,
            mode,
            schedule,
            runner,
            provider,
            model,
            api_key_env,
            base_url: merged.base_url.clone(),
            max_sessions: merged.max_sessions.unwrap_or(defaults::MAX_SESSIONS),
            max_iterations: merged.max_iterations.unwrap_or(defaults::MAX_ITERATIONS),
            max_session_min: merged.max_session_min.unwrap_or(self.default_session_min),
            daily_budget_usd: merged.daily_budget_usd,
            instructions: raw.instructions.clone().filter(|s| !s.trim().is_empty()),
        })
    }
}

/// Role, group and scope names become directory names (and groups become Linux
/// groups), so they follow the agent-name rule.
fn check_names(names: &[String]) -> Result<Vec<String>, String> {
    let mut seen = BTreeSet::new();
    for n in names {
        validate_agent_name(n).map_err(|m| format!("{n:?}: {m}"))?;
        if !seen.insert(n.as_str()) {
            return Err(format!("{n:?} is listed twice"));
        }
    }
    Ok(names.to_vec())
}

/// Host groups that would hand an agent power its tier does not have. `groups`
/// entries become supplementary Linux groups, so one line of config could
/// otherwise make an LLM agent root-equivalent (sudo, docker, disk) or let it
/// read every log. con's own groups are refused too ([`con_group_refusal`]).
const FORBIDDEN_HOST_GROUPS: &[&str] = &[
    "root",
    "sudo",
    "wheel",
    "admin",
    "adm",
    "shadow",
    "disk",
    "kmem",
    "docker",
    "lxd",
    "libvirt",
    "systemd-journal",
];

/// Why an agent cannot list con's own group `group` in `groups`: membership
/// follows from its tier, or would make the tasks it writes count as verified.
fn con_group_refusal(group: ConGroup) -> &'static str {
    match group {
        ConGroup::Trusted => "con's provenance group: tasks its members write count as verified",
        ConGroup::Agents => "con's own group, which every agent is in already",
        ConGroup::Officers | ConGroup::Operators | ConGroup::Workers => {
            "a tier group; set `tier` instead"
        }
    }
}

fn check_groups(groups: &[String]) -> Result<(), String> {
    for g in groups {
        if FORBIDDEN_HOST_GROUPS.contains(&g.as_str()) {
            return Err(format!("{g:?} is a privileged system group"));
        }
        if let Some(own) = ConGroup::from_base_name(g) {
            return Err(format!("{g:?} is {}", con_group_refusal(own)));
        }
    }
    Ok(())
}

fn default_model(tier: Tier) -> &'static str {
    match tier {
        Tier::Officer | Tier::Operator => defaults::MODEL_LEAD,
        Tier::Worker => defaults::MODEL_WORKER,
    }
}

/// With no provider configured anywhere, pick the one the runner can actually use,
/// so `runner = "claude"` alone works.
fn default_provider(runner: &Runner) -> Provider {
    match runner {
        Runner::Cli(KnownCli::Claude) => Provider::Anthropic,
        Runner::Cli(KnownCli::Codex) => Provider::OpenAi,
        _ => Provider::OpenRouter,
    }
}

fn check_compat(runner: &Runner, provider: Provider) -> Result<(), String> {
    let ok = match runner {
        Runner::Cli(KnownCli::Claude) => matches!(provider, Provider::Anthropic),
        Runner::Cli(KnownCli::Codex) => matches!(
            provider,
            Provider::OpenAi | Provider::OpenAiCompatible | Provider::OpenRouter
        ),
        Runner::Cli(KnownCli::OpenCode) | Runner::Builtin | Runner::Exec(_) => true,
    };
    if ok {
        return Ok(());
    }
    let supported = match runner {
        Runner::Cli(KnownCli::Claude) => "anthropic",
        _ => "openai, openai-compatible or openrouter",
    };
    Err(format!(
        "{provider} cannot be used with runner {runner} (it supports {supported})"
    ))
}
