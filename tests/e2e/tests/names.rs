//! Task file names an attacker (or a careless script) would choose, and
//! two agents working at once, under a real systemd with path-unit-started
//! exec runs (`cat`: the response is the prompt the agent was given, so
//! what the name did to the prompt is visible in the answer).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use con_e2e::Container;
use serde_json::Value;

fn count(c: &Container, dir: &str, suffix: &str) -> usize {
    c.sh(&format!("find {dir} -maxdepth 1 -name '*{suffix}' | wc -l"))
        .unwrap()
        .stdout_trimmed()
        .parse()
        .unwrap()
}

#[test]
fn hostile_task_names_are_recorded_and_routed_and_two_agents_work_at_once() {
    let Some(c) = con_e2e::scenario("names").unwrap() else {
        return;
    };
    c.bootstrap_default_with(
        r#"[[agents]]
name = "left"
tier = "worker"
runner = "exec:cat"

[[agents]]
name = "right"
tier = "worker"
runner = "exec:cat""#,
    )
    .unwrap();

    // Names written by root straight into the inbox (so trust is not what
    // is under test), each with a body naming it.
    let long = format!("{}.task", "n".repeat(250));
    let hostile: Vec<String> = vec![
        "with space.task".into(),
        "new\nline.task".into(),
        "quote's \"double\".task".into(),
        "-leading-dash.task".into(),
        "$(touch pwned-by-name) `id`;.task".into(),
        "\u{1b}[2Jescape.task".into(),
    ];
    let script: String = hostile
        .iter()
        .chain(std::iter::once(&long))
        .enumerate()
        .map(|(i, name)| {
            let quoted = name.replace('\'', "'\\''");
            format!("printf 'body {i:02}\\n' > '/srv/con/agents/left/inbox/{quoted}'\n")
        })
        .collect();
    // Two agents at once: five tasks each, dropped together.
    let mut both = script;
    for i in 0..5 {
        both.push_str(&format!(
            "printf 'left job {i}\\n' > /srv/con/agents/left/inbox/job-{i}.task\nprintf 'right job {i}\\n' > /srv/con/agents/right/inbox/job-{i}.task\n"
        ));
    }
    c.sh_ok(&both).unwrap();

    let left_total = hostile.len() + 5;
    c.wait_for("left's tasks", Duration::from_secs(240), || {
        count(&c, "/srv/con/agents/left/outbox", ".response") >= left_total
            && count(&c, "/srv/con/agents/left/failed", ".task") == 1
    });
    c.wait_for("right's tasks", Duration::from_secs(120), || {
        count(&c, "/srv/con/agents/right/outbox", ".response") >= 5
    });
    assert_eq!(
        count(&c, "/srv/con/agents/left/inbox", ".task"),
        0,
        "left's inbox is empty"
    );

    // Each hostile name: recorded once with its exact path, answered with
    // its own body, and nothing in it was executed.
    let events: Vec<Value> = c
        .exec_ok(&["con", "logs", "--json", "--agent", "left"])
        .unwrap()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, name) in hostile.iter().enumerate() {
        let path = format!("/srv/con/agents/left/inbox/{name}");
        let arrivals = events
            .iter()
            .filter(|e| e["kind"] == "inbox.arrived" && e["payload"]["path"] == path.as_str())
            .count();
        assert_eq!(arrivals, 1, "{name:?} recorded once");
        let stem = name.strip_suffix(".task").unwrap();
        let response = c
            .exec_ok(&[
                "cat",
                &format!("/srv/con/agents/left/outbox/{stem}.response"),
            ])
            .unwrap();
        assert!(
            response.stdout.contains(&format!("body {i:02}")),
            "{name:?} answered with its own body: {response}"
        );
    }
    assert!(
        c.sh_ok("find / -xdev -name 'pwned-by-name*' 2>/dev/null; true")
            .unwrap()
            .stdout
            .is_empty(),
        "a task name was executed"
    );
    // The 255-byte name: no response can be named after it, so it is set
    // aside, its sender told, and the tasks behind it still ran.
    let set_aside = c
        .exec_ok(&["test", "-e", &format!("/srv/con/agents/left/failed/{long}")])
        .unwrap();
    assert!(set_aside.success());
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "session.ended" && e["payload"]["outcome"] == "set_aside"),
        "the long name's session ended set aside"
    );

    // The two agents answered their own tasks.
    for agent in ["left", "right"] {
        for i in 0..5 {
            let out = c
                .exec_ok(&[
                    "cat",
                    &format!("/srv/con/agents/{agent}/outbox/job-{i}.response"),
                ])
                .unwrap();
            assert!(
                out.stdout.contains(&format!("{agent} job {i}")),
                "{agent} job {i}: {out}"
            );
        }
    }
    c.exec_ok(&["con", "verify"]).unwrap();
}
