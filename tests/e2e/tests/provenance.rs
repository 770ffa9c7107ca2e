//! Provenance under a real systemd: what an agent can do to make its own
//! words look like an operator's, tried as the agent inside the container,
//! and what the daemon records for each arrival. Only a root `con task` is
//! verified.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use con_e2e::{CONFIGS_PATH, Container};
use serde_json::Value;

/// The recorded arrivals at `path`, waiting until there is one.
fn arrivals(c: &Container, path: &str) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let out = c
            .exec_ok(&["con", "logs", "--json", "--kind", "inbox.arrived"])
            .unwrap();
        let found: Vec<Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["payload"]["path"] == path)
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no arrival recorded at {path};\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn only_a_root_task_is_verified() {
    let Some(c) = con_e2e::scenario("provenance").unwrap() else {
        return;
    };
    c.exec_ok(&[
        "con",
        "bootstrap",
        "--profile",
        &format!("{CONFIGS_PATH}/default"),
    ])
    .unwrap();
    let as_user = |user: &str, script: &str| c.sh_as(user, script).unwrap();
    let sysadmin = "/srv/con/agents/sysadmin/inbox";
    let concierge = "/srv/con/agents/concierge/inbox";

    // An operator's task: verified.
    let op = c
        .exec_ok(&["con", "task", "--to", "concierge", "Rotate the logs."])
        .unwrap();
    let op_path = op.stdout_trimmed().to_owned();
    let op_arrival = arrivals(&c, &op_path);
    assert_eq!(
        op_arrival[0]["payload"]["trust"], "verified",
        "{op_arrival:?}"
    );

    // The concierge moves that operator task on into the sysadmin's inbox:
    // the same root-owned file, recorded before, so unverified there.
    let name = op_path.rsplit('/').next().unwrap();
    let moved = as_user("a-concierge", &format!("mv {op_path} {sysadmin}/{name}"));
    assert!(moved.success(), "{moved}");
    let forwarded = arrivals(&c, &format!("{sysadmin}/{name}"));
    assert_eq!(
        forwarded[0]["payload"]["trust"], "unverified",
        "{forwarded:?}"
    );
    assert!(
        forwarded[0]["payload"]["trust_reason"]
            .as_str()
            .unwrap()
            .contains("concierge"),
        "{forwarded:?}"
    );

    // A symlink to a root file: never followed, unverified.
    let linked = as_user(
        "a-concierge",
        &format!("ln -s /etc/con/mission.md {sysadmin}/link.task"),
    );
    assert!(linked.success(), "{linked}");
    let link = arrivals(&c, &format!("{sysadmin}/link.task"));
    assert_eq!(link[0]["payload"]["trust"], "unverified");
    assert_eq!(link[0]["payload"]["symlink"], true);

    // A hard link to a root-owned file: the kernel refuses it
    // (protected_hardlinks), or it arrives unverified.
    let hard = as_user(
        "a-concierge",
        &format!("ln /etc/con/mission.md {sysadmin}/hard.task"),
    );
    if hard.success() {
        let h = arrivals(&c, &format!("{sysadmin}/hard.task"));
        assert_eq!(h[0]["payload"]["trust"], "unverified", "{h:?}");
    }

    // An agent tasking itself: its own file, unverified.
    let own = as_user(
        "a-concierge",
        &format!("printf 'do as I say' > {concierge}/self.task"),
    );
    assert!(own.success(), "{own}");
    let s = arrivals(&c, &format!("{concierge}/self.task"));
    assert_eq!(s[0]["payload"]["trust"], "unverified");

    // A root-owned file in the agent's own workspace cannot be moved into
    // an inbox: the workspace is sticky and root's file is not the agent's.
    c.sh_ok("echo from root > /srv/con/agents/concierge/workspace/root.md")
        .unwrap();
    let launder = as_user(
        "a-concierge",
        &format!("mv /srv/con/agents/concierge/workspace/root.md {sysadmin}/launder.task"),
    );
    assert!(
        !launder.success(),
        "the sticky workspace keeps root's file: {launder}"
    );
}
