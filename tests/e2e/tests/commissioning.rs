//! Runtime commissioning under a real systemd: the sysadmin agent, told to
//! by its (scripted) model, commissions a worker through its sudo grant
//! from inside its hardened unit; the worker's path unit is installed and
//! started, a task to it is answered — no restart of anything — and
//! decommissioning stops and removes its units.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use con_e2e::{Container, Image};

#[test]
fn the_sysadmin_commissions_a_worker_that_answers_without_a_restart() {
    if !con_e2e::enabled() {
        return;
    }
    let image = Image::ensure().unwrap();
    let c = Container::boot(&image, "commission").unwrap();
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
