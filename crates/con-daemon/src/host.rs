//! The daemon a host defines: paths and names from its layout, agents,
//! supervision and model routes from its config, API keys from its secrets
//! file.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use con_config::{Config, CronSchedule, Provider, Runner, Supervisor};
use con_event::Digest;
use con_layout::Layout;

use crate::gateway::{GatewayConfig, Route, micro_usd};
use crate::supervisor::{SupervisedAgent, SupervisorConfig};
use crate::{DaemonConfig, DaemonError};

/// Journal mirror queue length: events committed while journald is slow.
const MIRROR_CAPACITY: usize = 65_536;

/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the supervisor looks at inboxes without being woken.
const SUPERVISOR_TICK: Duration = Duration::from_secs(1);

/// What a host's files say at one moment: the daemon they define, and what
/// a reload compares with the running one. Built by [`HostConfig::load`],
/// at start and at every reload alike.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The daemon `con.toml` and the secrets file define.
    pub daemon: DaemonConfig,
    /// SHA-256 of `con.toml` as read (the bytes that were parsed).
    pub config_digest: Digest,
    /// Each configured agent's resolved settings, to tell which changed.
    pub(crate) agents: BTreeMap<String, con_config::Agent>,
    /// SHA-256 over the secrets' names and values, to tell whether keys
    /// changed without keeping or recording them twice.
    pub(crate) secrets_digest: Digest,
    /// Settings only a restart applies, by name, in a comparable form.
    pub(crate) restart_only: Vec<(&'static str, String)>,
}

impl HostConfig {
    /// Reads `con.toml` (with the environment overrides `env`) and the
    /// secrets file of `layout` and builds the daemon they define; see
    /// [`DaemonConfig::from_host`] for `supervisor` and `run_program`.
    /// Errors are one line: the config's own, or the secrets file's.
    pub fn load(
        layout: &Layout,
        env: &BTreeMap<String, String>,
        supervisor: Option<Supervisor>,
        run_program: PathBuf,
    ) -> Result<Self, DaemonError> {
        let path = layout.config_file();
        // Read once: the digest is of the very bytes parsed.
        let source = std::fs::read_to_string(path)
            .map_err(|e| DaemonError::Config(format!("{}: cannot read: {e}", path.display())))?;
        let config = con_config::parse(&source, path, env)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        let secrets = read_secrets(&layout.env_file())?;
        let daemon = DaemonConfig::from_parts(layout, &config, &secrets, supervisor, run_program)?;
        let mut secret_lines = String::new();
        for (key, value) in &secrets {
            // Length-prefixed, so no two different sets share a digest input.
            secret_lines.push_str(&format!("{}:{key}{}:{value}", key.len(), value.len()));
        }
        Ok(Self {
            config_digest: Digest::of(source.as_bytes()),
            agents: config
                .agents
                .iter()
                .map(|a| (a.name.clone(), a.clone()))
                .collect(),
            secrets_digest: Digest::of(secret_lines.as_bytes()),
            restart_only: vec![
                ("system.name", daemon.system_name.clone()),
                ("contracts.system", format!("{:?}", daemon.limits)),
                ("inbox.max_task_kb", daemon.max_task_bytes.to_string()),
                (
                    "infra.client_idle_timeout",
                    daemon.client_idle_timeout.as_secs().to_string(),
                ),
                (
                    "inbox.stalled_after",
                    daemon.stalled_after.as_secs().to_string(),
                ),
                (
                    "infra.supervisor",
                    daemon
                        .supervisor
                        .as_ref()
                        .is_some_and(|s| s.start_runs)
                        .to_string(),
                ),
            ],
            daemon,
        })
    }
}

impl DaemonConfig {
    /// The daemon of `config` on `layout`.
    ///
    /// `supervisor` overrides `[infra] supervisor`; `run_program` is what
    /// the supervisor runs as each agent, with the layout's global flags
    /// and `run <agent>`. The secrets file is read here: it must be root's
    /// alone, and a missing one means no keys (local model servers may need
    /// none).
    pub fn from_host(
        layout: &Layout,
        config: &Config,
        supervisor: Option<Supervisor>,
        run_program: PathBuf,
    ) -> Result<Self, DaemonError> {
        let secrets = read_secrets(&layout.env_file())?;
        Self::from_parts(layout, config, &secrets, supervisor, run_program)
    }

    /// [`DaemonConfig::from_host`] with the secrets already read.
    fn from_parts(
        layout: &Layout,
        config: &Config,
        secrets: &BTreeMap<String, String>,
        supervisor: Option<Supervisor>,
        run_program: PathBuf,
    ) -> Result<Self, DaemonError> {
        check_loopback_users(layout, config)?;
        let gateway = gateway_config(config, secrets, &layout.env_file());
        let start_runs = match supervisor.unwrap_or(config.infra.supervisor) {
            Supervisor::Daemon => true,
            Supervisor::Systemd => false,
            Supervisor::Auto => !Path::new(con_layout::SYSTEMD_BOOTED_MARKER).exists(),
        };
        let agents = config
            .agents
            .iter()
            .map(|a| SupervisedAgent {
                name: a.name.clone(),
                inbox: layout.agent_inbox(&a.name),
                max_sessions: a.max_sessions,
                mode: a.mode,
                schedule: a
                    .schedule
                    .as_ref()
                    .and_then(|s| CronSchedule::parse(&s.cron).ok()),
            })
            .collect();
        Ok(Self {
            layout: layout.clone(),
            system_name: config.system.name.clone(),
            agents: config.agents.iter().map(|a| a.name.clone()).collect(),
            tiers: config
                .agents
                .iter()
                .map(|a| (a.name.clone(), a.tier))
                .collect(),
            fleet_viewers: config.fleet_viewers(),
            sysadmin: config.sysadmin().map(|a| a.name.clone()),
            contract_authors: config.contract_authors(),
            mirror_capacity: MIRROR_CAPACITY,
            checkpoints: crate::CheckpointSettings::default(),
            drain_timeout: DRAIN_TIMEOUT,
            client_idle_timeout: Duration::from_secs(config.infra.client_idle_timeout_secs),
            stalled_after: Duration::from_secs(config.inbox.stalled_after_secs),
            supervisor: Some(SupervisorConfig {
                run_program,
                // Runs see the same tree, config and names as the daemon.
                run_args: layout.con_flags(),
                agents,
                outer_inbox: layout.outer_inbox(),
                router: config.agent("concierge").map(|a| a.name.clone()),
                tick: SUPERVISOR_TICK,
                start_runs,
            }),
            inboxes: std::iter::once(con_inbox::InboxSpec {
                name: "outer".into(),
                dir: layout.outer_inbox(),
            })
            .chain(config.agents.iter().map(|a| con_inbox::InboxSpec {
                name: a.name.clone(),
                dir: layout.agent_inbox(&a.name),
            }))
            .collect(),
            max_task_bytes: config.inbox.max_task_bytes,
            gateway: Some(gateway),
            limits: crate::LogLimits::from_config(&config.contracts.system),
            // Under systemd a timer runs `con healthcheck`; without it the
            // daemon keeps the contracts' schedule itself.
            contracts: crate::ContractSettings::from_host(layout, config, start_runs),
        })
    }
}

/// An agent's user among `[gateway] loopback_server_users` would make that
/// agent a trusted model server: its listener would get every key and
/// conversation sent in plain HTTP to this host. Refused at start.
fn check_loopback_users(layout: &Layout, config: &Config) -> Result<(), DaemonError> {
    for name in &config.gateway.loopback_server_users {
        if let Some(agent) = config.agents.iter().find(|a| layout.user(&a.name) == *name) {
            return Err(DaemonError::Config(format!(
                "{}: gateway.loopback_server_users: {name:?} is agent {}'s user; an agent must never receive model calls (API keys, other sessions' conversations)",
                config.source.display(),
                agent.name
            )));
        }
    }
    Ok(())
}

/// Whether `meta` is root's and grants group and others nothing: what a
/// file holding keys, or the event log, must be.
pub(crate) fn is_root_only(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && meta.mode() & 0o077 == 0
}

/// Reads the secrets file (`KEY=value` lines). A key file others can read
/// is refused rather than used.
fn read_secrets(path: &Path) -> Result<BTreeMap<String, String>, DaemonError> {
    let refused = |message: String| DaemonError::Secrets {
        path: path.to_path_buf(),
        message,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(refused(e.to_string())),
    };
    if !is_root_only(&meta) {
        return Err(refused(format!(
            "holds API keys, so it must be owned by root with mode 0600 (it is uid {} mode {:04o})",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    let mut secrets = BTreeMap::new();
    for item in dotenvy::from_path_iter(path).map_err(|e| refused(e.to_string()))? {
        // dotenvy's parse errors quote the whole line, key included: say
        // only where it is.
        let (key, value) = item.map_err(|e| match e {
            dotenvy::Error::LineParse(_, index) => refused(format!(
                "cannot parse the entry at character {index} (KEY=value lines; the line is not shown because it may hold a key)"
            )),
            other => refused(
                other
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or("unreadable")
                    .to_owned(),
            ),
        })?;
        secrets.insert(key, value);
    }
    Ok(secrets)
}

/// How each agent's model calls are routed, from config and the secrets
/// (read from `env_file`, which errors name).
fn gateway_config(
    config: &Config,
    secrets: &BTreeMap<String, String>,
    env_file: &Path,
) -> GatewayConfig {
    let routes = config
        .agents
        .iter()
        .filter(|a| a.runner == Runner::Builtin)
        .filter_map(|a| {
            let provider = a.provider?;
            let model = a.model.clone()?;
            let key_var = a
                .api_key_env
                .clone()
                .or_else(|| provider.default_api_key_env().map(str::to_owned));
            let key = key_var.as_ref().and_then(|v| secrets.get(v)).cloned();
            let unusable = match (&key_var, &key) {
                (Some(var), None) if provider != Provider::OpenAiCompatible => Some(format!(
                    "{var} is not set in {}: no key for provider {}",
                    env_file.display(),
                    provider.as_str()
                )),
                _ => None,
            };
            let trust = con_llm::LoopbackTrust::new(config.gateway.loopback_server_users.clone());
            let (mut endpoint, unusable) = match con_llm::Endpoint::for_provider(
                provider,
                &model,
                a.base_url.as_deref(),
                key.map(con_llm::Secret::new),
            ) {
                Ok(endpoint) => (endpoint, unusable),
                // Config validation should make this unreachable; if not,
                // the agent's calls fail with the reason instead of the
                // daemon refusing to serve everyone.
                Err(e) => (
                    con_llm::Endpoint::new(
                        con_llm::ProviderKind::for_provider(provider),
                        "",
                        &model,
                    ),
                    Some(format!("agent {}: {e}", a.name)),
                ),
            };
            endpoint.loopback_trust = trust;
            Some((
                a.name.clone(),
                Route {
                    provider: provider.as_str().to_owned(),
                    endpoint,
                    price: config
                        .pricing
                        .get(&model)
                        .copied()
                        .map(con_llm::Price::from),
                    daily_budget_micro_usd: a.daily_budget_usd.map(micro_usd),
                    tier: a.tier,
                    unusable,
                },
            ))
        })
        .collect();
    GatewayConfig {
        routes,
        tier_budgets_micro_usd: config
            .tier_budgets
            .iter()
            .map(|(t, usd)| (*t, micro_usd(*usd)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const FLEET: &str = r#"
[system]
name = "fleet"

[[agents]]
name = "concierge"
tier = "operator"
provider = "anthropic"
model = "claude-x"

[[agents]]
name = "local"
tier = "worker"
provider = "openai-compatible"
model = "m"
base_url = "http://127.0.0.1:9/v1"

[[agents]]
name = "watcher"
tier = "worker"
runner = "exec:/usr/bin/cat"
"#;

    fn config() -> Config {
        con_config::parse(FLEET, Path::new("fleet.toml"), &BTreeMap::new()).unwrap()
    }

    fn layout(root: &Path) -> Layout {
        Layout::new(root, "t1-", "g1-").unwrap()
    }

    #[test]
    fn paths_and_names_come_from_the_layout() {
        let root = tempfile::tempdir().unwrap();
        let layout = layout(root.path());
        let d = DaemonConfig::from_host(
            &layout,
            &config(),
            Some(Supervisor::Daemon),
            PathBuf::from("/bin/con"),
        )
        .unwrap();
        assert_eq!(d.layout, layout);
        let inboxes: Vec<_> = d.inboxes.iter().map(|i| i.dir.clone()).collect();
        assert_eq!(inboxes[0], layout.outer_inbox());
        assert_eq!(inboxes[1], layout.agent_inbox("concierge"));
        let s = d.supervisor.unwrap();
        assert!(s.start_runs);
        assert_eq!(s.run_args, layout.con_flags());
        assert_eq!(s.router.as_deref(), Some("concierge"));
    }

    #[test]
    fn a_missing_key_makes_a_route_unusable_and_exec_runners_get_none() {
        let root = tempfile::tempdir().unwrap();
        let d = DaemonConfig::from_host(
            &layout(root.path()),
            &config(),
            Some(Supervisor::Systemd),
            PathBuf::from("/bin/con"),
        )
        .unwrap();
        assert!(!d.supervisor.unwrap().start_runs);
        let routes = d.gateway.unwrap().routes;
        assert_eq!(routes.keys().collect::<Vec<_>>(), ["concierge", "local"]);
        let why = routes["concierge"].unusable.as_deref().unwrap();
        assert!(
            why.starts_with("CON_AUTH_ANTHROPIC is not set in "),
            "{why}"
        );
        // A local server may need no key.
        assert_eq!(routes["local"].unusable, None);
    }

    #[test]
    fn loopback_servers_are_trusted_as_configured_but_never_an_agent() {
        let root = tempfile::tempdir().unwrap();
        let layout = layout(root.path());
        let with = |users: &str| {
            let toml = format!("[gateway]\nloopback_server_users = [{users}]\n{FLEET}");
            con_config::parse(&toml, Path::new("fleet.toml"), &BTreeMap::new()).unwrap()
        };
        let build = |config: &Config| {
            DaemonConfig::from_host(&layout, config, None, PathBuf::from("/bin/con"))
        };
        let routes = build(&with("\"ollama\"")).unwrap().gateway.unwrap().routes;
        assert_eq!(
            routes["local"].endpoint.loopback_trust.users(),
            ["ollama".to_owned()]
        );
        let err = build(&with("\"ollama\", \"t1-local\""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "fleet.toml: gateway.loopback_server_users: \"t1-local\" is agent local's user; an agent must never receive model calls (API keys, other sessions' conversations)"
        );
    }

    #[test]
    fn the_secrets_file_must_be_roots_alone_and_is_never_quoted() {
        let root = tempfile::tempdir().unwrap();
        let layout = layout(root.path());
        let env = layout.env_file();
        std::fs::create_dir_all(env.parent().unwrap()).unwrap();
        std::fs::write(&env, "CON_AUTH_ANTHROPIC=sk-secret\n").unwrap();
        let build = || DaemonConfig::from_host(&layout, &config(), None, PathBuf::from("/bin/con"));
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = build().unwrap_err().to_string();
        assert!(
            err.contains("must be owned by root with mode 0600"),
            "{err}"
        );

        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
        let routes = build().unwrap().gateway.unwrap().routes;
        assert_eq!(routes["concierge"].unusable, None);

        std::fs::write(&env, "CON_ANTHROPIC_API_KEY='sk-secret\n").unwrap();
        let err = build().unwrap_err().to_string();
        assert!(err.contains("cannot parse the entry at character"), "{err}");
        assert!(!err.contains("sk-secret"), "{err}");
    }
}
