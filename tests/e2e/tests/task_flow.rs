//! A task end to end under a real systemd: bootstrap the default profile,
//! point it at a scripted model server inside the container, drop a task in
//! the outer inbox as root, and get the concierge's answer — routed by the
//! daemon, started by the concierge's path unit in its hardened sandbox,
//! the model called through the daemon's gateway, every step in the log
//! and in the journal; the officer's ledger accounts for it without its
//! content. Then the concierge's path unit stopped (what a failed one is
//! to its inbox): `con status` names the unit once a task has waited
//! `[inbox] stalled_after`, and the unit back, the task is answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use con_e2e::{CONFIGS_PATH, Container, Image};
use serde_json::Value;

const ANSWER: &str = "Hello from the concierge under systemd.";
const KEY: &str = "sk-e2e-secret-key";
/// The concierge's task; neither it nor the answer is in the ledger.
const TASK: &str = "Say hello.";
/// Run by the sysadmin inside its unit: a whitelisted sudo command works,
/// anything else is refused.
const SUDO_PROBE: &str = "sudo -n /usr/bin/journalctl --no-pager -n 1 -t con >/dev/null && echo SUDO-ALLOWED; sudo -n /bin/cat /etc/con/env || echo SUDO-REFUSED";

/// Run by the strategist (an officer) inside its unit: standing policy and
/// an artifact, both writable for it there.
const POLICY_WRITE: &str = "echo Answer within a day. > /srv/con/policy/global.md && echo brief > /srv/con/artifacts/brief.md && echo WROTE";

/// The concierge's answer to the task that waited while its path unit was
/// stopped.
const STALLED_ANSWER: &str = "Answered once the path unit was back.";

/// The `tasks_stalled` problems `con status --json` lists now.
fn stalled_problems(c: &Container) -> Vec<Value> {
    let out = c.exec_ok(&["con", "status", "--json"]).unwrap();
    let view: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("con status --json ({e}): {out}"));
    view["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems array: {view}"))
        .iter()
        .filter(|p| p["kind"] == "tasks_stalled")
        .cloned()
        .collect()
}

#[test]
fn a_task_is_answered_by_a_systemd_started_agent_run() {
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
    let c = Container::boot(&image, "taskflow").unwrap();
    c.copy_in(&bin, "/usr/local/bin/con-llm-script").unwrap();

    // The model, on loopback inside the container: the concierge's answer,
    // then the sysadmin's sudo probe and answer.
    c.sh_ok(&format!(
        r#"cat > /opt/script.json <<'JSON'
[{{"reply": {{"text": "{ANSWER}", "usage": {{"input_tokens": 10, "output_tokens": 5}}}}}},
 {{"reply": {{"tool_calls": [{{"name": "exec", "arguments": {{"command": "{SUDO_PROBE}"}}}}]}}}},
 {{"reply": {{"text": "probed"}}}},
 {{"reply": {{"tool_calls": [{{"name": "exec", "arguments": {{"command": "{POLICY_WRITE}"}}}}]}}}},
 {{"reply": {{"text": "policy set"}}}},
 {{"reply": {{"text": "{STALLED_ANSWER}"}}}}]
JSON
systemd-run --unit=llm-script /usr/local/bin/con-llm-script --script /opt/script.json --listen 127.0.0.1:18080"#
    ))
    .unwrap();

    // The default profile, pointed at it; the key in /etc/con/env.
    c.sh_ok(&format!(
        r#"set -e
cp -a {CONFIGS_PATH}/default /opt/profile
sed -i 's|^provider = "openrouter"|provider = "openai-compatible"\nbase_url = "http://127.0.0.1:18080/v1"|' /opt/profile/con.toml
grep -q 'base_url = "http://127.0.0.1:18080/v1"' /opt/profile/con.toml
sed -i 's|^stalled_after = .*|stalled_after = "2s"|' /opt/profile/con.toml
grep -q '^stalled_after = "2s"$' /opt/profile/con.toml
install -d -m 0755 /etc/con
install -m 0600 /dev/null /etc/con/env
echo 'CON_OPENROUTER_API_KEY={KEY}' > /etc/con/env
con bootstrap --profile /opt/profile --json > /opt/bootstrap.json
"#
    ))
    .unwrap();
    let env_mode = c
        .exec_ok(&["stat", "-c", "%U:%G %a", "/etc/con/env"])
        .unwrap();
    assert_eq!(env_mode.stdout_trimmed(), "root:root 600");
    let key_kept = c.exec_ok(&["cat", "/etc/con/env"]).unwrap();
    assert!(key_kept.stdout.contains(KEY), "bootstrap keeps the secrets");

    c.exec_ok(&["con", "task", TASK]).unwrap();
    let start = Instant::now();
    let response = loop {
        let out = c
            .sh("cat /srv/con/agents/concierge/outbox/*.response 2>/dev/null")
            .unwrap();
        if out.success() && !out.stdout.is_empty() {
            break out.stdout;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no response after 60 s;\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(response, ANSWER);

    // systemd started the run (not the daemon), as the agent.
    let unit = c
        .exec_ok(&[
            "systemctl",
            "show",
            "-P",
            "ExecMainStatus,User",
            "con-agent@concierge.service",
        ])
        .unwrap();
    assert!(unit.stdout.contains("a-concierge"), "{unit}");
    let processed = c
        .sh_ok("ls /srv/con/agents/concierge/processed/ | grep -c '\\.task$'")
        .unwrap();
    assert_eq!(processed.stdout_trimmed(), "1");

    // The journal alone tells the session's story.
    let journal = c
        .exec_ok(&[
            "journalctl",
            "-t",
            "con",
            "CON_AGENT=concierge",
            "-o",
            "json",
            "--no-pager",
        ])
        .unwrap();
    for event in [
        "inbox_arrived",
        "session_started",
        "llm_request",
        "llm_response",
        "task_routed",
        "session_ended",
    ] {
        assert!(
            journal
                .stdout
                .contains(&format!("\"CON_EVENT\":\"{event}\"")),
            "{event} missing from the journal:\n{}",
            journal.stdout
        );
    }
    // The key reached the model server only: not the log, not the journal.
    assert!(!journal.stdout.contains(KEY));

    // The sysadmin's sudo whitelist works inside its hardened unit, and
    // nothing beyond it does.
    c.exec_ok(&["con", "task", "--to", "sysadmin", "Probe sudo."])
        .unwrap();
    let start = Instant::now();
    loop {
        let out = c
            .sh("cat /srv/con/agents/sysadmin/outbox/*.response 2>/dev/null")
            .unwrap();
        if out.success() && out.stdout == "probed" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no sysadmin response after 60 s;\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // From the container's journal alone: every event rebuilt and its
    // chain verified, and the tool outputs read back from their contents.
    let journal = c
        .exec_ok(&[
            "journalctl",
            "-t",
            "con",
            "-o",
            "json",
            "--all",
            "--no-pager",
        ])
        .unwrap();
    let rebuilt = con_journal::rebuild_from_json(journal.stdout.as_bytes()).unwrap();
    let (log_id, events) = rebuilt
        .logs
        .iter()
        .find(|(id, _)| !id.is_empty())
        .expect("con's events in the journal");
    con_journal::verify_chain(events).unwrap();
    assert!(rebuilt.missing_blobs(log_id).is_empty());
    let outputs: String = events
        .iter()
        .filter(|e| e.envelope.actor.agent.as_deref() == Some("sysadmin"))
        .filter_map(|e| match &e.payload {
            con_event::Payload::ToolResult(r) => rebuilt.blobs.get(&r.output.digest),
            _ => None,
        })
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .collect();
    assert!(outputs.contains("SUDO-ALLOWED"), "{outputs}");
    assert!(outputs.contains("SUDO-REFUSED"), "{outputs}");
    for content in rebuilt.blobs.values() {
        assert!(
            !String::from_utf8_lossy(content).contains(KEY),
            "the key reached the journal"
        );
    }
    assert!(!journal.stdout.contains(KEY));

    // The strategist (cron: its timer, or a start by hand) writes standing
    // policy and an artifact from inside its hardened unit; every agent
    // reads the policy, and an operator cannot write it.
    c.exec_ok(&["con", "task", "--to", "strategist", "Set the policy."])
        .unwrap();
    c.exec_ok(&["systemctl", "start", "con-agent@strategist.service"])
        .unwrap();
    let start = Instant::now();
    loop {
        let out = c
            .sh("cat /srv/con/agents/strategist/outbox/*.response 2>/dev/null")
            .unwrap();
        if out.success() && out.stdout == "policy set" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no strategist response after 60 s;\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let owner = c
        .exec_ok(&[
            "stat",
            "-c",
            "%U",
            "/srv/con/policy/global.md",
            "/srv/con/artifacts/brief.md",
        ])
        .unwrap();
    assert_eq!(owner.stdout, "a-strategist\na-strategist\n");
    let read = c
        .exec_ok(&[
            "runuser",
            "-u",
            "a-concierge",
            "--",
            "cat",
            "/srv/con/policy/global.md",
        ])
        .unwrap();
    assert_eq!(read.stdout_trimmed(), "Answer within a day.");
    let write = c
        .sh("runuser -u a-concierge -- sh -c 'echo x > /srv/con/policy/operators.md'")
        .unwrap();
    assert!(!write.success(), "an operator wrote policy: {write}");

    // The officer's ledger: the concierge's finished task with its outcome,
    // nothing it was told or said (`con ledger` as the strategist, through
    // the daemon).
    let as_strategist = |argv: &[&str]| {
        let mut full = vec!["runuser", "-u", "a-strategist", "--"];
        full.extend_from_slice(argv);
        c.exec(&full).unwrap()
    };
    let ledger = as_strategist(&["con", "ledger", "--json"]);
    assert!(ledger.success(), "{ledger}");
    for content in [TASK, ANSWER, "Probe sudo.", "Set the policy.", "SUDO-", KEY] {
        assert!(
            !ledger.stdout.contains(content),
            "the ledger shows {content:?}: {ledger}"
        );
    }
    let entries: Vec<Value> = ledger
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|e: &Value| e["agent"] == "concierge")
        .collect();
    assert_eq!(entries.len(), 1, "{ledger}");
    let e = &entries[0];
    assert_eq!(e["outcome"], "ok", "{e}");
    assert_eq!(e["trust"], "verified", "{e}");
    assert_eq!(e["model_calls"], 1, "{e}");
    let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "agent",
            "cost_micro_usd",
            "duration_ms",
            "ended_unix_nanos",
            "model",
            "model_calls",
            "outcome",
            "seq",
            "session",
            "task",
            "time",
            "trust"
        ],
        "{e}"
    );
    let session = e["session"].as_str().unwrap();
    // The daily file, written by the daemon, readable by the officer: the
    // same row.
    let file = format!("/srv/con/ledger/{}.tsv", &e["time"].as_str().unwrap()[..10]);
    let mut tsv = String::new();
    c.wait_for("the ledger file's row", Duration::from_secs(10), || {
        let out = as_strategist(&["cat", &file]);
        let read = out.success();
        tsv = out.stdout;
        read && tsv.contains(session)
    });
    let mut lines = tsv.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let row: Vec<&str> = lines
        .map(|l| l.split('\t').collect::<Vec<&str>>())
        .find(|r| r.contains(&session))
        .unwrap();
    assert_eq!(header.len(), row.len(), "{tsv}");
    for (column, value) in header.iter().zip(&row) {
        let json = match &e[*column] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(*value, json, "column {column} of {file}:\n{tsv}");
    }
    assert!(!tsv.contains(TASK) && !tsv.contains(ANSWER), "{tsv}");
    // What the session said stays the concierge's.
    let replay = as_strategist(&["con", "replay", session]);
    assert!(
        !replay.success() && replay.stderr.contains("among the events you may read"),
        "the strategist replayed the concierge's session: {replay}"
    );
    // An operator [fleet_view] does not name gets no ledger.
    let refused = c
        .exec(&["runuser", "-u", "a-concierge", "--", "con", "ledger"])
        .unwrap();
    assert!(
        !refused.success()
            && refused
                .stderr
                .contains("the ledger is for operators, officers"),
        "{refused}"
    );

    // A stopped path unit is what a failed one is to the inbox: nothing
    // takes the task. Once it has waited `[inbox] stalled_after` (2 s here)
    // `con status` says so and names the unit to look at; the unit back,
    // the task is answered and the problem is gone.
    c.exec_ok(&["systemctl", "stop", "con-agent@concierge.path"])
        .unwrap();
    // Before the drop, so that it is at least the task's age.
    let dropped = Instant::now();
    let waiting = c
        .exec_ok(&["con", "task", "--to", "concierge", "Wait for the unit."])
        .unwrap();
    let waiting = waiting.stdout_trimmed().to_owned();
    let stem = std::path::Path::new(&waiting)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut problems = Vec::new();
    c.wait_for("a tasks_stalled problem", Duration::from_secs(30), || {
        problems = stalled_problems(&c);
        !problems.is_empty()
    });
    assert!(
        dropped.elapsed() >= Duration::from_secs(2),
        "stalled before [inbox] stalled_after: {problems:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p["agent"], "concierge", "{p}");
    let message = p["message"].as_str().unwrap();
    assert!(
        message.starts_with("agent concierge has 1 task(s) waiting")
            && message.contains("`systemctl status con-agent@concierge.path`"),
        "{p}"
    );
    assert!(
        c.exec(&["test", "-e", &waiting]).unwrap().success(),
        "the task was taken while the path unit was stopped;\n{}",
        c.diagnostics()
    );
    c.exec_ok(&["systemctl", "start", "con-agent@concierge.path"])
        .unwrap();
    let answer = format!("/srv/con/agents/concierge/outbox/{stem}.response");
    c.wait_for("the waiting task answered", Duration::from_secs(60), || {
        c.exec(&["cat", &answer])
            .unwrap()
            .stdout
            .contains(STALLED_ANSWER)
    });
    c.wait_for("the problem gone", Duration::from_secs(10), || {
        stalled_problems(&c).is_empty()
    });
}
