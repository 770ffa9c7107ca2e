//! Resolution order: agent > base.<tier> > base > built-in defaults, with each level's
//! environment override just above that level's file value.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use con_config::{Config, Provider, Runner, parse};

/// Where a value can be set.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Base,
    BaseTier,
    DefaultsTier,
    Agent,
    EnvBase,
    EnvTier,
    EnvAgent,
}
use Level::*;

impl Level {
    /// A distinct model and max_sessions value per level, so the winner is visible.
    fn model(self) -> String {
        format!("model-from-{self:?}")
    }

    fn sessions(self) -> u32 {
        match self {
            Base => 2,
            BaseTier => 3,
            DefaultsTier => 4,
            Agent => 5,
            EnvBase => 6,
            EnvTier => 7,
            EnvAgent => 8,
        }
    }
}

/// A config with a worker `scout` and an operator `clerk`, where `levels` set both
/// `model` and `max_sessions` (tier-level settings target the worker tier).
fn build(levels: &[Level]) -> Config {
    let mut toml = String::new();
    let mut env = BTreeMap::new();
    let table = |toml: &mut String, header: &str, l: Level| {
        let _ = write!(
            toml,
            "{header}\nmodel = \"{}\"\nmax_sessions = {}\n\n",
            l.model(),
            l.sessions()
        );
    };
    let mut env_set = |prefix: &str, l: Level| {
        env.insert(format!("{prefix}_MODEL"), l.model());
        env.insert(format!("{prefix}_MAX_SESSIONS"), l.sessions().to_string());
    };
    for &l in levels {
        match l {
            Base => table(&mut toml, "[base]", l),
            BaseTier => table(&mut toml, "[base.worker]", l),
            DefaultsTier => table(&mut toml, "[defaults.worker]", l),
            Agent => {}
            EnvBase => env_set("CON_BASE", l),
            EnvTier => env_set("CON_BASE_WORKER", l),
            EnvAgent => env_set("CON_AGENT_SCOUT", l),
        }
    }
    toml.push_str("[[agents]]\nname = \"scout\"\ntier = \"worker\"\n");
    if levels.contains(&Agent) {
        let _ = write!(
            toml,
            "model = \"{}\"\nmax_sessions = {}\n",
            Agent.model(),
            Agent.sessions()
        );
    }
    toml.push_str("\n[[agents]]\nname = \"clerk\"\ntier = \"operator\"\n");
    // Unrelated variables must not matter.
    env.insert("PATH".into(), "/usr/bin".into());
    env.insert("CON_ROOT".into(), "/tmp/x".into());
    parse(&toml, Path::new("p.toml"), &env).unwrap_or_else(|e| panic!("{levels:?}: {e}\n{toml}"))
}

#[test]
fn precedence_table() {
    // (levels that set the fields, the level that must win; None = built-in default)
    let cases: &[(&[Level], Option<Level>)] = &[
        (&[], None),
        (&[Base], Some(Base)),
        (&[Base, BaseTier], Some(BaseTier)),
        (&[Base, DefaultsTier], Some(DefaultsTier)),
        (&[BaseTier, DefaultsTier], Some(BaseTier)),
        (&[Base, BaseTier, Agent], Some(Agent)),
        (&[DefaultsTier, Agent], Some(Agent)),
        (&[EnvBase], Some(EnvBase)),
        (&[Base, EnvBase], Some(EnvBase)),
        // Env sits at the level it names: a file tier value still beats env base.
        (&[EnvBase, BaseTier], Some(BaseTier)),
        (&[EnvBase, DefaultsTier], Some(DefaultsTier)),
        (&[BaseTier, EnvTier], Some(EnvTier)),
        (&[DefaultsTier, BaseTier, EnvTier], Some(EnvTier)),
        (&[EnvBase, EnvTier], Some(EnvTier)),
        (&[Agent, EnvTier], Some(Agent)),
        (&[Agent, EnvAgent], Some(EnvAgent)),
        (&[EnvAgent], Some(EnvAgent)),
        (
            &[
                Base,
                BaseTier,
                DefaultsTier,
                Agent,
                EnvBase,
                EnvTier,
                EnvAgent,
            ],
            Some(EnvAgent),
        ),
        (
            &[Base, BaseTier, DefaultsTier, EnvBase, EnvTier],
            Some(EnvTier),
        ),
    ];
    for &(levels, winner) in cases {
        let config = build(levels);
        let scout = config.agent("scout").unwrap();
        let (model, sessions) = match winner {
            Some(l) => (l.model(), l.sessions()),
            None => ("google/gemini-2.0-flash-001".to_owned(), 1),
        };
        assert_eq!(scout.model.as_deref(), Some(model.as_str()), "{levels:?}");
        assert_eq!(scout.max_sessions, sessions, "{levels:?}");

        // Worker-tier settings must not leak to the operator.
        let clerk = config.agent("clerk").unwrap();
        let clerk_winner = [EnvBase, Base].into_iter().find(|l| levels.contains(l));
        let (model, sessions) = match clerk_winner {
            Some(l) => (l.model(), l.sessions()),
            None => ("anthropic/claude-sonnet-4.6".to_owned(), 1),
        };
        assert_eq!(clerk.model.as_deref(), Some(model.as_str()), "{levels:?}");
        assert_eq!(clerk.max_sessions, sessions, "{levels:?}");
    }
}

fn resolve(toml: &str, env: &[(&str, &str)]) -> Config {
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    parse(toml, Path::new("p.toml"), &env).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn fields_resolve_independently() {
    let config = resolve(
        r#"
        [base]
        max_iterations = 50
        daily_budget_usd = 2.5
        [base.worker]
        model = "w"
        [defaults.worker]
        model = "legacy"
        max_sessions = 3
        [contracts.system]
        max_session_min = 45
        [pricing.w]
        input_usd_per_mtok = 1.0
        output_usd_per_mtok = 2.0
        [[agents]]
        name = "scout"
        tier = "worker"
        max_iterations = 60
        "#,
        &[],
    );
    let a = &config.agents[0];
    assert_eq!(a.model.as_deref(), Some("w"));
    assert_eq!(
        a.max_sessions, 3,
        "defaults.worker fills what base.worker leaves out"
    );
    assert_eq!(a.max_iterations, 60);
    assert_eq!(a.daily_budget_usd, Some(2.5));
    assert_eq!(
        a.max_session_min, 45,
        "defaults to contracts.system.max_session_min"
    );
}

#[test]
fn provider_and_key_follow_the_runner() {
    let config = resolve(
        r#"
        [[agents]]
        name = "a"
        tier = "worker"
        runner = "claude"
        [[agents]]
        name = "b"
        tier = "worker"
        runner = "codex"
        [[agents]]
        name = "c"
        tier = "worker"
        runner = "exec:/usr/local/bin/my-agent"
        [[agents]]
        name = "d"
        tier = "worker"
        provider = "openai-compatible"
        base_url = "http://127.0.0.1:8080/v1"
        model = "llama"
        [[agents]]
        name = "e"
        tier = "officer"
        provider = "anthropic"
        model = "claude-sonnet-4-6"
        [[agents]]
        name = "f"
        tier = "worker"
        runner = "opencode"
        "#,
        &[],
    );
    let got: Vec<_> = config
        .agents
        .iter()
        .map(|a| {
            (
                a.runner.to_string(),
                a.provider,
                a.api_key_env.as_deref(),
                a.model.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "claude".to_owned(),
                Some(Provider::Anthropic),
                Some("CON_AUTH_ANTHROPIC"),
                None
            ),
            (
                "codex".to_owned(),
                Some(Provider::OpenAi),
                Some("CON_AUTH_OPENAI"),
                None
            ),
            ("exec:/usr/local/bin/my-agent".to_owned(), None, None, None),
            (
                "builtin".to_owned(),
                Some(Provider::OpenAiCompatible),
                None,
                Some("llama")
            ),
            (
                "builtin".to_owned(),
                Some(Provider::Anthropic),
                Some("CON_AUTH_ANTHROPIC"),
                Some("claude-sonnet-4-6")
            ),
            (
                "opencode".to_owned(),
                Some(Provider::OpenRouter),
                Some("CON_OPENROUTER_API_KEY"),
                Some("google/gemini-2.0-flash-001")
            ),
        ]
    );
}

#[test]
fn base_provider_is_ignored_by_exec_runners_and_env_runner_applies() {
    let config = resolve(
        r#"
        [base]
        provider = "anthropic"
        model = "claude-sonnet-4-6"
        [[agents]]
        name = "night-owl"
        tier = "worker"
        "#,
        &[("CON_AGENT_NIGHT_OWL_RUNNER", "exec:cat")],
    );
    let a = &config.agents[0];
    assert_eq!(a.runner, Runner::Exec("cat".into()));
    assert_eq!(a.provider, None);
    assert_eq!(a.api_key_env, None);
}

#[test]
fn system_name_env_override() {
    let config = resolve(
        "[system]\nname = \"file-name\"\n",
        &[("CON_SYSTEM_NAME", "from-env")],
    );
    assert_eq!(config.system.name, "from-env");
    assert_eq!(resolve("", &[]).system.name, "conspiracyos");
    assert!(resolve("", &[]).agents.is_empty());
}

/// Officers always see the fleet, operators only where `[fleet_view]` says
/// so, workers never.
#[test]
fn fleet_view_is_officers_and_operators_where_configured() {
    let agents = "[[agents]]\nname = \"boss\"\ntier = \"officer\"\n\n[[agents]]\nname = \"desk\"\ntier = \"operator\"\n\n[[agents]]\nname = \"hand\"\ntier = \"worker\"\n";
    let default = parse(agents, Path::new("con.toml"), &BTreeMap::new()).unwrap();
    assert!(!default.fleet_view.operators);
    assert_eq!(default.fleet_viewers(), vec!["boss".to_owned()]);
    let with_operators = format!("[fleet_view]\noperators = true\n\n{agents}");
    let config = parse(&with_operators, Path::new("con.toml"), &BTreeMap::new()).unwrap();
    assert_eq!(
        config.fleet_viewers(),
        vec!["boss".to_owned(), "desk".to_owned()]
    );
    let unknown = "[fleet_view]\nworkers = true\n";
    assert!(parse(unknown, Path::new("con.toml"), &BTreeMap::new()).is_err());
}
