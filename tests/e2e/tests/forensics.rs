//! Audit and forensics under a real systemd: a task the concierge hands to
//! the sysadmin (two scripted models, two path-unit-started runs), then
//! everything a sysadmin investigating it would use — `journalctl` by
//! session with the documented fields and the catalog text, the event log
//! and the journal closed to agents (as the agents, the kernel says no),
//! and `con replay` through the daemon, `con replay --journal`, `con
//! replay --trace`, `con verify` and `con verify --journal` agreeing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use con_e2e::Container;
use serde_json::Value;

const KEY: &str = "sk-e2e-forensics-key";

fn journal_lines(c: &Container, filters: &[&str]) -> Vec<Value> {
    let mut argv = vec!["journalctl", "-t", "con", "-o", "json", "--no-pager"];
    argv.extend_from_slice(filters);
    let out = c.exec_ok(&argv).unwrap();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn a_delegation_is_on_record_closed_to_agents_and_every_source_agrees() {
    let Some(c) = con_e2e::scenario("forensics").unwrap() else {
        return;
    };

    // One model per agent, so the order in which the two runs call them
    // cannot matter: the concierge writes a task into the sysadmin's inbox,
    // the sysadmin runs a command and answers.
    c.bootstrap_default_on_scripts(
        r#"[{"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "/srv/con/agents/sysadmin/inbox/job-1.task", "content": "How full is /var?"}}]}},
 {"reply": {"text": "Routed to the sysadmin as job-1."}}]"#,
        r#"[{"reply": {"tool_calls": [{"name": "exec", "arguments": {"command": "echo VAR-USAGE-42"}}]}},
 {"reply": {"text": "/var is 42% full."}}]"#,
        KEY,
    )
    .unwrap();

    let task = c
        .exec_ok(&["con", "task", "Ask the sysadmin how full /var is."])
        .unwrap();
    let task_id = std::path::Path::new(task.stdout_trimmed())
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    c.wait_for("the sysadmin's answer", Duration::from_secs(90), || {
        c.sh("cat /srv/con/agents/sysadmin/outbox/*.response 2>/dev/null")
            .unwrap()
            .stdout
            == "/var is 42% full."
    });
    c.wait_for("both sessions ended", Duration::from_secs(30), || {
        journal_lines(&c, &["CON_EVENT=session_ended"]).len() == 2
    });

    // journalctl by session: the documented fields on every entry.
    let started = journal_lines(&c, &["CON_EVENT=session_started", "CON_AGENT=sysadmin"]);
    assert_eq!(started.len(), 1, "{started:?}");
    let session = started[0]["CON_SESSION"].as_str().unwrap().to_owned();
    let entries = journal_lines(&c, &[&format!("CON_SESSION={session}")]);
    let events: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("CON_EVENT").is_some())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["CON_EVENT"].as_str().unwrap())
        .collect();
    for kind in [
        "session_started",
        "llm_request",
        "llm_response",
        "tool_call",
        "tool_result",
        "session_ended",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let log_id = events[0]["CON_LOG_ID"].as_str().unwrap().to_owned();
    let mut seqs = Vec::new();
    for e in &events {
        for field in [
            "MESSAGE",
            "MESSAGE_ID",
            "PRIORITY",
            "CON_SEQ",
            "CON_AGENT",
            "CON_UID",
            "CON_HASH",
            "CON_PREV_HASH",
            "CON_RECORD",
            "CON_KIND_VERSION",
            "CON_PAYLOAD_VERSION",
            "CON_SYSTEM",
        ] {
            assert!(e.get(field).is_some(), "{field} missing from {e}");
        }
        assert_eq!(e["CON_AGENT"], "sysadmin", "{e}");
        assert_eq!(e["CON_LOG_ID"], log_id.as_str());
        let payload: Value = serde_json::from_str(e["CON_PAYLOAD"].as_str().unwrap()).unwrap();
        assert!(payload.is_object(), "{payload}");
        seqs.push(e["CON_SEQ"].as_str().unwrap().parse::<u64>().unwrap());
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in log order: {seqs:?}"
    );

    // The catalog explains the entries (installed by bootstrap).
    let explained = c
        .exec_ok(&[
            "journalctl",
            "-x",
            "-t",
            "con",
            &format!("CON_SESSION={session}"),
            "--no-pager",
        ])
        .unwrap();
    assert!(
        explained
            .stdout
            .contains("An agent run picked a task from its inbox and began a session."),
        "{explained}"
    );

    // Agents can neither read nor change the record: the event log and the
    // journal files, as both agents.
    for agent in ["a-concierge", "a-sysadmin"] {
        for attempt in [
            "cat /var/lib/con/events/db > /dev/null",
            "ls /var/lib/con/events",
            "truncate -s 0 /var/lib/con/events/db",
            "rm -rf /var/lib/con/events",
            "cat \"$(find /var/log/journal -name 'system*.journal' -print -quit 2>/dev/null || echo /var/log/journal/x/system.journal)\" > /dev/null",
            "truncate -s 0 \"$(find /var/log/journal -name 'system*.journal' -print -quit 2>/dev/null || echo /var/log/journal/x/system.journal)\"",
        ] {
            let out = c.sh_as(agent, attempt).unwrap();
            assert!(!out.success(), "as {agent}, `{attempt}` succeeded: {out}");
        }
        let read = c
            .sh_as(
                agent,
                &format!("journalctl -t con CON_SESSION={session} -o cat --no-pager 2>&1"),
            )
            .unwrap();
        assert!(
            !read.stdout.contains("session"),
            "as {agent}, journalctl shows con's entries: {read}"
        );
    }
    let size = c
        .exec_ok(&["stat", "-c", "%s", "/var/lib/con/events/db"])
        .unwrap();
    assert_ne!(size.stdout_trimmed(), "0", "the log was truncated");

    // Every source tells the same story, and the chain verifies against
    // the journal.
    let live = c
        .exec_ok(&["con", "replay", "--json", &session])
        .unwrap()
        .stdout;
    let from_journal = c
        .exec_ok(&["con", "replay", "--json", "--journal", &session])
        .unwrap()
        .stdout;
    assert_eq!(live, from_journal, "daemon and journal disagree");
    let replayed: Vec<Value> = live
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replayed[0]["kind"], "inbox.arrived");
    assert_eq!(replayed[0]["contents"][0]["utf8"], "How full is /var?");
    assert!(
        live.contains("VAR-USAGE-42"),
        "the tool output is in the replay: {live}"
    );
    let text = c.exec_ok(&["con", "replay", &session]).unwrap().stdout;
    for expected in ["inbox.arrived", "tool.call          exec", "session.ended"] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    let tree = c
        .exec_ok(&["con", "replay", "--trace", &task_id])
        .unwrap()
        .stdout;
    assert!(
        tree.contains("concierge") && tree.contains("sysadmin") && tree.contains("job-1"),
        "one tree across both agents:\n{tree}"
    );
    c.exec_ok(&["con", "verify"]).unwrap();
    let cross = c.exec_ok(&["con", "verify", "--journal"]).unwrap();
    assert!(!cross.stdout.is_empty(), "{cross}");
    // The agent replays its own session and not the other's.
    let own = c
        .sh_as("a-sysadmin", &format!("con replay {session}"))
        .unwrap();
    assert!(
        own.success() && own.stdout.contains("session.ended"),
        "{own}"
    );
    let concierge_session =
        journal_lines(&c, &["CON_EVENT=session_started", "CON_AGENT=concierge"])[0]["CON_SESSION"]
            .as_str()
            .unwrap()
            .to_owned();
    let theirs = c
        .sh_as("a-sysadmin", &format!("con replay {concierge_session}"))
        .unwrap();
    assert!(
        !theirs.success() && theirs.stdout.is_empty(),
        "the sysadmin read the concierge's session: {theirs}"
    );

    // The README's journal queries, as written (with this session's id):
    // each answers with entries. A failing check first, so the warning
    // priority has something to show.
    c.sh_ok(
        r#"cat > /srv/con/contracts/ZZ-ALERT.yaml <<'YAML'
id: ZZ-ALERT
description: fails on purpose
type: detective
frequency: 1h
scope: system
checks:
  - name: never
    command:
      run: "echo 1"
      test: "[ \"$RESULT\" = 2 ]"
    on_fail:
      action: alert
      message: "forensics alert"
YAML
chmod 0644 /srv/con/contracts/ZZ-ALERT.yaml"#,
    )
    .unwrap();
    let check = c.exec(&["con", "contracts", "check", "ZZ-ALERT"]).unwrap();
    assert_eq!(check.code, Some(1), "{check}");
    let readme = std::fs::read_to_string(con_e2e::workspace().join("README.md")).unwrap();
    let section = readme
        .split("## Querying the journal")
        .nth(1)
        .expect("README has a 'Querying the journal' section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block in it");
    let queries: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(queries.len() >= 4, "{block}");
    for query in queries {
        // The comment after a query is for the reader.
        let command = query.split(" #").next().unwrap().trim();
        let line = command.replace("<session-id>", &session);
        let out = c.sh(&format!("{line} --no-pager")).unwrap();
        assert!(
            out.success()
                && !out.stdout.trim().is_empty()
                && !out.stdout.contains("-- No entries --"),
            "README query `{line}`: {out}"
        );
    }
}
