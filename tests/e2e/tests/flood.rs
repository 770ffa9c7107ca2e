//! A flood under a real systemd: a thousand tasks dropped at once into one
//! inbox watched by a path unit. Each is recorded once, answered once, in
//! name order, none lost, and the daemon's memory stays bounded. The agent
//! runs `cat` as its runner, so no model is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

const TASKS: usize = 1000;
/// The daemon's resident memory after the flood, at most.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

#[test]
fn a_thousand_tasks_are_each_recorded_and_answered_once_in_order() {
    let Some(c) = con_e2e::scenario("flood").unwrap() else {
        return;
    };
    // The heartbeat halts workers when the host's load is high, which the
    // flood itself can cause: the helper lifts that ceiling.
    c.bootstrap_default_with(
        r#"[[agents]]
name = "echo"
tier = "worker"
runner = "exec:cat""#,
    )
    .unwrap();

    // All at once: written aside, then renamed in, as root.
    c.sh_ok(&format!(
        r#"set -e
inbox=/srv/con/agents/echo/inbox
mkdir -p /opt/flood
for i in $(seq -w 1 {TASKS}); do printf 'task %s' "$i" > /opt/flood/t-$i.task; done
mv /opt/flood/*.task "$inbox"/
"#
    ))
    .unwrap();

    let started = Instant::now();
    loop {
        let answered = c
            .sh_ok("ls /srv/con/agents/echo/processed | grep -c '\\.task$' || true")
            .unwrap();
        if answered.stdout_trimmed() == TASKS.to_string() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} of {TASKS} answered after 10 min;\n{}",
            answered.stdout_trimmed(),
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    let events: Vec<Value> = c
        .exec_ok(&["con", "logs", "--json", "--agent", "echo"])
        .unwrap()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of_kind =
        |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["kind"] == kind).collect() };
    let arrived: Vec<String> = of_kind("inbox.arrived")
        .iter()
        .map(|e| e["payload"]["path"].as_str().unwrap().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = arrived.iter().collect();
    assert_eq!(distinct.len(), TASKS, "every task recorded");
    assert_eq!(arrived.len(), TASKS, "and recorded once");

    let started_tasks: Vec<String> = of_kind("session.started")
        .iter()
        .map(|e| e["task"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(started_tasks.len(), TASKS, "one session per task");
    let mut sorted = started_tasks.clone();
    sorted.sort();
    assert_eq!(started_tasks, sorted, "taken in name order");
    let ok = of_kind("session.ended")
        .iter()
        .filter(|e| e["payload"]["outcome"] == "ok")
        .count();
    assert_eq!(ok, TASKS, "every session answered");
    let responses = c
        .sh_ok("ls /srv/con/agents/echo/outbox | grep -c '\\.response$'")
        .unwrap();
    assert_eq!(responses.stdout_trimmed(), TASKS.to_string());

    let rss = c
        .sh_ok("grep VmRSS /proc/$(systemctl show -P MainPID con-daemon.service)/status | awk '{print $2}'")
        .unwrap();
    let rss: u64 = rss.stdout_trimmed().parse().unwrap();
    assert!(rss <= RSS_LIMIT_KIB, "daemon RSS {rss} KiB after the flood");
    eprintln!(
        "flood: {TASKS} tasks in {:?}, daemon RSS {rss} KiB",
        started.elapsed()
    );
}
