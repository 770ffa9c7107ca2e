//! `policy::explain` is computed from the plan alone: no users, no root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use con_layout::Layout;
use con_provision::config_edit::ConfigLines;
use con_provision::policy::{self, ContractRef, ExplainInput, Exposure, Policy};
use con_provision::{PlanInput, Profile};
use con_test_support::workspace;

const WORKER: &str = "\n[[agents]]\nname = \"scribe\"\ntier = \"worker\"\n";

fn explain(extra: &str, agent: &str, contracts: &[ContractRef]) -> Policy {
    explain_edited(|text| text + extra, agent, contracts)
}

/// [`explain`] of the default profile's config as `edit` changes it.
fn explain_edited(
    edit: impl Fn(String) -> String,
    agent: &str,
    contracts: &[ContractRef],
) -> Policy {
    let dir = workspace().join("configs/default");
    let profile = Profile::read(&dir).unwrap();
    let text = edit(
        std::str::from_utf8(profile.get("con.toml").unwrap())
            .unwrap()
            .to_owned(),
    );
    let config = con_config::parse(&text, &dir.join("con.toml"), &BTreeMap::new()).unwrap();
    let layout = Layout::new(Path::new("/r"), "a-", "").unwrap();
    let input = PlanInput {
        config,
        profile,
        install_profile: false,
    };
    let plan = con_provision::plan(&input, &layout).unwrap();
    let lines = ConfigLines::parse(&text);
    policy::explain(
        &plan,
        &layout,
        &ExplainInput {
            config: &input.config,
            lines: &lines,
            profile_dir: Path::new("/r/etc/con"),
            contracts,
            resolvers: (&["127.0.0.53".parse().unwrap()], "/etc/resolv.conf"),
        },
        agent,
        &|name, text| {
            assert!(text.contains("[Service]"), "{name} is a service");
            Exposure::Score {
                score: "1.5".into(),
                label: "OK".into(),
            }
        },
    )
    .unwrap()
}

#[test]
fn a_worker_tasks_no_one_and_has_no_sudo() {
    let p = explain(WORKER, "scribe", &[]);
    assert_eq!(p.groups, ["agents", "workers"]);
    let inboxes: Vec<&str> = p.inboxes.iter().map(|i| i.agent.as_str()).collect();
    assert_eq!(inboxes, ["scribe"]);
    assert!(p.sudo.is_empty() && p.sudoers_file.is_none());
    // Nothing of another agent's, and nothing but its own tree, and the
    // shared policy and artifacts, which it reads but cannot write.
    for d in &p.dirs {
        let path = d.path.display().to_string();
        if path == "/r/srv/con/artifacts" || path == "/r/srv/con/policy" {
            assert_eq!(d.perm, "r-x", "{d:?}");
            continue;
        }
        assert!(
            path.contains("/agents/scribe") || path == "/r/home/a-scribe",
            "{d:?}"
        );
    }
    let text = p.render(Path::new("/r"), "con.toml");
    assert!(
        text.contains("contracts watching it") && text.contains("  none installed\n"),
        "{text}"
    );
    assert!(text.contains("exposure 1.5 OK"), "{text}");
}

#[test]
fn an_operator_tasks_every_other_agent_citing_its_tier_line() {
    let p = explain(WORKER, "concierge", &[]);
    let others: Vec<&str> = p.inboxes.iter().skip(1).map(|i| i.agent.as_str()).collect();
    assert_eq!(others, ["sysadmin", "strategist", "scribe"]);
    let tier_line = p.tier_source.line.unwrap();
    assert!(
        p.inboxes[1..]
            .iter()
            .all(|i| i.source.line == Some(tier_line))
    );
    assert_eq!(p.tier_source.key, "agents.concierge.tier");
}

#[test]
fn sudo_rules_come_with_their_template() {
    let p = explain("", "sysadmin", &[]);
    assert!(!p.sudo.is_empty());
    for rule in &p.sudo {
        assert!(
            rule.rule.starts_with("a-sysadmin ALL=(root) NOPASSWD: "),
            "{rule:?}"
        );
        assert_eq!(rule.template, Path::new("/r/etc/con/sudoers/sysadmin"));
        assert_eq!(rule.source.key, "agents.sysadmin.roles");
    }
}

#[test]
fn contracts_are_matched_by_scope() {
    let c = |id: &str, scope: Option<&str>| ContractRef {
        file: format!("/r/srv/con/contracts/{id}.yaml").into(),
        id: id.into(),
        scope: scope.map(str::to_owned),
        preventive: None,
    };
    let registered = |id: &str, applies_to: Option<&str>| ContractRef {
        preventive: Some(policy::Registered {
            description: format!("{id} cannot happen"),
            mechanism: Some("acl".into()),
            applies_to: applies_to.map(str::to_owned),
        }),
        ..c(id, Some("system"))
    };
    let contracts = [
        c("sys", Some("system")),
        c("mine", Some("agent:sysadmin")),
        c("theirs", Some("agent:concierge")),
        c("none", None),
        registered("prev-all", None),
        registered("prev-mine", Some("sysadmin")),
        registered("prev-theirs", Some("concierge")),
    ];
    let p = explain("", "sysadmin", &contracts);
    let ids: Vec<&str> = p.contracts.watching.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["sys", "mine"]);
    let ids: Vec<&str> = p
        .contracts
        .preventive
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, ["prev-all", "prev-mine"]);
    assert_eq!(p.contracts.installed, 7);
    let text = p.render(Path::new("/r"), "con.toml");
    assert!(
        text.contains("  prev-all  acl  for every agent: prev-all cannot happen\n")
            && text.contains("  prev-mine  acl  for agent sysadmin: prev-mine cannot happen\n")
            && !text.contains("prev-theirs"),
        "{text}"
    );
}

#[test]
fn contract_files_are_scanned_as_text() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "id: 'A-1'\nscope: system # all\nchecks:\n  - id: nested\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.yml"), "description: no id\n").unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "id: P-1\ndescription: no way out\ntype: preventive\nmechanism: nftables\nagent: scout\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("c.txt"), "id: skipped\n").unwrap();
    let found = policy::scan_contracts(dir.path()).unwrap();
    let got: Vec<(&str, Option<&str>)> = found
        .iter()
        .map(|c| (c.id.as_str(), c.scope.as_deref()))
        .collect();
    assert_eq!(
        got,
        [("A-1", Some("system")), ("b.yml", None), ("P-1", None)]
    );
    assert_eq!(found[0].preventive, None);
    assert_eq!(
        found[2].preventive,
        Some(policy::Registered {
            description: "no way out".into(),
            mechanism: Some("nftables".into()),
            applies_to: Some("scout".into()),
        })
    );
    assert!(
        policy::scan_contracts(&dir.path().join("missing"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn settings_not_written_are_cited_as_defaults() {
    let lines = ConfigLines::parse("[system]\nname = \"x\"\n\n[network]\nallow_dns = false\n");
    let cite = |key: &str| {
        policy::Source {
            key: key.into(),
            line: lines.line(key),
        }
        .cite("con.toml")
    };
    assert_eq!(cite("network.allow_dns"), "con.toml:5");
    assert_eq!(
        cite("network.allowed_ports"),
        "con.toml: not set (network.allowed_ports: default)"
    );
}

#[test]
fn runs_cannot_listen_and_local_model_servers_are_roots_or_named() {
    let p = explain(WORKER, "scribe", &[]);
    assert!(p.listening.denied, "{:?}", p.listening);
    assert!(p.listening.allowed.is_empty());
    assert_eq!(
        p.listening.unit.as_deref(),
        Some("con-agent@scribe.service")
    );
    assert!(p.loopback_servers.users.is_empty());
    let line = p.loopback_servers.source.line.unwrap();
    let text = p.render(Path::new("/r"), "con.toml");
    assert!(
        text.contains("\nlistening on IP ports: none (SocketBindDeny=any in con-agent@scribe.service, when systemd starts its runs)\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nmodel calls over plain HTTP to this host go only to listeners owned by: root (con.toml:{line})\n"
        )),
        "{text}"
    );

    let p = explain_edited(
        |t| {
            t.replace(
                "loopback_server_users = []",
                "loopback_server_users = [\"ollama\"]",
            ) + WORKER
        },
        "scribe",
        &[],
    );
    assert_eq!(p.loopback_servers.users, ["ollama"]);
    let text = p.render(Path::new("/r"), "con.toml");
    assert!(
        text.contains("go only to listeners owned by: root, ollama (con.toml:"),
        "{text}"
    );
}
