//! Restarts under a real systemd: a stream of tasks to an exec-runner
//! agent while the daemon is restarted (`systemctl restart`) and then
//! killed (`SIGKILL`, brought back by `Restart=on-failure`). Afterwards
//! every task is answered exactly once, every session that started has a
//! recorded end, no task was recorded twice, and the chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use con_e2e::{Container, Image};
use serde_json::Value;

const TASKS: usize = 16;

fn answered(c: &Container) -> usize {
    c.sh("ls /srv/con/agents/slow/outbox/ 2>/dev/null | grep -c '\\.response$'")
        .unwrap()
        .stdout_trimmed()
        .parse()
        .unwrap_or(0)
}

fn daemon_pid(c: &Container) -> String {
    c.exec_ok(&["systemctl", "show", "-P", "MainPID", "con-daemon.service"])
        .unwrap()
        .stdout_trimmed()
        .to_owned()
}

#[test]
fn restarts_and_a_killed_daemon_lose_no_task_and_answer_none_twice() {
    if !con_e2e::enabled() {
        return;
    }
    let image = Image::ensure().unwrap();
    let c = Container::boot(&image, "restarts").unwrap();
    c.sh_ok(
        r#"set -e
printf '#!/bin/sh\nsleep 1\nexec cat\n' > /usr/local/bin/slow-cat
chmod 0755 /usr/local/bin/slow-cat
"#,
    )
    .unwrap();
    c.bootstrap_default_with(
        r#"[[agents]]
name = "slow"
tier = "worker"
runner = "exec:/usr/local/bin/slow-cat""#,
    )
    .unwrap();

    for i in 0..TASKS {
        c.exec_ok(&[
            "con",
            "task",
            "--to",
            "slow",
            &format!("task number {i:02}"),
        ])
        .unwrap();
    }

    c.wait_for("the first answers", Duration::from_secs(60), || {
        answered(&c) >= 3
    });
    let before = daemon_pid(&c);
    c.exec_ok(&["systemctl", "restart", "con-daemon.service"])
        .unwrap();
    assert_ne!(daemon_pid(&c), before, "restarted");

    c.wait_for("answers after the restart", Duration::from_secs(90), || {
        answered(&c) >= 8
    });
    let before = daemon_pid(&c);
    // `kill -9` of the main process (what an OOM kill does); `systemctl
    // kill` fails on this host's cgroup v1 containers.
    c.exec_ok(&["kill", "-9", &before]).unwrap();
    c.wait_for(
        "the daemon back after SIGKILL",
        Duration::from_secs(30),
        || {
            let pid = daemon_pid(&c);
            pid != before
                && pid != "0"
                && c.exec(&["systemctl", "is-active", "--quiet", "con-daemon.service"])
                    .unwrap()
                    .success()
        },
    );

    c.wait_for("every task answered", Duration::from_secs(180), || {
        answered(&c) >= TASKS
    });
    // Nothing is answered twice, even later.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(answered(&c), TASKS, "answered more than once");
    let bodies = c
        .sh_ok("cat /srv/con/agents/slow/outbox/*.response")
        .unwrap()
        .stdout;
    for i in 0..TASKS {
        let line = format!("task number {i:02}");
        assert_eq!(
            bodies.matches(&line).count(),
            1,
            "{line:?} answered once:\n{bodies}"
        );
    }
    let left = c
        .sh("ls /srv/con/agents/slow/inbox/ | grep -c '\\.task$'")
        .unwrap();
    assert_eq!(left.stdout_trimmed(), "0", "tasks left in the inbox");

    // The record: one arrival per task, an end for every start (a session
    // whose run died with the daemon is closed as `abandoned` by the daemon
    // once the agent has no process left: within its 30 s sweep), a chain
    // that verifies.
    let record = || -> (BTreeMap<String, usize>, Vec<String>, Vec<String>, usize) {
        let out = c
            .exec_ok(&["con", "logs", "--json", "--agent", "slow"])
            .unwrap();
        let mut arrivals: BTreeMap<String, usize> = BTreeMap::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        let mut abandoned = 0;
        for line in out.stdout.lines() {
            let e: Value = serde_json::from_str(line).unwrap();
            match e["kind"].as_str().unwrap() {
                "inbox.arrived" => {
                    let path = e["payload"]["path"].as_str().unwrap_or_default().to_owned();
                    *arrivals.entry(path).or_default() += 1;
                }
                "session.started" => starts.push(e["session"].to_string()),
                "session.ended" => {
                    ends.push(e["session"].to_string());
                    abandoned += usize::from(e["payload"]["outcome"] == "abandoned");
                }
                _ => {}
            }
        }
        starts.sort();
        ends.sort();
        (arrivals, starts, ends, abandoned)
    };
    c.wait_for("an end for every session", Duration::from_secs(75), || {
        let (_, starts, ends, _) = record();
        starts == ends
    });
    let (arrivals, starts, _, abandoned) = record();
    assert_eq!(arrivals.len(), TASKS, "{arrivals:?}");
    assert!(
        arrivals.values().all(|n| *n == 1),
        "a task recorded twice: {arrivals:?}"
    );
    eprintln!(
        "restarts: {} sessions for {TASKS} tasks, {abandoned} closed as abandoned",
        starts.len()
    );
    c.exec_ok(&["con", "verify"]).unwrap();
    c.exec_ok(&["con", "verify", "--journal"]).unwrap();
}
