#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `con bootstrap` on a fresh Debian under a real systemd: it provisions the
//! default profile, the daemon comes up (Type=notify: active means it sent
//! READY), every agent's trigger unit is enabled and active, the units it
//! wrote pass `systemd-analyze verify`, and a second run changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use con_config::Mode;
use con_e2e::{CONFIGS_PATH, Container};
use serde_json::Value;

const PROFILE: &str = "default";

/// The units bootstrap installs for the profile, per the contract: the
/// daemon (which also watches the outer inbox), the health check, and per agent its
/// service plus what starts it (a .path for on-demand agents, a .timer for
/// cron agents; a continuous agent's service runs by itself).
struct Expected {
    /// Units that must be enabled and active after bootstrap.
    triggers: Vec<String>,
    /// Every unit bootstrap should have installed, for `systemd-analyze verify`.
    all: Vec<String>,
}

fn expected_units() -> Expected {
    let path = con_e2e::workspace().join(format!("configs/{PROFILE}/con.toml"));
    let config = con_config::load(&path, &BTreeMap::new()).unwrap();
    let mut triggers = vec![String::from("con-healthcheck.timer")];
    let mut all = vec![
        String::from("con-daemon.service"),
        String::from("con-healthcheck.timer"),
        String::from("con-healthcheck.service"),
    ];
    for agent in &config.agents {
        let service = format!("con-agent@{}.service", agent.name);
        let trigger = match agent.mode {
            Mode::OnDemand => format!("con-agent@{}.path", agent.name),
            Mode::Cron => format!("con-agent@{}.timer", agent.name),
            Mode::Continuous => service.clone(),
        };
        if trigger != service {
            all.push(service);
        }
        all.push(trigger.clone());
        triggers.push(trigger);
    }
    assert!(
        config.agents.len() >= 3,
        "the {PROFILE} profile should have agents"
    );
    Expected { triggers, all }
}

/// Runs `con bootstrap --json` and returns its report.
fn bootstrap(c: &Container) -> Value {
    let out = c
        .exec_ok(&[
            "con",
            "bootstrap",
            "--profile",
            &format!("{CONFIGS_PATH}/{PROFILE}"),
            "--json",
        ])
        .unwrap();
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("bootstrap --json printed no JSON ({e}): {out}"));
    assert!(report["steps"].is_array(), "no steps: {report}");
    assert!(report["failed"].is_array(), "no failed list: {report}");
    report
}

#[test]
fn bootstrap_provisions_a_running_conspiracy_and_is_idempotent() {
    let Some(c) = con_e2e::scenario("bootstrap").unwrap() else {
        return;
    };
    let expected = expected_units();

    let first = bootstrap(&c);
    assert!(
        first["changes"].as_u64().unwrap() > 0,
        "a fresh host needs changes: {first}"
    );
    assert_eq!(first["failed"], Value::Array(vec![]), "{first}");

    // Type=notify: `active` only after the daemon sent READY=1.
    let daemon = c
        .exec(&["systemctl", "is-active", "con-daemon.service"])
        .unwrap();
    assert_eq!(daemon.stdout_trimmed(), "active", "{daemon}");
    let kind = c
        .exec_ok(&["systemctl", "show", "-P", "Type", "con-daemon.service"])
        .unwrap();
    assert_eq!(kind.stdout_trimmed(), "notify");

    for unit in &expected.triggers {
        let enabled = c.exec(&["systemctl", "is-enabled", unit]).unwrap();
        assert_eq!(enabled.stdout_trimmed(), "enabled", "{enabled}");
        let active = c.exec(&["systemctl", "is-active", unit]).unwrap();
        assert_eq!(active.stdout_trimmed(), "active", "{active}");
    }

    // verify exits 0 on "..., ignoring" warnings: any stderr is a failure.
    // Each unit is named by the directory its fragment lives in, so template
    // instances resolve through their template.
    let mut paths = Vec::new();
    for unit in &expected.all {
        let fragment = c
            .exec_ok(&["systemctl", "show", "-P", "FragmentPath", unit])
            .unwrap();
        let fragment = fragment.stdout_trimmed();
        assert!(!fragment.is_empty(), "{unit} is not installed");
        let dir = Path::new(fragment).parent().unwrap();
        paths.push(dir.join(unit).display().to_string());
    }
    let mut verify = vec!["systemd-analyze", "verify"];
    verify.extend(paths.iter().map(String::as_str));
    let verified = c.exec(&verify).unwrap();
    assert!(
        verified.success() && verified.stderr.trim().is_empty(),
        "{verified}"
    );

    // The CLI reaches the daemon through its socket.
    let status = c.exec(&["con", "status"]).unwrap();
    assert!(status.success(), "{status}");

    let second = bootstrap(&c);
    assert_eq!(
        second["changes"], 0,
        "a second run should change nothing: {second}"
    );
    assert_eq!(second["failed"], Value::Array(vec![]), "{second}");

    sysadmin_sudo_grants_are_bounded_by_what_it_is(&c);
}

/// The sysadmin's sudo grant of `con commission`/`decommission`, used as a
/// prompt-injected sysadmin would: through the real sudo, as its own user.
/// It may mint a worker and remove it again, but not an officer, not
/// another sudo holder, and not remove its peers or itself.
fn sysadmin_sudo_grants_are_bounded_by_what_it_is(c: &Container) {
    let as_sysadmin = |args: &str| {
        c.sh(&format!(
            "runuser -u a-sysadmin -- sudo -n /usr/local/bin/con {args}"
        ))
        .unwrap()
    };
    for (args, why) in [
        (
            "commission boss --tier officer",
            "tier officer is above its own tier operator",
        ),
        (
            "commission twin --role sysadmin",
            "role sysadmin carries sudo rights",
        ),
        (
            "commission twin --role concierge",
            "role concierge is not one of its own",
        ),
        ("decommission concierge", "its tier operator is not below"),
        ("decommission strategist", "its tier officer is not below"),
        ("decommission sysadmin", "its tier operator is not below"),
    ] {
        let out = as_sysadmin(args);
        assert!(
            !out.success()
                && out.stderr.contains("(through sudo) may not")
                && out.stderr.contains(why),
            "sudo con {args}: {out}"
        );
    }
    let users = c.exec_ok(&["getent", "passwd"]).unwrap().stdout;
    assert!(
        !users.contains("a-boss:") && !users.contains("a-twin:"),
        "no account was created"
    );
    let made = as_sysadmin("commission scout");
    assert!(made.success(), "a worker may be commissioned: {made}");
    let removed = as_sysadmin("decommission scout");
    assert!(removed.success(), "and decommissioned: {removed}");
}
