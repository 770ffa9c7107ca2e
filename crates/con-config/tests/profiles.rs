//! The shipped profiles and the seed's documented config load and resolve as intended.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use con_config::{Config, Mode, Provider, Runner, Supervisor, Tier, load, parse};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn load_profile(name: &str) -> Config {
    let path = configs_dir().join(name).join("con.toml");
    load(&path, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"))
}

/// The facts about one agent these tests care about, in comparable form.
#[derive(Debug, PartialEq)]
struct Summary<'a> {
    name: &'a str,
    tier: Tier,
    roles: Vec<&'a str>,
    mode: Mode,
    on_calendar: Option<&'a str>,
    runner: Runner,
    provider: Option<Provider>,
    model: Option<&'a str>,
    api_key_env: Option<&'a str>,
}

fn summaries(config: &Config) -> Vec<Summary<'_>> {
    config
        .agents
        .iter()
        .map(|a| Summary {
            name: &a.name,
            tier: a.tier,
            roles: a.roles.iter().map(String::as_str).collect(),
            mode: a.mode,
            on_calendar: a.schedule.as_ref().map(|s| s.on_calendar.as_str()),
            runner: a.runner.clone(),
            provider: a.provider,
            model: a.model.as_deref(),
            api_key_env: a.api_key_env.as_deref(),
        })
        .collect()
}

const SONNET: &str = "anthropic/claude-sonnet-4.6";

#[test]
fn default_profile_resolves() {
    let config = load_profile("default");
    assert_eq!(config.system.name, "conspiracyos");
    let operator = |name, role| Summary {
        name,
        tier: Tier::Operator,
        roles: vec![role],
        mode: Mode::OnDemand,
        on_calendar: None,
        runner: Runner::Builtin,
        provider: Some(Provider::OpenRouter),
        model: Some(SONNET),
        api_key_env: Some("CON_OPENROUTER_API_KEY"),
    };
    assert_eq!(
        summaries(&config),
        vec![
            operator("concierge", "concierge"),
            operator("sysadmin", "sysadmin"),
            Summary {
                name: "strategist",
                tier: Tier::Officer,
                roles: vec!["strategist"],
                mode: Mode::Cron,
                on_calendar: Some("*-*-* 08:00:00 UTC"),
                runner: Runner::Builtin,
                provider: Some(Provider::OpenRouter),
                model: Some(SONNET),
                api_key_env: Some("CON_OPENROUTER_API_KEY"),
            },
        ]
    );

    let strategist = config.agent("strategist").unwrap();
    assert_eq!(strategist.schedule.as_ref().unwrap().cron, "0 8 * * *");
    assert!(
        strategist
            .instructions
            .as_deref()
            .unwrap()
            .contains("your response is the daily brief")
    );
    // The per-agent override in the profile.
    assert_eq!(config.agent("sysadmin").unwrap().max_iterations, 300);
    assert_eq!(config.agent("concierge").unwrap().max_iterations, 200);

    let hc = &config.contracts.system;
    assert_eq!(hc.healthcheck_interval, "60s");
    assert_eq!(hc.healthcheck_interval_secs, 60);
    assert!(config.network.outbound_filter);
    assert_eq!(config.network.allowed_ports, vec![443]);
    assert!(!config.dashboard.enabled);
    assert_eq!(config.dashboard.listen.to_string(), "127.0.0.1:8470");
    assert_eq!(config.infra.supervisor, Supervisor::Auto);
}

#[test]
fn default_profile_snapshot() {
    let mut config = load_profile("default");
    // The absolute checkout path differs between machines.
    config.source = PathBuf::from("configs/default/con.toml");
    insta::assert_json_snapshot!("default_profile", config);
}

#[test]
fn minimal_profile_resolves_from_legacy_keys() {
    let config = load_profile("minimal");
    assert_eq!(
        summaries(&config),
        vec![Summary {
            name: "concierge",
            tier: Tier::Operator,
            roles: vec!["concierge"],
            mode: Mode::OnDemand,
            on_calendar: None,
            runner: Runner::Builtin,
            provider: Some(Provider::OpenRouter),
            model: Some(SONNET),
            api_key_env: Some("CON_OPENROUTER_API_KEY"),
        }]
    );
    let concierge = &config.agents[0];
    assert_eq!(
        (
            concierge.max_sessions,
            concierge.max_iterations,
            concierge.max_session_min
        ),
        (1, 200, 30)
    );
    assert_eq!(concierge.daily_budget_usd, None);
    // Sections the file leaves out take their defaults.
    assert_eq!(config.contracts.system.healthcheck_interval_secs, 60);
    assert_eq!(config.contracts.system.disk_min_free_pct, 15);
    assert_eq!(config.contracts.system.mem_min_free_pct, 10);
    assert_eq!(config.contracts.system.max_load_per_cpu, 4.0);
    assert_eq!(config.contracts.system.log_max_mb, 1024);
    assert_eq!(config.contracts.system.log_reserve_mb, 64);
    assert_eq!(config.contracts.system.agent_max_event_kb, 3072);
    assert_eq!(config.contracts.system.agent_max_attachment_kb, 2048);
    assert_eq!(config.contracts.system.agent_max_mb_per_minute, 32);
    assert_eq!(config.contracts.system.agent_max_mb_per_hour, 256);
}

/// Verbatim from the "Configuration" section of the original (Go) project's
/// public README: its example config must load unchanged.
const SEED_README_CONFIG: &str = r#"[system]
name = "conspiracyos"

[defaults.operator]
cli   = "picoclaw"
model = "anthropic/claude-sonnet-4.6"

[defaults.worker]
cli   = "picoclaw"
model = "google/gemini-2.0-flash-001"

[[agents]]
name  = "concierge"
tier  = "operator"
roles = ["concierge"]
mode  = "on-demand"

[[agents]]
name  = "sysadmin"
tier  = "operator"
roles = ["sysadmin"]
mode  = "on-demand"
"#;

#[test]
fn seed_readme_config_loads_unchanged() {
    let config = parse(
        SEED_README_CONFIG,
        Path::new("configs/default/con.toml"),
        &BTreeMap::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.system.name, "conspiracyos");
    let s = summaries(&config);
    assert_eq!(s.len(), 2);
    for (agent, name) in s.iter().zip(["concierge", "sysadmin"]) {
        assert_eq!(agent.name, name);
        assert_eq!(agent.roles, vec![name]);
        assert_eq!(agent.tier, Tier::Operator);
        assert_eq!(agent.mode, Mode::OnDemand);
        assert_eq!(agent.runner, Runner::Builtin);
        assert_eq!(agent.provider, Some(Provider::OpenRouter));
        assert_eq!(agent.model, Some(SONNET));
    }
}

#[test]
fn seed_readme_worker_defaults_apply_to_workers() {
    let source = format!(
        "{SEED_README_CONFIG}\n[[agents]]\nname = \"scout\"\ntier = \"worker\"\ncli = \"picoclaw\"\n"
    );
    let config = parse(&source, Path::new("x.toml"), &BTreeMap::new()).unwrap();
    let scout = config.agent("scout").unwrap();
    assert_eq!(scout.model.as_deref(), Some("google/gemini-2.0-flash-001"));
    assert_eq!(scout.runner, Runner::Builtin);
}

#[test]
fn every_role_and_agent_in_the_profiles_has_instructions() {
    for profile in ["default", "minimal"] {
        let dir = configs_dir().join(profile);
        let config = load_profile(profile);
        assert!(
            dir.join("base/AGENTS.md").is_file(),
            "{profile}: base layer"
        );
        for agent in &config.agents {
            let agent_file = dir.join("agents").join(&agent.name).join("AGENTS.md");
            assert!(agent_file.is_file(), "{}", agent_file.display());
            let group_file = dir
                .join("groups")
                .join(agent.tier.group().base_name())
                .join("AGENTS.md");
            assert!(group_file.is_file(), "{}", group_file.display());
            for role in &agent.roles {
                let role_file = dir.join("roles").join(role).join("AGENTS.md");
                assert!(role_file.is_file(), "{}", role_file.display());
            }
        }
    }
    assert!(configs_dir().join("default/mission.md").is_file());
}

/// The Go original's own profiles (in the shared baseline next to this
/// repository, when it is there) load as that project meant them: its
/// `[dashboard] port` is the loopback address on that port.
#[test]
fn the_originals_profiles_load_unchanged() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(parent) = workspace
        .canonicalize()
        .ok()
        .and_then(|w| w.parent().map(Path::to_path_buf))
    else {
        return;
    };
    let dir = parent.join("shared/seed/agent-runner/configs");
    if !dir.is_dir() {
        eprintln!(
            "skipped: {} is not here (a clone without the baseline)",
            dir.display()
        );
        return;
    }
    let mut files = vec![dir.join("example.toml")];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("con.toml");
        if path.is_file() {
            files.push(path);
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for file in &files {
        let config = load(file, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        if file.ends_with("default/con.toml") {
            assert_eq!(config.dashboard.listen.to_string(), "127.0.0.1:8080");
            assert!(config.dashboard.enabled);
            assert_eq!(config.agents.len(), 3);
        }
    }
}
