//! The resolved, validated configuration: what the rest of con consumes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use con_layout::ConGroup;
use serde::{Serialize, Serializer};

/// A fully resolved and validated `con.toml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file this was read from (as given by the caller).
    pub source: PathBuf,
    /// `[system]`.
    pub system: System,
    /// `[network]`.
    pub network: Network,
    /// `[contracts]`.
    pub contracts: ContractsConfig,
    /// `[dashboard]` (parsed and validated only).
    pub dashboard: Dashboard,
    /// `[infra]` (parsed and validated only).
    pub infra: Infra,
    /// `[inbox]`: what a task may be.
    pub inbox: Inbox,
    /// `[gateway]`: how the daemon's LLM gateway treats model servers.
    pub gateway: Gateway,
    /// `[fleet_view]`: which agents see the whole fleet.
    pub fleet_view: FleetView,
    /// `[pricing."<model>"]`, by model name.
    pub pricing: BTreeMap<String, Price>,
    /// `[budgets]`: daily spend caps shared by all agents of a tier.
    pub tier_budgets: BTreeMap<Tier, f64>,
    /// The `[[agents]]`, resolved, in file order.
    pub agents: Vec<Agent>,
}

/// The role that runs the host: its agents get the sudo whitelist, manage
/// the contracts directory and may add contracts through the daemon, and
/// the daemon escalates to its holder what no run could do (a task set
/// aside as failed).
pub const SYSADMIN_ROLE: &str = "sysadmin";

/// What one model costs, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Price {
    /// Prompt tokens.
    pub input_usd_per_mtok: f64,
    /// Completion tokens.
    pub output_usd_per_mtok: f64,
}

impl Config {
    /// The agent called `name`, if configured.
    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Whether `agent` sees the whole fleet (the status of every agent and
    /// the ledger; never their contents): every officer, and operators when
    /// `[fleet_view] operators` says so. Workers never.
    pub fn sees_fleet(&self, agent: &Agent) -> bool {
        match agent.tier {
            Tier::Officer => true,
            Tier::Operator => self.fleet_view.operators,
            Tier::Worker => false,
        }
    }

    /// The agent that holds the [`SYSADMIN_ROLE`] (the first in file
    /// order, if several do): who is told about tasks set aside as failed.
    pub fn sysadmin(&self) -> Option<&Agent> {
        self.agents
            .iter()
            .find(|a| a.roles.iter().any(|r| r == SYSADMIN_ROLE))
    }

    /// The names of the agents that may add contracts through the daemon
    /// (`con contracts add`), in file order: those holding the
    /// [`SYSADMIN_ROLE`] (the role that manages the contracts directory) at
    /// tier operator or above. Never a worker, whatever its roles: a
    /// contract's `on_fail` can halt every agent and its escalation is a
    /// task the daemon writes.
    pub fn contract_authors(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|a| a.tier != Tier::Worker && a.roles.iter().any(|r| r == SYSADMIN_ROLE))
            .map(|a| a.name.clone())
            .collect()
    }

    /// The names of the agents that see the whole fleet, in file order.
    pub fn fleet_viewers(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter(|a| self.sees_fleet(a))
            .map(|a| a.name.clone())
            .collect()
    }
}

/// `[fleet_view]`: who, besides officers, sees the whole fleet's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FleetView {
    /// Operators see every agent's status row and the ledger (default
    /// false). Officers always do; workers never.
    pub operators: bool,
}

/// `[system]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct System {
    /// Name of this conspiracy (default `conspiracyos`).
    pub name: String,
}

/// `[network]`: per-agent egress filtering.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Network {
    /// Whether agent egress is filtered per uid (default true).
    pub outbound_filter: bool,
    /// TCP ports agents may connect to when filtered (default `[443]`).
    pub allowed_ports: Vec<u16>,
    /// Whether agents may resolve names (default true).
    pub allow_dns: bool,
    /// The only addresses agents may send DNS to (`dns_servers`); `None`:
    /// the host's own resolvers, from `/etc/resolv.conf` when provisioning.
    pub dns_servers: Option<Vec<std::net::IpAddr>>,
    /// Whether agents may reach loopback (default true; the daemon and local model servers live there).
    pub allow_loopback: bool,
}

/// `[contracts]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContractsConfig {
    /// `[contracts.system]`.
    pub system: SystemContracts,
}

/// `[contracts.system]`: thresholds for the system contracts and how often they run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemContracts {
    /// The interval as written, e.g. `60s`.
    pub healthcheck_interval: String,
    /// The same interval in seconds (always > 0).
    pub healthcheck_interval_secs: u64,
    /// Minimum free disk space, percent (default 15).
    pub disk_min_free_pct: u8,
    /// Minimum free memory, percent (default 10).
    pub mem_min_free_pct: u8,
    /// Maximum load average per CPU (default 4.0).
    pub max_load_per_cpu: f64,
    /// Longest an agent session may run, minutes (default 30); also the agents' default.
    pub max_session_min: u32,
    /// Largest the event log may grow on disk, MiB (default 1024). Agents'
    /// appends are refused from `log_max_mb - log_reserve_mb` on, everyone's
    /// at `log_max_mb`.
    pub log_max_mb: u64,
    /// The part of `log_max_mb` kept for operators and the daemon's own
    /// events once agents are refused, MiB (default an eighth of
    /// `log_max_mb`, at most 64; always less than `log_max_mb`).
    pub log_reserve_mb: u64,
    /// Free space the daemon keeps on the event log's file system, MiB
    /// (default 8): with less, the log stops recording (every append is
    /// refused) until there is more, so sled never meets a full disk in
    /// the common case; 0 leaves it to sled's own write errors.
    pub log_min_free_mb: u64,
    /// Largest event an agent may append (record and attachments), KiB
    /// (default 3072; at most 4096, an agent's frame limit).
    pub agent_max_event_kb: u64,
    /// Largest single attachment an agent may append, KiB (default 2048; at
    /// most `agent_max_event_kb`).
    pub agent_max_attachment_kb: u64,
    /// Bytes one agent may have recorded per minute, MiB (default 32).
    pub agent_max_mb_per_minute: u64,
    /// Bytes one agent may have recorded per hour, MiB (default 256).
    pub agent_max_mb_per_hour: u64,
}

/// `[dashboard]` (parsed and validated; serving it comes later).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dashboard {
    /// Whether the status page is served (default false).
    pub enabled: bool,
    /// Where it listens (default `127.0.0.1:8470`).
    pub listen: SocketAddr,
}

/// `[inbox]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inbox {
    /// Largest task file read, in bytes (`max_task_kb`, default 1024 KiB).
    /// A larger or sparse task is recorded by its first bytes and set aside
    /// unrun.
    pub max_task_bytes: u64,
    /// Sessions of one task that may end in a provider or runner error
    /// before the task is set aside (`max_attempts`, default 3).
    pub max_attempts: u32,
    /// `stalled_after` as written (default `10m`): tasks waiting this long
    /// in an active agent's inbox with no run of it going are a problem in
    /// `con status` (a failed path unit, a supervisor that does not start
    /// runs).
    pub stalled_after: String,
    /// The same in seconds (always > 0).
    pub stalled_after_secs: u64,
}

/// `[infra]` (parsed and validated only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Infra {
    /// Who starts agent runs.
    pub supervisor: Supervisor,
    /// `client_idle_timeout` as written (default `10m`): the daemon closes
    /// a client connection that sends no request for this long, unless an
    /// agent session it recorded events for is still open.
    pub client_idle_timeout: String,
    /// The same in seconds (always > 0).
    pub client_idle_timeout_secs: u64,
}

/// `[gateway]`: how the daemon's LLM gateway treats model servers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Gateway {
    /// Users (besides root, always trusted) whose listening sockets may
    /// receive model calls sent in plain HTTP to a loopback address (local
    /// model servers such as `ollama`). Any other owner of the listener on
    /// such an endpoint's port, an agent above all, gets nothing: the call
    /// is refused before a byte is sent. Default empty.
    pub loopback_server_users: Vec<String>,
}

/// Who starts agent runs and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Supervisor {
    /// systemd when PID 1 is systemd, the daemon otherwise.
    Auto,
    /// Always systemd units.
    Systemd,
    /// Always the con daemon.
    Daemon,
}

impl Supervisor {
    /// The spelling used in `con.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Supervisor::Auto => "auto",
            Supervisor::Systemd => "systemd",
            Supervisor::Daemon => "daemon",
        }
    }
}

impl FromStr for Supervisor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Supervisor::Auto),
            "systemd" => Ok(Supervisor::Systemd),
            "daemon" => Ok(Supervisor::Daemon),
            _ => Err(format!(
                "unknown supervisor {s:?} (expected auto, systemd or daemon)"
            )),
        }
    }
}

impl fmt::Display for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resolved agent: every overridable field has its final value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agent {
    /// Agent name; the Linux user is `<prefix><name>`.
    pub name: String,
    /// Privilege tier.
    pub tier: Tier,
    /// Role layers (`roles/<role>/AGENTS.md`, skills).
    pub roles: Vec<String>,
    /// Extra group layers and Linux groups.
    pub groups: Vec<String>,
    /// Filesystem scopes.
    pub scopes: Vec<String>,
    /// When the agent runs.
    pub mode: Mode,
    /// The timer schedule, present iff `mode` is [`Mode::Cron`].
    pub schedule: Option<Schedule>,
    /// What executes a session.
    pub runner: Runner,
    /// LLM provider; `None` for exec runners, which bring their own.
    pub provider: Option<Provider>,
    /// Model id; `None` when the runner picks its own.
    pub model: Option<String>,
    /// Name of the variable in `/etc/con/env` holding the API key.
    pub api_key_env: Option<String>,
    /// Provider endpoint override.
    pub base_url: Option<String>,
    /// Concurrent sessions allowed (1..=64).
    pub max_sessions: u32,
    /// Tool-loop iterations per session (1..=10000).
    pub max_iterations: u32,
    /// Wall-clock limit per session, minutes.
    pub max_session_min: u32,
    /// Daily model spend limit in USD; `None` is unlimited.
    pub daily_budget_usd: Option<f64>,
    /// Inline text appended to the assembled AGENTS.md.
    pub instructions: Option<String>,
}

/// A cron-mode agent's schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// The cron expression as written in the config.
    pub cron: String,
    /// The equivalent systemd `OnCalendar=` expression, in systemd's normalized form.
    pub on_calendar: String,
}

/// Privilege tier of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Sets policy and strategy.
    Officer,
    /// Runs the system (concierge, sysadmin).
    Operator,
    /// Does delegated work with the least privilege.
    Worker,
}

impl Tier {
    /// All tiers, most privileged first.
    pub const ALL: [Tier; 3] = [Tier::Officer, Tier::Operator, Tier::Worker];

    /// The spelling used in `con.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Officer => "officer",
            Tier::Operator => "operator",
            Tier::Worker => "worker",
        }
    }

    /// The group every agent of this tier belongs to.
    pub fn group(self) -> ConGroup {
        match self {
            Tier::Officer => ConGroup::Officers,
            Tier::Operator => ConGroup::Operators,
            Tier::Worker => ConGroup::Workers,
        }
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "officer" => Ok(Tier::Officer),
            "operator" => Ok(Tier::Operator),
            "worker" => Ok(Tier::Worker),
            _ => Err(format!(
                "unknown tier {s:?} (expected officer, operator or worker)"
            )),
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// When a task arrives in its inbox.
    OnDemand,
    /// Restarted whenever it ends.
    Continuous,
    /// On a cron schedule.
    Cron,
}

impl Mode {
    /// The spelling used in `con.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::OnDemand => "on-demand",
            Mode::Continuous => "continuous",
            Mode::Cron => "cron",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on-demand" => Ok(Mode::OnDemand),
            "continuous" => Ok(Mode::Continuous),
            "cron" => Ok(Mode::Cron),
            _ => Err(format!(
                "unknown mode {s:?} (expected on-demand, continuous or cron)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An external agent CLI con knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KnownCli {
    /// Anthropic's Claude Code (`claude`).
    Claude,
    /// OpenAI's Codex CLI (`codex`).
    Codex,
    /// opencode (`opencode`).
    OpenCode,
}

impl KnownCli {
    /// The runner name, which is also the command.
    pub fn as_str(self) -> &'static str {
        match self {
            KnownCli::Claude => "claude",
            KnownCli::Codex => "codex",
            KnownCli::OpenCode => "opencode",
        }
    }
}

impl fmt::Display for KnownCli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What executes an agent session.
///
/// Serialized as the string form accepted in `con.toml` (`builtin`, `claude`, `exec:cat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// con's own tool loop (`picoclaw` or `builtin` in the config).
    Builtin,
    /// A known external CLI.
    Cli(KnownCli),
    /// Any other command, given the prompt on stdin (`exec:<command>`).
    Exec(String),
}

/// How [`Runner::from_str`] describes the accepted spellings.
const RUNNER_FORMS: &str = "picoclaw, builtin, claude, codex, opencode or exec:<command>";

impl FromStr for Runner {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            // "picoclaw" is the seed's name for its in-process tool loop; ours replaces it.
            "picoclaw" | "builtin" => Ok(Runner::Builtin),
            "claude" => Ok(Runner::Cli(KnownCli::Claude)),
            "codex" => Ok(Runner::Cli(KnownCli::Codex)),
            "opencode" => Ok(Runner::Cli(KnownCli::OpenCode)),
            _ => match s.strip_prefix("exec:") {
                Some("") => Err(format!(
                    "{s:?}: an exec runner needs a command after \"exec:\""
                )),
                Some(cmd) if cmd.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                    Err(format!(
                        "{s:?}: the exec command must not contain whitespace or control characters"
                    ))
                }
                Some(cmd) => Ok(Runner::Exec(cmd.to_owned())),
                None => Err(format!("unknown runner {s:?} (expected {RUNNER_FORMS})")),
            },
        }
    }
}

impl fmt::Display for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Runner::Builtin => f.write_str("builtin"),
            Runner::Cli(cli) => f.write_str(cli.as_str()),
            Runner::Exec(cmd) => write!(f, "exec:{cmd}"),
        }
    }
}

impl Serialize for Runner {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// An LLM provider (wire format + endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Provider {
    /// OpenRouter (OpenAI-compatible wire format).
    #[serde(rename = "openrouter")]
    OpenRouter,
    /// OpenAI.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages API.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Any OpenAI-compatible server; needs `base_url`.
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
}

impl Provider {
    /// The spelling used in `con.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenRouter => "openrouter",
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::OpenAiCompatible => "openai-compatible",
        }
    }

    /// The environment variable the API key is read from when `api_key_env` is not set.
    ///
    /// `None` for openai-compatible servers, which often need no key at all.
    pub fn default_api_key_env(self) -> Option<&'static str> {
        match self {
            Provider::OpenRouter => Some("CON_OPENROUTER_API_KEY"),
            Provider::Anthropic => Some("CON_AUTH_ANTHROPIC"),
            Provider::OpenAi => Some("CON_AUTH_OPENAI"),
            Provider::OpenAiCompatible => None,
        }
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openrouter" => Ok(Provider::OpenRouter),
            "openai" => Ok(Provider::OpenAi),
            "anthropic" => Ok(Provider::Anthropic),
            "openai-compatible" => Ok(Provider::OpenAiCompatible),
            _ => Err(format!(
                "unknown provider {s:?} (expected openrouter, openai, anthropic or openai-compatible)"
            )),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_round_trips_through_display() {
        for s in [
            "builtin",
            "claude",
            "codex",
            "opencode",
            "exec:/usr/bin/my-agent",
        ] {
            let r: Runner = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("picoclaw".parse::<Runner>().unwrap(), Runner::Builtin);
    }

    #[test]
    fn runner_rejects_bad_exec_commands() {
        assert!("exec:".parse::<Runner>().is_err());
        assert!("exec:a b".parse::<Runner>().is_err());
        assert!("exec:a\tb".parse::<Runner>().is_err());
        assert!("Claude".parse::<Runner>().is_err());
    }

    #[test]
    fn enums_serialize_like_the_toml() {
        let json = serde_json::to_string(&(
            Mode::OnDemand,
            Provider::OpenAiCompatible,
            Runner::Exec("cat".into()),
            Tier::Worker,
            KnownCli::OpenCode,
        ))
        .unwrap();
        assert_eq!(
            json,
            r#"["on-demand","openai-compatible","exec:cat","worker","opencode"]"#
        );
    }

    #[test]
    fn tier_groups() {
        let groups: Vec<_> = Tier::ALL.iter().map(|t| t.group().base_name()).collect();
        assert_eq!(groups, ["officers", "operators", "workers"]);
    }
}
