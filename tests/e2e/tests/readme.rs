//! The README's quick start, as written, on a fresh Debian with systemd as
//! PID 1. The commands are read from README.md's `sh` blocks under "Quick
//! start" (so an edit that breaks one fails here), run in order inside a
//! booted container, and checked against what their comments say:
//!
//! - `make run` in a copy of the checkout (Makefile, scripts/, configs/,
//!   and the con under test as `target/release/con`) installs con,
//!   bootstraps the default profile and, systemd being PID 1, leaves the
//!   daemon to `con-daemon.service` (one daemon, enabled and active) and
//!   returns; `/etc/con/env` is root:root 0600 and empty;
//! - before the key, `make task` says why there is no answer, naming the
//!   variable and the file, and `con status` names them too;
//! - the `echo … > /etc/con/env` line (with a test key for `sk-…`) is taken
//!   up without a restart (same daemon pid, `config.reloaded` with
//!   `keys_changed`, the problem gone), the file still 0600;
//! - `con task "hello"` prints the task's path and the answer appears at
//!   the path the README names (its `<task-id>` filled in);
//!   `make task MSG="hello"` and `con task --wait "hello"` print it;
//!   `con responses` lists the answers with their tasks; `con status`
//!   shows the three agents, the checks (after `con healthcheck`), and
//!   nothing wrong but what this machine's own load, memory or disk may
//!   cause (CON-SYS-001..003 measure the host running the test);
//!   `con logs -f` prints the log and keeps following it (a task dropped
//!   meanwhile shows up; it is stopped by the harness's time limit, as
//!   Ctrl-C would);
//! - the task dropped before the key is tried again after a pause (the
//!   failed run waits before it exits, or the path unit would start it
//!   again at once and three quick failures would set the task aside) and
//!   answered once the key is there; eight quick `con task --wait` in a row
//!   are all answered (systemd's default start limit would have failed the
//!   concierge's path unit for good after the fifth start);
//! - the daemon-diagnostics query of "Querying the journal" (the other
//!   block there is run by `forensics.rs`, which has the session and the
//!   failing check its queries need) answers with entries.
//!
//! What is not run as written, and why:
//!
//! - `make run`'s `deps` and `build` prerequisites: the container has no
//!   network (bootstrap's nftables rules must not reach the host) and no
//!   Rust toolchain. It runs as `make run -o deps CARGO=true` (`-o` skips a
//!   target, `CARGO=true` makes the build a no-op); the binary the build
//!   would make is already in `target/release/con`. The rest of the recipe
//!   runs as written. The foreground daemon of a host whose PID 1 is not
//!   systemd is not reached here (the crates' integration tests run the
//!   daemon that way).
//! - `make test`: it runs the suite this scenario is part of.
//! - The model: no provider is reachable, so the copied profile gets a
//!   `base_url` in `[base]` pointing at a scripted model server on loopback
//!   (started as root, so the gateway trusts its listener). The provider
//!   stays `openrouter`, whose wire format the server speaks, so the key is
//!   required and named exactly as on a real host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use con_e2e::{Container, Error, Image};
use serde_json::Value;

/// Stands for `sk-…` in the README's key line.
const KEY: &str = "sk-e2e-readme-key";
/// Every answer of the scripted model.
const ANSWER: &str = "Hello from the scripted concierge.";
/// The copy of the checkout inside the container.
const SRC: &str = "/opt/src";
/// Contracts that measure the machine the test runs on (disk, memory, load):
/// whether they pass says nothing about con.
const HOST_MEASURES: [&str; 3] = ["CON-SYS-001", "CON-SYS-002", "CON-SYS-003"];

/// The text of the README section titled `title` (up to the next `## `).
fn section<'a>(readme: &'a str, title: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{title}\n"))
        .unwrap_or_else(|| panic!("README.md has no {title:?} section"));
    let rest = &readme[start + title.len() + 2..];
    rest.find("\n## ").map_or(rest, |end| &rest[..end])
}

/// The contents of the section's ```sh blocks.
fn sh_blocks(section: &str) -> Vec<&str> {
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect()
}

/// A block's commands: each line starting in the first column, without
/// the comment after it; indented lines continue the comment above.
fn commands(block: &str) -> Vec<String> {
    block
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '#']))
        .map(|l| l.split(" #").next().unwrap().trim().to_owned())
        .collect()
}

/// What each line of the usage block is, by what it starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key,
    Task,
    MakeTask,
    TaskWait,
    Responses,
    Status,
    Follow,
}

fn step(command: &str) -> Step {
    match command {
        c if c.starts_with("echo ") && c.ends_with("> /etc/con/env") => Step::Key,
        c if c.starts_with("con task --wait ") => Step::TaskWait,
        c if c.starts_with("con task ") => Step::Task,
        c if c.starts_with("make task ") => Step::MakeTask,
        "con responses" => Step::Responses,
        "con status" => Step::Status,
        "con logs -f" => Step::Follow,
        other => panic!(
            "README quick start: `{other}` is new to tests/e2e/tests/readme.rs: teach it what to check"
        ),
    }
}

fn status_json(c: &Container) -> Value {
    serde_json::from_str(&c.exec_ok(&["con", "status", "--json"]).unwrap().stdout).unwrap()
}

fn problems(c: &Container) -> Vec<Value> {
    status_json(c)["problems"].as_array().unwrap().clone()
}

fn daemon_pid(c: &Container) -> String {
    c.exec_ok(&["systemctl", "show", "-P", "MainPID", "con-daemon.service"])
        .unwrap()
        .stdout_trimmed()
        .to_owned()
}

/// Runs a README line in the checkout copy, through a shell as a reader's
/// would.
fn in_checkout(c: &Container, line: &str) -> con_e2e::Output {
    c.command(&["/bin/sh", "-c", &format!("cd {SRC} && {line}")])
        .timeout(Duration::from_secs(150))
        .output()
        .unwrap()
}

#[test]
fn the_quick_start_runs_as_written_and_does_what_it_says() {
    if !con_e2e::enabled() {
        return;
    }
    let started = Instant::now();
    let readme = std::fs::read_to_string(con_e2e::workspace().join("README.md")).unwrap();
    let quick = section(&readme, "## Quick start");
    let blocks = sh_blocks(quick);
    assert!(blocks.len() >= 2, "two sh blocks in the quick start");
    let setup = commands(blocks[0]);
    let make_run = setup
        .iter()
        .find(|c| c.starts_with("make run"))
        .expect("`make run` in the quick start's first block");
    for command in &setup {
        assert!(
            command == make_run || command == "make test",
            "README quick start: `{command}` is new to tests/e2e/tests/readme.rs: teach it what to check"
        );
    }
    let usage: Vec<(Step, String)> = commands(blocks[1])
        .into_iter()
        .map(|c| (step(&c), c))
        .collect();
    let mut kinds: Vec<Step> = usage.iter().map(|(s, _)| *s).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            Step::Key,
            Step::Task,
            Step::MakeTask,
            Step::TaskWait,
            Step::Responses,
            Step::Status,
            Step::Follow
        ],
        "each documented command once: {usage:?}"
    );
    assert_eq!(usage[0].0, Step::Key, "the key comes first");
    let line_of = |s: Step| usage.iter().find(|(k, _)| *k == s).unwrap().1.clone();
    // Where the README says the answer appears.
    let response_path = blocks[1]
        .split_whitespace()
        .find(|w| w.contains("<task-id>"))
        .expect("the block names the answer's path with <task-id>")
        .to_owned();

    let image = Image::ensure().unwrap();
    let c = Container::boot(&image, "readme").unwrap();

    // The model, then the checkout copy with the con under test as the
    // build's output and the profile pointed at the model.
    let script_bin = con_e2e::script_server_binary();
    assert!(
        script_bin.exists(),
        "{} is missing: cargo build -p con-llm-script",
        script_bin.display()
    );
    c.copy_in(&script_bin, "/usr/local/bin/con-llm-script")
        .unwrap();
    let steps = vec![format!(r#"{{"reply": {{"text": "{ANSWER}"}}}}"#); 30].join(",\n");
    c.sh_ok(&format!(
        "set -e\ncat > /opt/model.json <<'JSON'\n[{steps}]\nJSON\n\
         systemd-run --unit=llm /usr/local/bin/con-llm-script --script /opt/model.json --listen 127.0.0.1:18080\n"
    ))
    .unwrap();
    let workspace = con_e2e::workspace();
    c.copy_in(&workspace.join("Makefile"), &format!("{SRC}/Makefile"))
        .unwrap();
    c.copy_in(&workspace.join("scripts"), &format!("{SRC}/scripts"))
        .unwrap();
    c.copy_in(&workspace.join("configs"), &format!("{SRC}/configs"))
        .unwrap();
    c.sh_ok(&format!(
        "set -e\ncd {SRC}\ninstall -D -m 0755 {con} target/release/con\n\
         sed -i 's|^provider = \"openrouter\"|provider = \"openrouter\"\\nbase_url = \"http://127.0.0.1:18080/v1\"|' configs/default/con.toml\n\
         grep -q '^base_url = \"http://127.0.0.1:18080/v1\"' configs/default/con.toml\n",
        con = con_e2e::CON_PATH
    ))
    .unwrap();

    // make run.
    let run = in_checkout(&c, &format!("{make_run} -o deps CARGO=true"));
    assert!(run.success(), "{run}");
    assert!(
        run.stdout.contains("con-daemon.service runs the daemon"),
        "make run hands over to the unit: {run}"
    );
    for (what, argv) in [
        ("active", ["systemctl", "is-active", "con-daemon.service"]),
        ("enabled", ["systemctl", "is-enabled", "con-daemon.service"]),
    ] {
        let out = c.exec(&argv).unwrap();
        assert_eq!(out.stdout_trimmed(), what, "{out}");
    }
    let daemons = c.sh("pgrep -c -f '^/usr/local/bin/con daemon'").unwrap();
    assert_eq!(daemons.stdout_trimmed(), "1", "one daemon: {daemons}");
    let env = c
        .exec_ok(&["stat", "-c", "%U:%G %a %s", "/etc/con/env"])
        .unwrap();
    assert_eq!(env.stdout_trimmed(), "root:root 600 0", "created empty");

    // Before the key: why there is no answer, and where the key goes.
    let no_key = in_checkout(&c, &line_of(Step::MakeTask));
    let said = format!("{}{}", no_key.stdout, no_key.stderr);
    assert!(
        !no_key.success()
            && said.contains("CON_OPENROUTER_API_KEY")
            && said.contains("/etc/con/env"),
        "{no_key}"
    );
    let no_key_task = said
        .split("con: task ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap_or_else(|| panic!("the failed task's id: {no_key}"))
        .to_owned();
    let missing_key = problems(&c);
    assert!(
        missing_key.iter().any(|p| p["kind"] == "no_model_calls"
            && p["message"].as_str().is_some_and(
                |m| m.contains("CON_OPENROUTER_API_KEY") && m.contains("/etc/con/env")
            )),
        "{missing_key:?}"
    );

    let mut task_id = String::new();
    for (kind, line) in &usage {
        match kind {
            Step::Key => {
                let pid = daemon_pid(&c);
                let line = line.replace("sk-…", KEY);
                assert_ne!(line, *line_of(Step::Key), "the README's key is `sk-…`");
                c.sh_ok(&line).unwrap();
                let env = c
                    .exec_ok(&["stat", "-c", "%U:%G %a", "/etc/con/env"])
                    .unwrap();
                assert_eq!(
                    env.stdout_trimmed(),
                    "root:root 600",
                    "still the daemon's alone"
                );
                c.wait_for("the key taken up", Duration::from_secs(20), || {
                    !problems(&c).iter().any(|p| p["kind"] == "no_model_calls")
                });
                assert_eq!(daemon_pid(&c), pid, "without a restart");
                let reloads = c
                    .exec_ok(&["con", "logs", "--json", "--kind", "config.reloaded"])
                    .unwrap();
                assert!(
                    reloads.stdout.lines().any(|l| {
                        serde_json::from_str::<Value>(l).unwrap()["payload"]["keys_changed"] == true
                    }),
                    "{reloads}"
                );
            }
            Step::Task => {
                let out = c.sh_ok(line).unwrap();
                let path = out.stdout_trimmed();
                assert!(
                    path.starts_with("/srv/con/inbox/") && path.ends_with(".task"),
                    "prints its path: {out}"
                );
                task_id = path
                    .trim_start_matches("/srv/con/inbox/")
                    .trim_end_matches(".task")
                    .to_owned();
                let answer = response_path.replace("<task-id>", &task_id);
                c.wait_for(
                    &format!("the answer in {answer}"),
                    Duration::from_secs(90),
                    || c.exec(&["cat", &answer]).unwrap().stdout == ANSWER,
                );
            }
            Step::MakeTask => {
                let out = in_checkout(&c, line);
                assert!(out.success() && out.stdout.contains(ANSWER), "{out}");
            }
            Step::TaskWait => {
                let out = c
                    .command(&["/bin/sh", "-c", line])
                    .timeout(Duration::from_secs(150))
                    .ok()
                    .unwrap();
                assert_eq!(out.stdout, ANSWER, "{out}");
            }
            Step::Responses => {
                let out = c.sh_ok(line).unwrap();
                assert!(
                    out.stdout.contains(&task_id) && out.stdout.matches(ANSWER).count() >= 3,
                    "the answers with their tasks: {out}"
                );
            }
            Step::Status => {
                // Checks to show: the healthcheck timer's first run may be
                // a minute away. Exit 1 is a failing check, judged below.
                let health = c.exec(&["con", "healthcheck"]).unwrap();
                assert!(matches!(health.code, Some(0 | 1)), "{health}");
                let out = c.sh_ok(line).unwrap();
                for agent in ["concierge", "sysadmin", "strategist"] {
                    assert!(out.stdout.contains(agent), "{agent}: {out}");
                }
                assert!(!out.stdout.contains("cannot make model calls"), "{out}");
                let view = status_json(&c);
                assert!(
                    !view["checks"].as_array().unwrap().is_empty(),
                    "checks shown: {view}"
                );
                // A fresh host has nothing wrong but what this machine's
                // load, memory or disk may cause (the task dropped before
                // the key has been answered since: see below).
                for p in view["problems"].as_array().unwrap() {
                    let host = p["kind"] == "check_failing"
                        && HOST_MEASURES
                            .iter()
                            .any(|id| p["message"].as_str().unwrap().contains(id));
                    assert!(host, "a fresh host has nothing wrong: {p}\n{out}");
                }
            }
            Step::Follow => {
                let follow = std::thread::scope(|s| {
                    let following = s.spawn(|| {
                        c.command(&["/bin/sh", "-c", line])
                            .timeout(Duration::from_secs(8))
                            .output()
                    });
                    std::thread::sleep(Duration::from_secs(2));
                    let later = c.exec_ok(&["con", "task", "while following"]).unwrap();
                    (following.join().unwrap(), later.stdout_trimmed().to_owned())
                });
                let (followed, later) = follow;
                let later_id = later
                    .trim_start_matches("/srv/con/inbox/")
                    .trim_end_matches(".task");
                match followed {
                    Err(Error::Timeout { output, .. }) => {
                        assert!(
                            output.stdout.contains(&task_id) && output.stdout.contains(later_id),
                            "the log so far and the task dropped while following: {output}"
                        );
                    }
                    other => panic!("`{line}` did not keep following: {other:?}"),
                }
            }
        }
    }

    // The task dropped before the key: its run waited before exiting on
    // the failure (systemd's path unit would have started it again at
    // once, three failures in a row setting the task aside), and the next
    // attempt, after the key, answered it.
    let sessions: Vec<Value> = c
        .exec_ok(&["con", "logs", "--json", "--task", &no_key_task])
        .unwrap()
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["kind"] == "session.started" || e["kind"] == "session.ended")
        .collect();
    let ns = |e: &Value| e["ts_unix_nanos"].as_u64().unwrap();
    let outcomes: Vec<&str> = sessions
        .iter()
        .filter(|e| e["kind"] == "session.ended")
        .map(|e| e["payload"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.first().copied(),
        Some("provider_error"),
        "{sessions:?}"
    );
    assert_eq!(
        outcomes.last().copied(),
        Some("ok"),
        "answered after the key: {sessions:?}"
    );
    let first_end = sessions
        .iter()
        .find(|e| e["kind"] == "session.ended")
        .map(ns)
        .unwrap();
    let second_start = sessions
        .iter()
        .filter(|e| e["kind"] == "session.started")
        .nth(1)
        .map(ns)
        .unwrap();
    assert!(
        second_start - first_end >= 4_000_000_000,
        "retried after a pause, not at once: {} ms",
        (second_start - first_end) / 1_000_000
    );

    // Quick tasks one after the other, each a start of the concierge's
    // unit: all answered (systemd's default start limit, 5 starts in 10 s,
    // would fail its path unit for good after the fifth).
    for i in 0..8 {
        let out = c
            .exec_ok(&[
                "con",
                "task",
                "--wait",
                "--timeout",
                "30",
                &format!("quick {i}"),
            ])
            .unwrap();
        assert_eq!(out.stdout, ANSWER, "{out}");
    }

    // The daemon's diagnostics, as "Querying the journal" shows them.
    let journal = section(&readme, "## Querying the journal");
    let queries: Vec<String> = sh_blocks(journal)
        .into_iter()
        .skip(1)
        .flat_map(commands)
        .collect();
    assert!(!queries.is_empty(), "the daemon diagnostics query");
    for query in queries {
        let out = c.sh(&format!("{query} --no-pager")).unwrap();
        assert!(
            out.success()
                && out.stdout.contains("CON_OPENROUTER_API_KEY")
                && !out.stdout.contains("-- No entries --"),
            "README query `{query}` (the missing key was warned about): {out}"
        );
    }
    c.exec_ok(&["con", "verify"]).unwrap();
    eprintln!("readme: scenario {:.1?}", started.elapsed());
}

#[test]
fn commands_are_read_from_blocks_without_their_comments() {
    let block = "make run    # build\n            # more\nmake test   # all\n\necho 'K=v' > /etc/con/env\n                 # the key\n";
    assert_eq!(
        commands(block),
        ["make run", "make test", "echo 'K=v' > /etc/con/env"]
    );
    let readme = "intro\n## A\ntext\n```sh\nx   # y\n```\n## B\n```sh\nz\n```\n";
    assert_eq!(sh_blocks(section(readme, "## A")), ["x   # y\n"]);
    assert_eq!(step("con task --wait \"hi\""), Step::TaskWait);
    assert_eq!(step("con task \"hi\""), Step::Task);
}
