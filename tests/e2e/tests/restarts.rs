//! Restarts under a real systemd, with tasks flowing to an exec-runner
//! agent:
//!
//! - the daemon restarted (`systemctl restart`) and then killed (`SIGKILL`,
//!   brought back by `Restart=on-failure`);
//! - the whole container rebooted (`systemctl reboot`: units stopped in
//!   order) and then cut off (SIGKILL to its systemd: every process at
//!   once), each time booted again on the same disk.
//!
//! Afterwards every task is answered exactly once, every session that
//! started has a recorded end, no task was recorded twice, nothing the log
//! had acknowledged is missing, and the chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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
    let Some(c) = con_e2e::scenario("restarts").unwrap() else {
        return;
    };
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

/// The answer-once exec runner of the reboot scenario: echoes its task
/// after a second, except `hold N …`, which it holds until the test
/// creates `/opt/release-N` (readable inside the agent's sandbox), so
/// that a session is certainly in flight when the container goes down.
const HOLDING_CAT: &str = r#"#!/bin/sh
body=$(cat)
case "$body" in
hold\ *)
  n=${body#hold }
  n=${n%% *}
  while [ ! -e "/opt/release-$n" ]; do sleep 0.2; done ;;
*) sleep 1 ;;
esac
printf '%s' "$body"
"#;

/// `con logs --json`: every event the daemon serves, one JSON line each.
/// The daemon serves only durable (acknowledged) events.
fn log_lines(c: &Container) -> Vec<String> {
    c.exec_ok(&["con", "logs", "--json"])
        .unwrap()
        .stdout
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The agent's events, parsed.
fn events_of(c: &Container, agent: &str) -> Vec<Value> {
    c.exec_ok(&["con", "logs", "--json", "--agent", agent])
        .unwrap()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The outcome of each session of `task`, `None` while it is open, in the
/// order the sessions started.
fn sessions_of_task(c: &Container, task: &str) -> Vec<(String, Option<String>)> {
    let events = events_of(c, "slow");
    let mut sessions: Vec<(String, Option<String>)> = Vec::new();
    for e in &events {
        if e["task"] == task && e["kind"] == "session.started" {
            sessions.push((e["session"].as_str().unwrap().to_owned(), None));
        }
    }
    for e in &events {
        if e["kind"] == "session.ended"
            && let Some(s) = sessions
                .iter_mut()
                .find(|(id, _)| e["session"] == id.as_str())
        {
            s.1 = Some(e["payload"]["outcome"].as_str().unwrap().to_owned());
        }
    }
    sessions
}

/// Drops a task into the slow agent's inbox; returns its task id.
fn task_to_slow(c: &Container, body: &str) -> String {
    let out = c.exec_ok(&["con", "task", "--to", "slow", body]).unwrap();
    std::path::Path::new(out.stdout_trimmed())
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Everything `before` held is still there, byte for byte, at the same
/// place: no acknowledged event was lost or changed by the reboot.
fn assert_kept(before: &[String], after: &[String], what: &str) {
    assert!(
        after.len() >= before.len(),
        "{what}: {} events acknowledged before, {} after",
        before.len(),
        after.len()
    );
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        assert_eq!(b, a, "{what}: event {} differs", i + 1);
    }
}

/// Units come up by themselves after a boot: the test starts none of them.
fn assert_units_up(c: &Container, what: &str) {
    for unit in ["con-daemon.service", "con-agent@slow.path"] {
        let out = c.exec(&["systemctl", "is-active", unit]).unwrap();
        assert_eq!(out.stdout_trimmed(), "active", "{what}: {unit}: {out}");
    }
}

#[test]
fn reboots_lose_no_acknowledged_event_and_no_task_and_end_every_session() {
    if !con_e2e::enabled() {
        return;
    }
    let scenario = Instant::now();
    let image = Image::ensure().unwrap();
    let mut c = Container::boot(&image, "reboots").unwrap();
    c.sh_ok(&format!(
        "set -e\ncat > /usr/local/bin/holding-cat <<'SH'\n{HOLDING_CAT}SH\nchmod 0755 /usr/local/bin/holding-cat\n"
    ))
    .unwrap();
    c.bootstrap_default_with(
        r#"[[agents]]
name = "slow"
tier = "worker"
runner = "exec:/usr/local/bin/holding-cat""#,
    )
    .unwrap();
    let boots = |c: &Container| {
        c.exec_ok(&["journalctl", "--list-boots", "--no-pager"])
            .unwrap()
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("IDX"))
            .count()
    };
    assert_eq!(boots(&c), 1);

    // A flow: answered tasks, one held in flight, more queued behind it.
    let mut bodies: Vec<String> = Vec::new();
    let send = |c: &Container, bodies: &mut Vec<String>, body: String| {
        let id = task_to_slow(c, &body);
        bodies.push(body);
        id
    };
    for i in 0..3 {
        send(&c, &mut bodies, format!("task number {i:02}"));
    }
    let hold_1 = send(
        &c,
        &mut bodies,
        String::from("hold 1 in flight at the clean reboot"),
    );
    for i in 3..6 {
        send(&c, &mut bodies, format!("task number {i:02}"));
    }
    c.wait_for("hold 1 in flight", Duration::from_secs(60), || {
        matches!(sessions_of_task(&c, &hold_1).as_slice(), [(_, None)])
    });
    assert_eq!(answered(&c), 3);

    // 1. `systemctl reboot`. The held run is told to stop and records its
    // own end (`killed`) before the daemon stops.
    let acknowledged = log_lines(&c);
    let down = Instant::now();
    c.reboot().unwrap();
    eprintln!(
        "reboots: clean reboot, down and up again in {:.1?}",
        down.elapsed()
    );
    assert_eq!(boots(&c), 2, "the journal is kept across the reboot");
    assert_units_up(&c, "after the reboot");
    assert_kept(&acknowledged, &log_lines(&c), "after the reboot");
    let held = sessions_of_task(&c, &hold_1);
    assert_eq!(
        held.first().and_then(|s| s.1.as_deref()),
        Some("killed"),
        "the session in flight ended as the run was stopped: {held:?}"
    );
    c.exec_ok(&["touch", "/opt/release-1"]).unwrap();
    // A task after the reboot is answered, behind the queued ones.
    let fresh = c
        .command(&[
            "con",
            "task",
            "--to",
            "slow",
            "--wait",
            "--timeout",
            "120",
            "task after the reboot",
        ])
        .timeout(Duration::from_secs(150))
        .ok()
        .unwrap();
    // The runner echoes its whole prompt, the task at its end.
    assert!(fresh.stdout.contains("task after the reboot"), "{fresh}");
    bodies.push(String::from("task after the reboot"));
    assert_eq!(answered(&c), 8);

    // 2. SIGKILL to the container's systemd with a session in flight: no
    // run can record its end, the daemon dies mid-flow. At the next start
    // the daemon's sweep closes the session, whose agent has no process
    // left, as `abandoned`.
    let hold_2 = send(
        &c,
        &mut bodies,
        String::from("hold 2 in flight at the crash"),
    );
    for i in 6..9 {
        send(&c, &mut bodies, format!("task number {i:02}"));
    }
    c.wait_for("hold 2 in flight", Duration::from_secs(60), || {
        matches!(sessions_of_task(&c, &hold_2).as_slice(), [(_, None)])
    });
    let acknowledged = log_lines(&c);
    let down = Instant::now();
    c.hard_reboot().unwrap();
    eprintln!(
        "reboots: hard reboot, down and up again in {:.1?}",
        down.elapsed()
    );
    assert_eq!(boots(&c), 3, "the journal is kept across the crash");
    assert_units_up(&c, "after the crash");
    assert_kept(&acknowledged, &log_lines(&c), "after the crash");
    // The task is held until its old session is closed: a new run holding
    // it would keep the agent busy, and the sweep leaves busy agents alone.
    c.wait_for(
        "the crashed session recorded as abandoned",
        Duration::from_secs(20),
        || {
            sessions_of_task(&c, &hold_2)
                .first()
                .and_then(|s| s.1.as_deref())
                == Some("abandoned")
        },
    );
    c.exec_ok(&["touch", "/opt/release-2"]).unwrap();

    let total = bodies.len();
    c.wait_for("every task answered", Duration::from_secs(120), || {
        answered(&c) >= total
    });
    // Nothing is answered twice, even later.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(answered(&c), total, "answered more than once");
    let responses = c
        .sh_ok("cat /srv/con/agents/slow/outbox/*.response")
        .unwrap()
        .stdout;
    for body in &bodies {
        assert_eq!(
            responses.matches(body.as_str()).count(),
            1,
            "{body:?} answered once:\n{responses}"
        );
    }
    let left = c
        .sh("ls /srv/con/agents/slow/inbox/ | grep -c '\\.task$'")
        .unwrap();
    assert_eq!(left.stdout_trimmed(), "0", "tasks left in the inbox");

    // The record: one arrival per task, an end for every start, and the
    // ends of the two held tasks' first sessions as above.
    let events = events_of(&c, "slow");
    let mut arrivals: BTreeMap<String, usize> = BTreeMap::new();
    let mut starts = BTreeSet::new();
    let mut ends = BTreeSet::new();
    for e in &events {
        match e["kind"].as_str().unwrap() {
            "inbox.arrived" => {
                *arrivals
                    .entry(e["payload"]["path"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            "session.started" => assert!(starts.insert(e["session"].to_string())),
            "session.ended" => assert!(
                ends.insert(e["session"].to_string()),
                "a session ended twice: {e}"
            ),
            _ => {}
        }
    }
    assert_eq!(arrivals.len(), total, "{arrivals:?}");
    assert!(
        arrivals.values().all(|n| *n == 1),
        "a task recorded twice: {arrivals:?}"
    );
    assert_eq!(starts, ends, "every session that started has an end");
    let outcomes: Vec<Option<String>> = [&hold_1, &hold_2]
        .iter()
        .flat_map(|t| sessions_of_task(&c, t))
        .map(|(_, o)| o)
        .collect();
    assert_eq!(
        outcomes,
        ["killed", "ok", "abandoned", "ok"].map(|o| Some(o.to_owned())),
        "the held tasks' sessions"
    );
    c.exec_ok(&["con", "verify"]).unwrap();
    c.exec_ok(&["con", "verify", "--journal"]).unwrap();
    eprintln!(
        "reboots: {} sessions for {total} tasks; scenario {:.1?}",
        starts.len(),
        scenario.elapsed()
    );
}
