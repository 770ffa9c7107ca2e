//! Runtime commissioning under a real systemd: the sysadmin agent, told to
//! by its (scripted) model, commissions a worker through its sudo grant
//! from inside its hardened unit; the worker's path unit is installed and
//! started, a task to it is answered — no restart of anything — and
//! decommissioning stops and removes its units.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use con_e2e::{CONFIGS_PATH, Container, Image};

#[test]
fn the_sysadmin_commissions_a_worker_that_answers_without_a_restart() {
    if !con_e2e::enabled() {
        return;
    }
    let bin = con_e2e::script_server_binary();
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p con-llm-script`",
        bin.display()
    );
    let image = Image::ensure().unwrap();
    let c = Container::boot(&image, "commission").unwrap();
    c.copy_in(&bin, "/usr/local/bin/con-llm-script").unwrap();
    // The sysadmin's model commissions the scout; the scout's (the base
    // model, on another port) answers.
    c.sh_ok(
        r#"set -e
cat > /opt/sysadmin.json <<'JSON'
[{"reply": {"tool_calls": [{"name": "exec", "arguments": {"command": "sudo -n /usr/local/bin/con commission scout && echo COMMISSIONED"}}]}},
 {"reply": {"text": "scout commissioned"}}]
JSON
cat > /opt/scout.json <<'JSON'
[{"reply": {"text": "scout reporting"}}]
JSON
systemd-run --unit=llm-scout /usr/local/bin/con-llm-script --script /opt/scout.json --listen 127.0.0.1:18080
systemd-run --unit=llm-sysadmin /usr/local/bin/con-llm-script --script /opt/sysadmin.json --listen 127.0.0.1:18081
"#,
    )
    .unwrap();
    c.sh_ok(&format!(
        r#"set -e
cp -a {CONFIGS_PATH}/default /opt/profile
sed -i 's|^provider = "openrouter"|provider = "openai-compatible"\nbase_url = "http://127.0.0.1:18080/v1"|' /opt/profile/con.toml
sed -i 's|^roles = \["sysadmin"\]|roles = ["sysadmin"]\nbase_url = "http://127.0.0.1:18081/v1"|' /opt/profile/con.toml
install -d -m 0755 /etc/con
install -m 0600 /dev/null /etc/con/env
echo 'CON_OPENROUTER_API_KEY=sk-e2e-commission' > /etc/con/env
con bootstrap --profile /opt/profile >/dev/null
"#
    ))
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
