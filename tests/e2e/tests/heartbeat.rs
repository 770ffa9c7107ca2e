//! The heartbeat under a real systemd: the healthcheck service (what its
//! timer starts) evaluates a contract that cannot pass; it halts the
//! workers and escalates to the sysadmin once; a halted worker's path unit
//! does not run its new task; `con agent resume` lets it run, and the
//! waiting task is answered. The worker runs `cat`, so no model is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use con_e2e::{CONFIGS_PATH, Container, Image};
use serde_json::Value;

fn wait_until(c: &Container, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what}: not after {limit:?};\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn condition(c: &Container, agent: &str) -> String {
    let out = c.exec_ok(&["con", "agent", "list", "--json"]).unwrap();
    let list: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("con agent list --json ({e}): {out}"));
    let rows = list
        .as_array()
        .cloned()
        .unwrap_or_else(|| list["agents"].as_array().cloned().unwrap_or_default());
    rows.iter()
        .find(|r| r["name"] == agent)
        .map(|r| r["condition"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("{agent} not listed: {list}"))
}

#[test]
fn a_failing_contract_halts_workers_until_resumed_under_systemd() {
    if !con_e2e::enabled() {
        return;
    }
    let image = Image::ensure().unwrap();
    let c = Container::boot(&image, "heartbeat").unwrap();
    c.sh_ok(&format!(
        r#"set -e
cp -a {CONFIGS_PATH}/default /opt/profile
sed -i 's/^max_load_per_cpu = .*/max_load_per_cpu = 1000.0/' /opt/profile/con.toml
cat >> /opt/profile/con.toml <<'TOML'

[[agents]]
name = "echo"
tier = "worker"
runner = "exec:cat"
TOML
con bootstrap --profile /opt/profile >/dev/null
cat > /srv/con/contracts/ZZ-IMPOSSIBLE.yaml <<'YAML'
id: ZZ-IMPOSSIBLE
description: a threshold no host meets
type: detective
frequency: 1h
scope: system
checks:
  - name: impossible
    command:
      run: "echo 1"
      test: "[ \"$RESULT\" = 2 ]"
    on_fail:
      action: halt_workers
      escalate: sysadmin
      message: "the impossible check failed"
YAML
chmod 0644 /srv/con/contracts/ZZ-IMPOSSIBLE.yaml
"#
    ))
    .unwrap();

    // The timer's service, started by hand, twice: one incident.
    for _ in 0..2 {
        c.sh("systemctl start con-healthcheck.service").unwrap();
    }
    wait_until(&c, "echo halted", Duration::from_secs(30), || {
        condition(&c, "echo") == "halted"
    });
    assert_eq!(
        condition(&c, "concierge"),
        "active",
        "operators keep running"
    );
    let escalations = c
        .sh_ok("grep -l 'the impossible check failed' /srv/con/agents/sysadmin/inbox/*.task /srv/con/agents/sysadmin/processed/*.task /srv/con/agents/sysadmin/failed/*.task 2>/dev/null | wc -l")
        .unwrap();
    assert_eq!(escalations.stdout_trimmed(), "1", "escalated once");

    // A task for the halted worker waits: its path unit may fire, the run
    // does nothing.
    let task = c
        .exec_ok(&["con", "task", "--to", "echo", "still there?"])
        .unwrap();
    let task = task.stdout_trimmed().to_owned();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        c.exec(&["test", "-e", &task]).unwrap().success(),
        "the halted worker's task was taken;\n{}",
        c.diagnostics()
    );

    // Resume: the task is answered.
    c.exec_ok(&["con", "agent", "resume", "echo"]).unwrap();
    wait_until(
        &c,
        "the waiting task answered",
        Duration::from_secs(60),
        || {
            c.sh("ls /srv/con/agents/echo/outbox/*.response 2>/dev/null")
                .unwrap()
                .success()
        },
    );
    assert_eq!(condition(&c, "echo"), "active");
}
