//! `con healthcheck`: the built-in checks of con's own health, recorded.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use con_event::Payload;
use con_event::payloads::CheckStatus;
use con_test_support::{Daemon, Root, all_events};

use crate::CON;

fn healthcheck(root: &Root) -> (bool, serde_json::Value) {
    let out = Command::new(CON)
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "healthcheck",
            "--json",
        ])
        .output()
        .unwrap();
    let rows = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), rows)
}

fn status_of(rows: &serde_json::Value, check: &str) -> String {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {rows}"))["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn checks_are_recorded_and_a_readable_secrets_file_fails() {
    let root = Root::new();
    let env = root.path().join("etc/con/env");
    std::fs::write(&env, "CON_X=1\n").unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _daemon = Daemon::start(CON, &root);

    let (ok, rows) = healthcheck(&root);
    assert_eq!(status_of(&rows, "database-permissions"), "pass");
    assert_eq!(status_of(&rows, "secrets-permissions"), "pass");
    let journal = status_of(&rows, "journal-mirror");
    assert_eq!(ok, journal == "pass", "{rows}");

    // A key file others can read is a failure, and the exit code says so.
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, rows) = healthcheck(&root);
    assert!(!ok);
    assert_eq!(status_of(&rows, "secrets-permissions"), "fail");

    let recorded: Vec<(String, CheckStatus)> = all_events(&root.socket())
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::ContractResult(r) => Some((r.check, r.status)),
            _ => None,
        })
        .collect();
    assert!(recorded.contains(&("secrets-permissions".into(), CheckStatus::Pass)));
    assert!(recorded.contains(&("secrets-permissions".into(), CheckStatus::Fail)));
    assert_eq!(recorded.len(), 8, "{recorded:?}");
}

#[test]
fn no_daemon_is_a_failure() {
    let root = Root::new();
    let out = Command::new(CON)
        .args(["--root", root.path().to_str().unwrap(), "healthcheck"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the con daemon"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// For each `contract.result` of `contract` (in log order), the
/// `enforcement.action`s it caused, by action name.
fn actions_per_result(events: &[con_event::Event], contract: &str) -> Vec<Vec<String>> {
    events
        .iter()
        .filter(|e| matches!(&e.payload, Payload::ContractResult(r) if r.contract == contract))
        .map(|result| {
            events
                .iter()
                .filter_map(|e| match &e.payload {
                    Payload::EnforcementAction(a) if e.envelope.causation == Some(result.seq()) => {
                        Some(a.action.clone())
                    }
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// A built-in check failing through `con healthcheck` (and the older
/// `RunChecks` request) goes through the same record → decide → enforce
/// path as the scheduler: an alert on every failing result, the sysadmin
/// told once per incident, each caused by its result.
#[test]
fn a_failing_builtin_check_alerts_and_escalates_as_the_scheduler_would() {
    use crate::runs::{Conspiracy, agent, ok, wait_for};
    use con_llm_script::{ScriptedServer, Step};
    use std::time::Duration;

    let model = ScriptedServer::start(vec![Step::text("looked into it"); 4]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("sysadmin", "operator", "")],
    );
    let env = c.root.path().join("etc/con/env");
    let readable =
        || std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let private =
        || std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let con = |args: &[&str]| {
        Command::new(CON)
            .args(c.root.con_flags())
            .args(args)
            .output()
            .unwrap()
    };
    let escalations = |events: &[con_event::Event]| {
        events
            .iter()
            .filter(|e| {
                matches!(&e.payload, Payload::EnforcementDone(d)
                    if d.action == "escalate" && d.contract == "CON-LOG-003" && d.ok)
            })
            .count()
    };

    // The scheduler's path: a daemon supervising runs evaluates the
    // built-ins every healthcheck_interval.
    let config = c.root.path().join("etc/con/con.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[contracts.system]\nhealthcheck_interval = \"1s\"\n");
    std::fs::write(&config, toml).unwrap();
    let daemon = c.supervising_daemon();
    readable();
    wait_for("two scheduled failures", Duration::from_secs(30), || {
        let events = all_events(&c.root.socket());
        actions_per_result(&events, "CON-LOG-003")
            .iter()
            .filter(|a| !a.is_empty())
            .count()
            >= 2
    });
    private();
    let events = all_events(&c.root.socket());
    drop(daemon);
    let scheduled: Vec<Vec<String>> = actions_per_result(&events, "CON-LOG-003")
        .into_iter()
        .filter(|a| !a.is_empty())
        .take(2)
        .collect();
    assert_eq!(
        scheduled,
        [vec!["alert", "escalate"], vec!["alert"]],
        "the scheduler: an alert each time, the escalation once"
    );
    assert_eq!(escalations(&events), 1);

    // The same through `con healthcheck` on a daemon that does not
    // schedule: a passing result closes the incident, then two failing
    // ones open a new one.
    let _daemon = c.daemon();
    let before = actions_per_result(&all_events(&c.root.socket()), "CON-LOG-003").len();
    ok(&con(&["healthcheck"]));
    readable();
    for _ in 0..2 {
        let out = con(&["healthcheck", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    // The older request takes the same path: still the same incident.
    let views = con_protocol::Client::connect(&c.root.socket())
        .unwrap()
        .run_checks()
        .unwrap();
    assert_eq!(views.len(), 4, "{views:?}");
    let events = all_events(&c.root.socket());
    let asked = actions_per_result(&events, "CON-LOG-003").split_off(before);
    assert_eq!(
        asked,
        [
            vec![],
            vec!["alert".to_owned(), "escalate".to_owned()],
            vec!["alert".to_owned()],
            vec!["alert".to_owned()],
        ],
        "con healthcheck and RunChecks decide and enforce as the scheduler does"
    );
    assert_eq!(escalations(&events), 2, "one per incident");
    // The alert is in the status view until the check passes.
    let status = con(&["status", "--json"]);
    let view: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        view["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["contract"] == "CON-LOG-003"),
        "{view}"
    );
    private();
}
