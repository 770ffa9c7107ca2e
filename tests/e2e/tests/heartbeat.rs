//! The heartbeat under a real systemd: the healthcheck service (what its
//! timer starts) evaluates a contract that cannot pass; it halts the
//! workers and escalates to the sysadmin once; a halted worker's path unit
//! does not run its new task; `con agent resume` lets it run, and the
//! waiting task is answered. The worker runs `cat`, so no model is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use con_e2e::Container;
use serde_json::Value;

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
    let Some(c) = con_e2e::scenario("heartbeat").unwrap() else {
        return;
    };
    c.bootstrap_default_with(
        r#"[[agents]]
name = "echo"
tier = "worker"
runner = "exec:cat""#,
    )
    .unwrap();
    c.sh_ok(
        r#"set -e
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
"#,
    )
    .unwrap();

    // The timer's service, started by hand, twice: one incident.
    for _ in 0..2 {
        c.sh("systemctl start con-healthcheck.service").unwrap();
    }
    c.wait_for("echo halted", Duration::from_secs(30), || {
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
    c.wait_for("the waiting task answered", Duration::from_secs(60), || {
        c.sh("ls /srv/con/agents/echo/outbox/*.response 2>/dev/null")
            .unwrap()
            .success()
    });
    assert_eq!(condition(&c, "echo"), "active");
}

fn uid_processes(c: &Container, user: &str) -> String {
    c.sh(&format!("pgrep -a -u {user} || true"))
        .unwrap()
        .stdout
        .trim()
        .to_owned()
}

/// `kill_session` from a contract the healthcheck service evaluates, during
/// a long exec under the agent's path-unit-started run: every process it
/// names is gone. Then quarantine: another agent's write into the
/// quarantined inbox is refused by the kernel, the path unit does not run
/// the agent's new task, and `con agent resume` reopens the inbox and gets
/// the task answered.
#[test]
fn kill_session_and_quarantine_hold_under_systemd() {
    let Some(c) = con_e2e::scenario("enforce").unwrap() else {
        return;
    };
    c.sh_ok(
        r#"set -e
cat > /usr/local/bin/sleep-once <<'SH'
#!/bin/sh
# The first run sleeps (until killed); a run after that answers at once.
if [ -e once ]; then exec cat; fi
touch once
sleep 300 &
sleep 301
SH
chmod 0755 /usr/local/bin/sleep-once
"#,
    )
    .unwrap();
    c.bootstrap_default_with(
        r#"[[agents]]
name = "sleeper"
tier = "worker"
runner = "exec:/usr/local/bin/sleep-once"

[[agents]]
name = "clerk"
tier = "operator"
runner = "exec:cat""#,
    )
    .unwrap();
    c.sh_ok(
        r#"set -e
cat > /srv/con/contracts/ZZ-KILL.yaml <<'YAML'
id: ZZ-KILL
description: the sleeper may not sleep
type: detective
frequency: 1h
scope: agent:sleeper
checks:
  - name: no-sleep
    command:
      run: "pgrep -c -u a-sleeper -x sleep || true"
      test: "[ \"$RESULT\" = 0 ]"
    on_fail:
      action: kill_session
      message: "the sleeper slept"
YAML
chmod 0644 /srv/con/contracts/ZZ-KILL.yaml
"#,
    )
    .unwrap();

    // kill_session.
    c.exec_ok(&["con", "task", "--to", "sleeper", "sleep"])
        .unwrap();
    c.wait_for("the long exec", Duration::from_secs(60), || {
        uid_processes(&c, "a-sleeper").contains("sleep 301")
    });
    c.sh("systemctl start con-healthcheck.service").unwrap();
    let events: Vec<Value> = c
        .exec_ok(&["con", "logs", "--json"])
        .unwrap()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let action = events
        .iter()
        .find(|e| e["kind"] == "enforcement.action" && e["payload"]["action"] == "kill_session")
        .unwrap_or_else(|| panic!("no kill_session action;\n{}", c.diagnostics()));
    let done = events
        .iter()
        .find(|e| e["kind"] == "enforcement.done" && e["causation"] == action["seq"])
        .unwrap_or_else(|| panic!("no enforcement.done for {action}"));
    let pids: Vec<u64> = done["payload"]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(pids.len() >= 3, "run, shell and sleeps: {done}");
    for pid in &pids {
        let alive = c.exec(&["kill", "-0", &pid.to_string()]).unwrap();
        assert!(!alive.success(), "pid {pid} survived the kill");
    }
    assert!(
        !uid_processes(&c, "a-sleeper").contains("sleep 30"),
        "a sleep survived: {}",
        uid_processes(&c, "a-sleeper")
    );
    // The kill is not a halt: the path unit runs the task again (the
    // runner now answers at once) and the agent's processes all end.
    c.wait_for(
        "the sleeper's task answered after the kill",
        Duration::from_secs(60),
        || {
            c.sh("ls /srv/con/agents/sleeper/outbox/*.response 2>/dev/null")
                .unwrap()
                .success()
        },
    );
    c.wait_for("no process of a-sleeper", Duration::from_secs(30), || {
        uid_processes(&c, "a-sleeper").is_empty()
    });
    assert_eq!(condition(&c, "sleeper"), "active");

    // Quarantine.
    let write = |name: &str| {
        c.sh_as(
            "a-concierge",
            &format!("echo hi > /srv/con/agents/clerk/inbox/{name}.task"),
        )
        .unwrap()
        .success()
    };
    assert!(write("before"), "the concierge may task the clerk");
    c.wait_for("the clerk's first answer", Duration::from_secs(60), || {
        c.sh("ls /srv/con/agents/clerk/outbox/*.response 2>/dev/null | wc -l")
            .unwrap()
            .stdout_trimmed()
            == "1"
    });
    c.exec_ok(&["con", "agent", "quarantine", "clerk"]).unwrap();
    assert_eq!(condition(&c, "clerk"), "quarantined");
    assert!(!write("during"), "the concierge wrote a quarantined inbox");
    let queued = c
        .exec_ok(&["con", "task", "--to", "clerk", "held until resumed"])
        .unwrap();
    let queued = queued.stdout_trimmed().to_owned();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        c.exec(&["test", "-e", &queued]).unwrap().success(),
        "the quarantined agent ran;\n{}",
        c.diagnostics()
    );
    c.exec_ok(&["con", "agent", "resume", "clerk"]).unwrap();
    c.wait_for("the queued task answered", Duration::from_secs(60), || {
        c.sh("ls /srv/con/agents/clerk/outbox/*.response 2>/dev/null | wc -l")
            .unwrap()
            .stdout_trimmed()
            == "2"
    });
    assert!(write("after"), "resume reopens the inbox");
    assert_eq!(condition(&c, "clerk"), "active");
}
