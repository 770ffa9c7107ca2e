//! Runtime commissioning under a real systemd: the sysadmin agent, told to
//! by its (scripted) model, commissions a worker through its sudo grant
//! from inside its hardened unit; the worker's path unit is installed and
//! started, a task to it is answered — no restart of anything — and
//! decommissioning stops and removes its units. Both rewrite the roster in
//! every agent's AGENTS.md, and the log records that they did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use con_event::{Digest, Payload};

/// The concierge's instructions, where the roster of the agents is.
const CONCIERGE_MD: &str = "/home/a-concierge/AGENTS.md";

#[test]
fn the_sysadmin_commissions_a_worker_that_answers_without_a_restart() {
    let Some(c) = con_e2e::scenario("commission").unwrap() else {
        return;
    };
    // The sysadmin's model commissions the scout; the scout's (the base
    // model, on another port) answers.
    c.bootstrap_default_on_scripts(
        r#"[{"reply": {"text": "scout reporting"}}]"#,
        r#"[{"reply": {"tool_calls": [{"name": "exec", "arguments": {"command": "sudo -n /usr/local/bin/con commission scout && echo COMMISSIONED"}}]}},
 {"reply": {"text": "scout commissioned"}}]"#,
        "sk-e2e-commission",
    )
    .unwrap();
    let daemon_pid = || {
        c.exec_ok(&["systemctl", "show", "-P", "MainPID", "con-daemon.service"])
            .unwrap()
            .stdout_trimmed()
            .to_owned()
    };
    let pid_before = daemon_pid();
    // Read as the concierge itself: what its runs read.
    let roster = || {
        c.command(&["cat", CONCIERGE_MD])
            .user("a-concierge")
            .ok()
            .unwrap()
            .stdout
    };
    let before = roster();
    assert!(before.contains("## Who is here"), "{before}");
    assert!(!before.contains("`scout`"), "{before}");

    c.exec_ok(&["con", "task", "--to", "sysadmin", "We need a scout."])
        .unwrap();
    c.wait_for("the sysadmin's answer", Duration::from_secs(90), || {
        c.sh("cat /srv/con/agents/sysadmin/outbox/*.response 2>/dev/null")
            .unwrap()
            .stdout
            == "scout commissioned"
    });
    let users = c.exec_ok(&["getent", "passwd", "a-scout"]).unwrap();
    assert!(users.stdout.starts_with("a-scout:"), "{users}");
    let with_scout = roster();
    assert!(
        with_scout.contains("- `scout`: worker"),
        "the concierge's roster does not name the scout:\n{with_scout}"
    );
    c.wait_for("the scout's path unit", Duration::from_secs(30), || {
        c.exec(&["systemctl", "is-active", "--quiet", "con-agent@scout.path"])
            .unwrap()
            .success()
    });

    c.exec_ok(&["con", "task", "--to", "scout", "Report."])
        .unwrap();
    c.wait_for("the scout's answer", Duration::from_secs(90), || {
        c.sh("cat /srv/con/agents/scout/outbox/*.response 2>/dev/null")
            .unwrap()
            .stdout
            == "scout reporting"
    });
    assert_eq!(daemon_pid(), pid_before, "the daemon was restarted");
    let reloads = c
        .exec_ok(&[
            "journalctl",
            "-t",
            "con",
            "CON_EVENT=config_reloaded",
            "-o",
            "cat",
            "--no-pager",
        ])
        .unwrap();
    assert!(reloads.stdout.contains("added: scout"), "{reloads}");

    c.exec_ok(&["con", "decommission", "scout"]).unwrap();
    let after = roster();
    assert!(
        !after.contains("`scout`"),
        "the decommissioned scout is still in the concierge's roster:\n{after}"
    );
    assert_eq!(after, before);
    // Both rewrites are recorded: each is a step of the command's
    // provision.applied, in the daemon's log (`con logs`) and, with the
    // steps' content, in the journal.
    let logged = c
        .exec_ok(&["con", "logs", "--json", "--kind", "provision.applied"])
        .unwrap();
    let applied: Vec<(String, String)> = logged
        .stdout
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload = &event["payload"];
            (
                payload["command"].as_str().unwrap().to_owned(),
                payload["steps"]["digest"].as_str().unwrap().to_owned(),
            )
        })
        .filter(|(command, _)| command != "bootstrap")
        .collect();
    let commands: Vec<&str> = applied
        .iter()
        .map(|(command, _)| command.as_str())
        .collect();
    assert_eq!(
        commands,
        ["commission scout", "decommission scout"],
        "{logged}"
    );
    // Only these events and their steps' entries: the whole journal is
    // slow to rebuild in a debug build.
    let mut query = vec![
        "journalctl".to_owned(),
        "-o".to_owned(),
        "json".to_owned(),
        "--all".to_owned(),
        "--no-pager".to_owned(),
        "CON_EVENT=provision_applied".to_owned(),
        "+".to_owned(),
    ];
    query.extend(applied.iter().map(|(_, d)| format!("CON_BLOB_DIGEST={d}")));
    let query: Vec<&str> = query.iter().map(String::as_str).collect();
    let journal = c.exec_ok(&query).unwrap();
    let rebuilt = con_journal::rebuild_from_json(journal.stdout.as_bytes()).unwrap();
    for (command, digest) in &applied {
        let steps = rebuilt
            .blobs
            .get(&Digest::from_hex(digest).unwrap())
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_else(|| panic!("{command}: its steps {digest} are not in the journal"));
        assert!(
            steps.lines().any(|l| l.contains(CONCIERGE_MD)),
            "{command} did not record the roster's rewrite:\n{steps}"
        );
    }
    // The journal's copy of the events says the same.
    let journaled: Vec<String> = rebuilt
        .logs
        .values()
        .flatten()
        .filter_map(|e| match &e.payload {
            Payload::ProvisionApplied(p) if p.command != "bootstrap" => Some(p.command.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(journaled, commands);
    c.wait_for("the scout's units gone", Duration::from_secs(30), || {
        let units = c
            .sh("systemctl list-units --all --no-legend 'con-agent@scout*' | grep -v not-found")
            .unwrap();
        units.stdout.trim().is_empty()
    });
    assert!(
        !c.exec(&["test", "-e", "/etc/systemd/system/con-agent@scout.path"])
            .unwrap()
            .success()
            || !c
                .exec(&["systemctl", "is-enabled", "--quiet", "con-agent@scout.path"])
                .unwrap()
                .success(),
        "the scout's path unit is still enabled"
    );
}
