//! Every rejected config gives exactly one expected line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::collections::BTreeMap;
use std::path::Path;

use con_config::{ErrorKind, parse};

const FILE: &str = "configs/x.toml";

#[track_caller]
fn check(input: &str, expected: &str) {
    check_env(input, &[], expected);
}

#[track_caller]
fn check_env(input: &str, env: &[(&str, &str)], expected: &str) {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    match parse(input, Path::new(FILE), &env) {
        Ok(config) => panic!("expected error {expected:?}, got Ok({config:#?})"),
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "error is not one line: {line:?}");
            assert_eq!(line, expected);
        }
    }
}

/// One agent; `extra` is appended inside its table.
fn agent(extra: &str) -> String {
    format!("[[agents]]\nname = \"scout\"\ntier = \"worker\"\n{extra}\n")
}

fn named(name: &str) -> String {
    format!("[[agents]]\nname = {name:?}\ntier = \"worker\"\n")
}

const NAME_RULE: &str = "name: must match ^[a-z][a-z0-9-]{0,30}$";

#[test]
fn bad_agent_names() {
    check(
        &named("../x"),
        &format!(r#"configs/x.toml: agents[0] "../x": {NAME_RULE}"#),
    );
    check(
        &named("a;b"),
        &format!(r#"configs/x.toml: agents[0] "a;b": {NAME_RULE}"#),
    );
    check(
        &named("Upper"),
        &format!(r#"configs/x.toml: agents[0] "Upper": {NAME_RULE}"#),
    );
    let long = format!("a{}", "b".repeat(31));
    check(
        &named(&long),
        &format!(r#"configs/x.toml: agents[0] "{long}": {NAME_RULE}"#),
    );
    check(
        &named(""),
        &format!(r#"configs/x.toml: agents[0] "": {NAME_RULE}"#),
    );
    check(
        &named("a\nb"),
        &format!(r#"configs/x.toml: agents[0] "a\nb": {NAME_RULE}"#),
    );
    check(
        "[[agents]]\ntier = \"worker\"\n",
        "configs/x.toml: agents[0]: name: required",
    );
    check(
        &named("outer"),
        r#"configs/x.toml: agents[0] "outer": name: "outer" is reserved (reserved: outer, processed, outbox, failed)"#,
    );
    // Reported at the offending entry, after the good ones.
    check(
        &format!("{}{}{}", named("one"), named("two"), named("Bad_Name")),
        &format!(r#"configs/x.toml: agents[2] "Bad_Name": {NAME_RULE}"#),
    );
}

#[test]
fn duplicate_names() {
    check(
        &format!("{}{}{}", named("scout"), named("other"), named("scout")),
        r#"configs/x.toml: agents[2] "scout": name: duplicate of agents[0]"#,
    );
}

#[test]
fn bad_tiers_and_modes() {
    check(
        "[[agents]]\nname = \"scout\"\ntier = \"boss\"\n",
        r#"configs/x.toml: agents[0] "scout": tier: unknown tier "boss" (expected officer, operator or worker)"#,
    );
    check(
        "[[agents]]\nname = \"scout\"\n",
        r#"configs/x.toml: agents[0] "scout": tier: required (officer, operator or worker)"#,
    );
    check(
        &agent(r#"mode = "daily""#),
        r#"configs/x.toml: agents[0] "scout": mode: unknown mode "daily" (expected on-demand, continuous or cron)"#,
    );
}

#[test]
fn bad_runners_and_providers() {
    check(
        &agent(r#"runner = "gpt""#),
        r#"configs/x.toml: agents[0] "scout": runner: unknown runner "gpt" (expected picoclaw, builtin, claude, codex, opencode or exec:<command>)"#,
    );
    check(
        &agent(r#"cli = "exec:""#),
        r#"configs/x.toml: agents[0] "scout": runner: "exec:": an exec runner needs a command after "exec:""#,
    );
    check(
        &agent(r#"runner = "exec:rm -rf""#),
        r#"configs/x.toml: agents[0] "scout": runner: "exec:rm -rf": the exec command must not contain whitespace or control characters"#,
    );
    check(
        &agent(r#"provider = "azure""#),
        r#"configs/x.toml: agents[0] "scout": provider: unknown provider "azure" (expected openrouter, openai, anthropic or openai-compatible)"#,
    );
    check(
        &agent("runner = \"claude\"\nprovider = \"openrouter\""),
        r#"configs/x.toml: agents[0] "scout": provider: openrouter cannot be used with runner claude (it supports anthropic)"#,
    );
    check(
        &agent("runner = \"codex\"\nprovider = \"anthropic\"\nmodel = \"m\""),
        r#"configs/x.toml: agents[0] "scout": provider: anthropic cannot be used with runner codex (it supports openai, openai-compatible or openrouter)"#,
    );
    check(
        &agent("runner = \"exec:cat\"\nprovider = \"openrouter\""),
        r#"configs/x.toml: agents[0] "scout": provider: has no effect with an exec runner ("exec:cat"); remove it"#,
    );
    // The exec runner may come from a lower level; the provider on the agent is still pointless.
    check(
        &format!(
            "[base]\nrunner = \"exec:cat\"\n{}",
            agent(r#"provider = "openai""#)
        ),
        r#"configs/x.toml: agents[0] "scout": provider: has no effect with an exec runner ("exec:cat"); remove it"#,
    );
    check(
        &agent("provider = \"openai-compatible\"\nmodel = \"m\""),
        r#"configs/x.toml: agents[0] "scout": base_url: required when provider is openai-compatible"#,
    );
    check(
        &agent(r#"provider = "anthropic""#),
        r#"configs/x.toml: agents[0] "scout": model: required with provider anthropic (the built-in default models are OpenRouter ids)"#,
    );
    check(
        &agent(r#"base_url = "ftp://models.example""#),
        r#"configs/x.toml: agents[0] "scout": base_url: "ftp://models.example" must start with http:// or https://"#,
    );
    check(
        &agent(r#"api_key_env = "MY-KEY""#),
        r#"configs/x.toml: agents[0] "scout": api_key_env: "MY-KEY" is not a valid environment variable name (expected [A-Za-z_][A-Za-z0-9_]*)"#,
    );
    check(
        &agent("cli = \"picoclaw\"\nrunner = \"builtin\""),
        "configs/x.toml:1:1: duplicate field `runner`",
    );
}

#[test]
fn bad_limits() {
    check(
        &agent("max_sessions = 0"),
        r#"configs/x.toml: agents[0] "scout": max_sessions: must be between 1 and 64, got 0"#,
    );
    check(
        &agent("max_iterations = 10001"),
        r#"configs/x.toml: agents[0] "scout": max_iterations: must be between 1 and 10000, got 10001"#,
    );
    check(
        &agent("daily_budget_usd = 0"),
        r#"configs/x.toml: agents[0] "scout": daily_budget_usd: must be a positive amount of USD, got 0 (omit it for no limit)"#,
    );
    check(
        &agent(r#"max_sessions = "2""#),
        r#"configs/x.toml:4:16: invalid type: string "2", expected i64"#,
    );
}

#[test]
fn bad_role_group_scope_names() {
    check(
        &agent(r#"roles = ["sysadmin", "../etc"]"#),
        r#"configs/x.toml: agents[0] "scout": roles: "../etc": must match ^[a-z][a-z0-9-]{0,30}$"#,
    );
    check(
        &agent(r#"roles = ["a", "a"]"#),
        r#"configs/x.toml: agents[0] "scout": roles: "a" is listed twice"#,
    );
    check(
        &agent(r#"groups = ["sudo"]"#),
        r#"configs/x.toml: agents[0] "scout": groups: "sudo" is a privileged system group"#,
    );
    check(
        &agent(r#"groups = ["officers"]"#),
        r#"configs/x.toml: agents[0] "scout": groups: "officers" is a tier group; set `tier` instead"#,
    );
    check(
        &agent(r#"groups = ["trusted"]"#),
        r#"configs/x.toml: agents[0] "scout": groups: "trusted" is con's provenance group: tasks its members write count as verified"#,
    );
    check(
        &agent(r#"scopes = ["Shared"]"#),
        r#"configs/x.toml: agents[0] "scout": scopes: "Shared": must match ^[a-z][a-z0-9-]{0,30}$"#,
    );
}

#[test]
fn bad_cron() {
    check(
        &agent(r#"mode = "cron""#),
        r#"configs/x.toml: agents[0] "scout": cron: required when mode = "cron""#,
    );
    check(
        &agent(r#"cron = "0 8 * * *""#),
        r#"configs/x.toml: agents[0] "scout": cron: only allowed with mode = "cron" (mode is "on-demand")"#,
    );
    check(
        &agent("mode = \"continuous\"\ncron = \"0 8 * * *\""),
        r#"configs/x.toml: agents[0] "scout": cron: only allowed with mode = "cron" (mode is "continuous")"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"0 25 * * *\""),
        r#"configs/x.toml: agents[0] "scout": cron: "0 25 * * *": hour 25 out of range 0-23"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"60 * * * *\""),
        r#"configs/x.toml: agents[0] "scout": cron: "60 * * * *": minute 60 out of range 0-59"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"0 0 0 * *\""),
        r#"configs/x.toml: agents[0] "scout": cron: "0 0 0 * *": day-of-month 0 out of range 1-31"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"0 0 * 13 *\""),
        r#"configs/x.toml: agents[0] "scout": cron: "0 0 * 13 *": month 13 out of range 1-12"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"0 0 * * 8\""),
        r#"configs/x.toml: agents[0] "scout": cron: "0 0 * * 8": day-of-week 8 out of range 0-7"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"0 8 * *\""),
        r#"configs/x.toml: agents[0] "scout": cron: "0 8 * *": expected 5 fields (minute hour day-of-month month day-of-week) or an @alias, found 4"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"0 8 1 * mon\""),
        r#"configs/x.toml: agents[0] "scout": cron: "0 8 1 * mon": day-of-month and day-of-week are both restricted; cron runs when either matches but systemd only when both do, so set one of them to *"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"*/0 * * * *\""),
        r#"configs/x.toml: agents[0] "scout": cron: "*/0 * * * *": minute: step in "*/0" must be at least 1"#,
    );
    check(
        &agent("mode = \"cron\"\ncron = \"@reboot\""),
        r#"configs/x.toml: agents[0] "scout": cron: "@reboot": unknown alias "@reboot" (expected @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually)"#,
    );
}

#[test]
fn bad_log_limits_and_agent_quotas() {
    check(
        "[contracts.system]\nlog_max_mb = 0\n",
        "configs/x.toml: contracts.system.log_max_mb: must be greater than 0, got 0",
    );
    check(
        "[contracts.system]\nlog_max_mb = 8\nlog_reserve_mb = 8\n",
        "configs/x.toml: contracts.system.log_reserve_mb: must be between 0 and 7 (less than log_max_mb), got 8",
    );
    check(
        "[contracts.system]\nlog_reserve_mb = -1\n",
        "configs/x.toml: contracts.system.log_reserve_mb: must be between 0 and 1023 (less than log_max_mb), got -1",
    );
    check(
        "[infra]\nclient_idle_timeout = \"0s\"\n",
        "configs/x.toml: infra.client_idle_timeout: \"0s\": must be greater than zero",
    );
    check(
        "[contracts.system]\nlog_min_free_mb = -1\n",
        "configs/x.toml: contracts.system.log_min_free_mb: must be between 0 and 1048575, got -1",
    );
    check(
        "[contracts.system]\nagent_max_event_kb = 0\n",
        "configs/x.toml: contracts.system.agent_max_event_kb: must be between 1 and 4096, got 0",
    );
    check(
        "[contracts.system]\nagent_max_event_kb = 8192\n",
        "configs/x.toml: contracts.system.agent_max_event_kb: must be between 1 and 4096, got 8192",
    );
    check(
        "[contracts.system]\nagent_max_event_kb = 512\nagent_max_attachment_kb = 1024\n",
        "configs/x.toml: contracts.system.agent_max_attachment_kb: must be between 1 and 512, got 1024",
    );
    check(
        "[contracts.system]\nagent_max_mb_per_minute = 2\n",
        "configs/x.toml: contracts.system.agent_max_mb_per_minute: must be at least agent_max_event_kb in MiB (3), got 2",
    );
    check(
        "[contracts.system]\nagent_max_mb_per_minute = 64\nagent_max_mb_per_hour = 63\n",
        "configs/x.toml: contracts.system.agent_max_mb_per_hour: must be at least agent_max_mb_per_minute (64), got 63",
    );
    check(
        "[contracts.system]\nagent_max_mb_per_hour = \"lots\"\n",
        "configs/x.toml:2:25: invalid type: string \"lots\", expected i64",
    );
}

#[test]
fn bad_sections() {
    check(
        "[contracts.system]\nhealthcheck_interval = \"0s\"\n",
        r#"configs/x.toml: contracts.system.healthcheck_interval: "0s": must be greater than zero"#,
    );
    check(
        "[contracts.system]\nhealthcheck_interval = \"soon\"\n",
        r#"configs/x.toml: contracts.system.healthcheck_interval: "soon": expected a duration like 60s, 5m or 1h"#,
    );
    check(
        "[contracts.system]\ndisk_min_free_pct = 101\n",
        "configs/x.toml: contracts.system.disk_min_free_pct: must be between 0 and 100, got 101",
    );
    check(
        "[contracts.system]\nmax_load_per_cpu = 0.0\n",
        "configs/x.toml: contracts.system.max_load_per_cpu: must be greater than 0, got 0",
    );
    check(
        "[dashboard]\nlisten = \"localhost:8470\"\n",
        r#"configs/x.toml: dashboard.listen: "localhost:8470" is not an IP:port socket address (e.g. 127.0.0.1:8470)"#,
    );
    check(
        "[inbox]\nmax_task_kb = 0\n",
        "configs/x.toml: inbox.max_task_kb: must be between 1 and 65536 (KiB), got 0",
    );
    check(
        "[network]\ndns_servers = [\"resolver.lan\"]\n",
        r#"configs/x.toml: network.dns_servers: "resolver.lan" is not an IP address"#,
    );
    check(
        "[inbox]\nmax_attempts = 0\n",
        "configs/x.toml: inbox.max_attempts: must be between 1 and 100, got 0",
    );
    check(
        "[inbox]\nmax_task_kb = 100000\n",
        "configs/x.toml: inbox.max_task_kb: must be between 1 and 65536 (KiB), got 100000",
    );
    check(
        "[dashboard]\nport = 70000\n",
        "configs/x.toml: dashboard.port: 70000 is not a port (1 to 65535)",
    );
    check(
        "[dashboard]\nport = 8080\nlisten = \"127.0.0.1:8470\"\n",
        "configs/x.toml: dashboard.port: set either listen or port, not both",
    );
    check(
        "[infra]\nsupervisor = \"runit\"\n",
        r#"configs/x.toml: infra.supervisor: unknown supervisor "runit" (expected auto, systemd or daemon)"#,
    );
    check(
        "[network]\nallowed_ports = [443, 0]\n",
        "configs/x.toml: network.allowed_ports: 0 is not a valid port",
    );
    check(
        "[system]\nname = \"my conspiracy\"\n",
        r#"configs/x.toml: system.name: "my conspiracy" must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"#,
    );
    check(
        "[base]\nrunner = \"gpt\"\n",
        r#"configs/x.toml: base.runner: unknown runner "gpt" (expected picoclaw, builtin, claude, codex, opencode or exec:<command>)"#,
    );
    check(
        "[base.worker]\nmax_sessions = 100\n",
        "configs/x.toml: base.worker.max_sessions: must be between 1 and 64, got 100",
    );
    check(
        "[defaults.operator]\ncli = \"claud\"\n",
        r#"configs/x.toml: defaults.operator.runner: unknown runner "claud" (expected picoclaw, builtin, claude, codex, opencode or exec:<command>)"#,
    );
}

#[test]
fn toml_errors_carry_line_and_column() {
    check(
        &agent(r#"modle = "x""#),
        "configs/x.toml:4:1: unknown field `modle`, expected one of `name`, `tier`, `roles`, `groups`, `scopes`, `mode`, `cron`, `cli`, `runner`, `provider`, `model`, `api_key_env`, `base_url`, `max_sessions`, `max_iterations`, `max_session_min`, `daily_budget_usd`, `instructions`",
    );
    check(
        "[system]\nname = \"x\"\n\n[base.boss]\nmodel = \"m\"\n",
        "configs/x.toml:4:7: unknown field `boss`, expected one of `cli`, `runner`, `provider`, `model`, `api_key_env`, `base_url`, `max_sessions`, `max_iterations`, `max_session_min`, `daily_budget_usd`, `officer`, `operator`, `worker`",
    );
    check(
        "[system]\nname = \"x\"\n[[agents]\n",
        "configs/x.toml:3:10: unclosed array table, expected `]`",
    );
    check(
        "[network]\noutbound_filter = \"strict\"\n",
        r#"configs/x.toml:2:19: invalid type: string "strict", expected a boolean"#,
    );
    check(
        "[network]\nallowed_ports = [70000]\n",
        "configs/x.toml:2:18: invalid value: integer `70000`, expected u16",
    );
}

#[test]
fn bad_env_overrides() {
    let base = agent("");
    check_env(
        &base,
        &[("CON_AGENT_SCOUT_MAX_SESSIONS", "x")],
        r#"env CON_AGENT_SCOUT_MAX_SESSIONS: "x" is not a number"#,
    );
    check_env(
        &base,
        &[("CON_AGENT_GHOST_MODEL", "m")],
        r#"env CON_AGENT_GHOST_MODEL: no agent named "ghost" in configs/x.toml"#,
    );
    check_env(
        &base,
        &[("CON_BASE_RUNNER", "gpt")],
        r#"env CON_BASE_RUNNER: unknown runner "gpt" (expected picoclaw, builtin, claude, codex, opencode or exec:<command>)"#,
    );
    check_env(
        &base,
        &[("CON_BASE_WORKER_MAX_ITERATIONS", "0")],
        "env CON_BASE_WORKER_MAX_ITERATIONS: must be between 1 and 10000, got 0",
    );
    check_env(
        &base,
        &[("CON_BASE_MODLE", "m")],
        "env CON_BASE_MODLE: not a known override (expected CON_BASE_<FIELD> or CON_BASE_<TIER>_<FIELD>, FIELD one of RUNNER, PROVIDER, MODEL, API_KEY_ENV, BASE_URL, MAX_SESSIONS, MAX_ITERATIONS, MAX_SESSION_MIN, DAILY_BUDGET_USD)",
    );
    check_env(
        &base,
        &[("CON_SYSTEM_NAME", "a/b")],
        r#"env CON_SYSTEM_NAME: "a/b" must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"#,
    );
    // A valid env value that breaks a cross-field rule is reported at the agent.
    check_env(
        &base,
        &[
            ("CON_AGENT_SCOUT_RUNNER", "claude"),
            ("CON_BASE_PROVIDER", "openrouter"),
        ],
        r#"configs/x.toml: agents[0] "scout": provider: openrouter cannot be used with runner claude (it supports anthropic)"#,
    );
}

#[test]
fn first_error_in_file_order_wins() {
    // Two problems: the section comes before the agents in the file and is reported.
    let input = format!("[dashboard]\nlisten = \"nope\"\n{}", named("Bad"));
    check(
        &input,
        r#"configs/x.toml: dashboard.listen: "nope" is not an IP:port socket address (e.g. 127.0.0.1:8470)"#,
    );
}

#[test]
fn error_kinds_and_parts_are_exposed() {
    let env = BTreeMap::new();
    let e = parse(&named("Bad"), Path::new(FILE), &env).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert_eq!(e.agent_index(), Some(0));
    assert_eq!(e.agent_name(), Some("Bad"));
    assert_eq!(e.field(), Some("name"));
    assert_eq!(e.path(), Some(Path::new(FILE)));

    let e = parse("x = ", Path::new(FILE), &env).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Syntax);
    assert!(e.position().is_some());

    let e = con_config::load(Path::new("/nonexistent/con.toml"), &env).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(
        e.to_string(),
        "/nonexistent/con.toml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn bad_pricing_and_budgets() {
    check(
        "[pricing.m]\ninput_usd_per_mtok = 1.0\n",
        r#"configs/x.toml: pricing."m".output_usd_per_mtok: is required"#,
    );
    check(
        "[pricing.m]\ninput_usd_per_mtok = -1.0\noutput_usd_per_mtok = 1.0\n",
        r#"configs/x.toml: pricing."m".input_usd_per_mtok: -1 must be a number of USD between 0 and 1000000"#,
    );
    check(
        "[budgets]\nworker = nan\n",
        "configs/x.toml: budgets.worker: NaN must be a number of USD between 0 and 1000000",
    );
    // A budget nobody can count against is refused, whether the agent's own…
    check(
        &agent("model = \"m\"\ndaily_budget_usd = 1.0"),
        r#"configs/x.toml: agents[0] "scout": model: "m" has a daily budget but no [pricing."m"] entry, so its spend could not be counted"#,
    );
    // …or its tier's.
    check(
        &format!("[budgets]\nworker = 3.0\n{}", agent("model = \"m\"")),
        r#"configs/x.toml: agents[0] "scout": model: "m" has a daily budget but no [pricing."m"] entry, so its spend could not be counted"#,
    );
}

#[test]
fn bad_gateway_users() {
    check(
        "[gateway]\nloopback_server_users = [\"Ollama\"]\n",
        r#"configs/x.toml: gateway.loopback_server_users: "Ollama" is not a user name (^[a-z_][a-z0-9_-]*[$]?$, at most 32 characters)"#,
    );
    check(
        "[gateway]\nloopback_server_users = [\"1001\"]\n",
        r#"configs/x.toml: gateway.loopback_server_users: "1001" is not a user name (^[a-z_][a-z0-9_-]*[$]?$, at most 32 characters)"#,
    );
    check(
        "[gateway]\nloopback_server_users = [\"ollama\", \"ollama\"]\n",
        r#"configs/x.toml: gateway.loopback_server_users: "ollama" is listed twice"#,
    );
    check(
        "[gateway]\nloopback_server_users = \"ollama\"\n",
        "configs/x.toml:2:25: invalid type: string \"ollama\", expected a sequence",
    );
    let ok = |toml: &str| {
        parse(toml, Path::new(FILE), &BTreeMap::new())
            .unwrap()
            .gateway
            .loopback_server_users
    };
    assert_eq!(ok(""), Vec::<String>::new(), "default: root alone");
    assert_eq!(
        ok("[gateway]\nloopback_server_users = [\"ollama\", \"_llama-cpp\", \"svc$\"]\n"),
        ["ollama", "_llama-cpp", "svc$"]
    );
}
