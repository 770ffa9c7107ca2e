//! Enforcement through the real daemon and binary, as real users: a failing
//! contract's `on_fail` (halt, escalate once per incident), and operators'
//! `con agent halt|resume|quarantine|kill`, each recorded before it acts
//! and linked by causation.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use con_event::payloads::{AgentCondition, Outcome, Trust};
use con_event::{Event, Payload};
use con_llm_script::{ScriptedServer, Step};
use con_test_support::all_events;

use crate::CON;
use crate::runs::{Conspiracy, agent, as_agent, con, ok, wait_for};

/// `con logs --json`: every event's JSON view.
fn logs_json(c: &Conspiracy) -> Vec<serde_json::Value> {
    let out = con(c, &["logs", "--json"]);
    ok(&out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes a root-owned contract file into the contracts directory.
fn contract(c: &Conspiracy, name: &str, text: &str) {
    let dir = c.root.path().join("srv/con/contracts");
    std::fs::create_dir_all(&dir).unwrap();
    for d in [
        c.root.path().join("srv"),
        c.root.path().join("srv/con"),
        dir.clone(),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The tasks in `dir`, sorted.
fn tasks(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut t: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "task"))
        .collect();
    t.sort();
    t
}

fn condition(c: &Conspiracy, name: &str) -> String {
    let out = con(c, &["agent", "list", "--json"]);
    ok(&out);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {rows}"))["condition"]
        .as_str()
        .unwrap()
        .to_owned()
}

const HALT_WORKERS: &str = r#"
id: T-HALT
description: more than all the disk free
type: detective
scope: system
checks:
  - name: disk_free_pct
    command:
      run: "df -P \"$CON_SRV_DIR\" | awk 'NR == 2 { sub(\"%\", \"\", $5); print 100 - $5 }'"
      test: "[ \"$RESULT\" -ge 101 ]"
    on_fail:
      action: halt_workers
      escalate: sysadmin
      message: "not enough free space"
"#;

#[test]
fn a_failing_contract_halts_workers_escalates_once_and_resume_releases_the_task() {
    let model = ScriptedServer::start(vec![Step::text("answered after the resume")]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[
            agent("sysadmin", "operator", ""),
            agent("scribe", "worker", ""),
        ],
    );
    contract(&c, "halt.yaml", HALT_WORKERS);
    // Runs are started by the test, as systemd's units would.
    let _daemon = c.daemon();

    for _ in 0..3 {
        let out = con(&c, &["contracts", "check", "T-HALT"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    assert_eq!(condition(&c, "scribe"), "halted");
    assert_eq!(
        condition(&c, "sysadmin"),
        "active",
        "operators are not workers"
    );

    // Escalated once over three failing evaluations: one root-owned task,
    // recorded as verified.
    let inbox = c.agent_dir("sysadmin", "inbox");
    let escalations = tasks(&inbox);
    assert_eq!(escalations.len(), 1, "{escalations:?}");
    let meta = std::fs::metadata(&escalations[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o022), (0, 0));
    let text = std::fs::read_to_string(&escalations[0]).unwrap();
    assert!(
        text.contains("T-HALT") && text.contains("not enough free space"),
        "{text}"
    );
    wait_for("the escalation's arrival", Duration::from_secs(10), || {
        all_events(&c.root.socket()).iter().any(|e| {
            matches!(&e.payload, Payload::InboxArrived(a)
                if Path::new(&a.path) == escalations[0] && a.trust == Trust::Verified)
        })
    });

    let events = all_events(&c.root.socket());
    let results: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(&e.payload, Payload::ContractResult(r) if r.contract == "T-HALT"))
        .collect();
    assert_eq!(results.len(), 3);
    let actions: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.payload, Payload::EnforcementAction(_)))
        .collect();
    let names: Vec<String> = actions
        .iter()
        .map(|e| match &e.payload {
            Payload::EnforcementAction(a) => a.action.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        names,
        ["halt_workers", "escalate", "halt_workers", "halt_workers"],
        "an action on every failing result, the escalation once"
    );
    // Each action is caused by its result; the halt is caused by the first
    // action and comes after it; so does each done.
    assert_eq!(actions[0].envelope.causation, Some(results[0].seq()));
    assert_eq!(actions[1].envelope.causation, Some(results[0].seq()));
    assert_eq!(actions[2].envelope.causation, Some(results[1].seq()));
    let halted: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(&e.payload, Payload::AgentState(s) if s.condition == AgentCondition::Halted))
        .collect();
    assert_eq!(halted.len(), 1, "halting a halted agent does nothing");
    match &halted[0].payload {
        Payload::AgentState(s) => assert_eq!(s.agent, "scribe"),
        _ => unreachable!(),
    }
    assert!(
        actions[0].seq() < halted[0].seq(),
        "recorded before acted on"
    );
    assert_eq!(halted[0].envelope.causation, Some(actions[0].seq()));
    for a in &actions {
        let done = events
            .iter()
            .find(|e| {
                matches!(e.payload, Payload::EnforcementDone(_))
                    && e.envelope.causation == Some(a.seq())
            })
            .unwrap_or_else(|| panic!("no enforcement.done for seq {}", a.seq()));
        match &done.payload {
            Payload::EnforcementDone(d) => assert!(d.ok, "{d:?}"),
            _ => unreachable!(),
        }
        assert!(done.seq() > a.seq());
    }
    let escalation_done = events
        .iter()
        .find_map(|e| match &e.payload {
            Payload::EnforcementDone(d) if d.action == "escalate" => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        escalation_done.paths,
        [escalations[0].display().to_string()]
    );
    // `con logs --json` shows the same links.
    let json = logs_json(&c);
    let by_seq = |seq: u64| json.iter().find(|j| j["seq"] == seq).unwrap().clone();
    assert_eq!(by_seq(halted[0].seq())["causation"], actions[0].seq());
    assert_eq!(by_seq(actions[0].seq())["causation"], results[0].seq());
    assert_eq!(by_seq(actions[0].seq())["kind"], "enforcement.action");

    // The halted worker's new task waits: its run does nothing.
    let task = c.task("scribe", "t-after-halt", "write the report");
    let out = c.run("scribe", &[]);
    ok(&out);
    assert!(task.exists(), "the task stays queued");
    assert!(model.requests().is_empty(), "no model call while halted");

    // Resumed by an operator (recorded with its uid), the task is answered.
    let out = con(&c, &["agent", "resume", "scribe"]);
    ok(&out);
    assert_eq!(condition(&c, "scribe"), "active");
    let resumed = all_events(&c.root.socket())
        .into_iter()
        .rev()
        .find(|e| matches!(&e.payload, Payload::AgentState(s) if s.condition == AgentCondition::Active))
        .unwrap();
    assert_eq!(resumed.envelope.actor.uid, 0);
    ok(&c.run("scribe", &[]));
    assert!(!task.exists());
    assert_eq!(model.requests().len(), 1);
    let answered = std::fs::read_dir(c.agent_dir("scribe", "outbox"))
        .unwrap()
        .count();
    assert_eq!(answered, 1);

    // Still failing: no second escalation; the incident is known from the
    // log across a restart too.
    drop(_daemon);
    let _daemon = c.daemon();
    let out = con(&c, &["contracts", "check", "T-HALT"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(tasks(&inbox).len(), 1, "escalated again after a restart");
}

#[test]
fn operators_alone_may_order_agents_about() {
    let model = ScriptedServer::start(vec![]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("scribe", "worker", "")],
    );
    let _daemon = c.daemon();
    let out = c
        .user("scribe")
        .command(CON)
        .args(c.root.con_flags())
        .args(["agent", "halt", "scribe"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only operators"),
        "{out:?}"
    );
    let out = con(&c, &["agent", "halt", "nobody"]);
    assert!(!out.status.success());
    assert_eq!(condition(&c, "scribe"), "active");
    // The operator's halt is recorded with the operator's uid, and a second
    // halt changes nothing.
    ok(&con(&c, &["agent", "halt", "scribe"]));
    ok(&con(&c, &["agent", "halt", "scribe"]));
    let events = all_events(&c.root.socket());
    let states: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.payload, Payload::AgentState(_)))
        .collect();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].envelope.actor.uid, 0);
    let action = events
        .iter()
        .find(|e| matches!(e.payload, Payload::EnforcementAction(_)))
        .unwrap();
    assert_eq!(action.envelope.actor.uid, 0);
    assert!(action.seq() < states[0].seq());
}

/// Live (not zombie) processes of `uid`, as `ps` lists them.
fn alive(uid: u32) -> Vec<String> {
    let ps = Command::new("ps")
        .args(["-u", &uid.to_string(), "-o", "pid=,stat=,args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|stat| !stat.starts_with('Z'))
        })
        .map(str::to_owned)
        .collect()
}

const KILL_SCRIBE: &str = r#"
id: T-KILL
type: detective
scope: agent:scribe
checks:
  - name: never
    command:
      run: 'echo no'
      test: '[ "$RESULT" = yes ]'
    on_fail:
      action: kill_session
"#;

#[test]
fn kill_during_a_long_exec_leaves_no_process_of_the_agent() {
    long_exec_killed(|c| {
        let out = con(c, &["agent", "kill", "scribe", "--json"]);
        ok(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    });
}

#[test]
fn a_kill_session_contract_ends_its_scope_agents_run() {
    long_exec_killed(|c| {
        contract(c, "kill.yaml", KILL_SCRIBE);
        assert_eq!(
            con(c, &["contracts", "check", "T-KILL"]).status.code(),
            Some(1)
        );
        let events = all_events(&c.root.socket());
        let result = events
            .iter()
            .find(|e| matches!(e.payload, Payload::ContractResult(_)))
            .unwrap();
        let action = events
            .iter()
            .find(|e| matches!(&e.payload, Payload::EnforcementAction(a) if a.action == "kill_session"))
            .unwrap();
        assert_eq!(action.envelope.causation, Some(result.seq()));
        match &action.payload {
            Payload::EnforcementAction(a) => assert_eq!(a.target.as_deref(), Some("scribe")),
            _ => unreachable!(),
        }
        let done = events
            .iter()
            .find(|e| {
                matches!(e.payload, Payload::EnforcementDone(_))
                    && e.envelope.causation == Some(action.seq())
            })
            .unwrap();
        match &done.payload {
            Payload::EnforcementDone(d) => serde_json::json!({
                "action_seq": action.seq(),
                "done_seq": done.seq(),
                "done": {"pids": d.pids},
            }),
            other => panic!("{other:?}"),
        }
    });
}

/// A `con run` of scribe inside `sleep 300 & sleep 301`, then `kill`
/// (which returns the enforced view as JSON): no process of scribe's user
/// survives, and the agent stays active with its task queued.
fn long_exec_killed(kill: impl FnOnce(&Conspiracy) -> serde_json::Value) {
    let model = ScriptedServer::start(vec![
        Step::tool_call(
            "exec",
            serde_json::json!({"command": "sleep 300 & sleep 301", "timeout_secs": 600}),
        ),
        Step::text("never reached"),
    ]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("scribe", "worker", "")],
    );
    let _daemon = c.daemon();
    c.task("scribe", "t-long", "sleep a while");
    let uid = c.user("scribe").uid;
    let mut run = c
        .run_command("scribe", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the long exec", Duration::from_secs(20), || {
        alive(uid).iter().any(|l| l.contains("sleep 301"))
    });

    let view = kill(&c);
    let pids: Vec<u64> = view["done"]["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(pids.len() >= 3, "run, shell and sleeps: {view}");
    assert!(pids.contains(&u64::from(run.id())), "{view}");
    let _ = run.wait();
    assert!(alive(uid).is_empty(), "survived: {:?}", alive(uid));
    assert!(view["action_seq"].as_u64() < view["done_seq"].as_u64());
    assert_eq!(condition(&c, "scribe"), "active", "a kill is not a halt");
    let out = con(&c, &["agent", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["running_sessions"], 0, "{rows}");
    assert_eq!(rows[0]["inbox_depth"], 1, "the task stays: {rows}");
    ended_by_enforcement(&c, "scribe", view["action_seq"].as_u64().unwrap());
}

/// The one session `agent` ran ended as `killed_by_enforcement`, recorded
/// by the daemon in that session, caused by the action at `action_seq`,
/// and shown so in `con agent list` and the ledger.
fn ended_by_enforcement(c: &Conspiracy, agent: &str, action_seq: u64) {
    let events = all_events(&c.root.socket());
    let started: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(&e.payload, Payload::SessionStarted(s) if s.agent == agent))
        .collect();
    assert_eq!(started.len(), 1);
    let ended: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(&e.payload, Payload::SessionEnded(s) if s.agent == agent))
        .collect();
    assert_eq!(ended.len(), 1, "one end, recorded once");
    let end = ended[0];
    match &end.payload {
        Payload::SessionEnded(s) => {
            assert_eq!(s.outcome, Outcome::KilledByEnforcement, "{s:?}");
            assert!(s.detail.starts_with("killed by enforcement: "), "{s:?}");
        }
        _ => unreachable!(),
    }
    assert_eq!(end.envelope.session, started[0].envelope.session);
    assert_eq!(end.envelope.task, started[0].envelope.task);
    assert_eq!(end.envelope.causation, Some(action_seq));
    assert_eq!(
        end.envelope.actor.agent, None,
        "the daemon's record, not the run's"
    );
    let done = events
        .iter()
        .find(|e| {
            matches!(e.payload, Payload::EnforcementDone(_))
                && e.envelope.causation == Some(action_seq)
        })
        .unwrap();
    assert!(
        end.seq() < done.seq(),
        "ended before the enforcement is done"
    );
    let out = con(c, &["agent", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == agent)
        .unwrap();
    assert_eq!(row["last_outcome"], "killed_by_enforcement", "{rows}");
    let out = con(c, &["ledger", "--json"]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("killed_by_enforcement"),
        "{out:?}"
    );
}

#[test]
fn kill_session_during_a_long_exec_runner_session_records_its_end() {
    // An exec runner's command is one word: a script that outlives the test.
    let script = std::env::temp_dir().join(format!("con-long-runner-{}", std::process::id()));
    std::fs::write(&script, "#!/bin/sh\ncat > /dev/null\nsleep 300\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Conspiracy::new(
        "openai-compatible",
        "http://127.0.0.1:9",
        &[agent(
            "scribe",
            "worker",
            &format!("runner = \"exec:{}\"", script.display()),
        )],
    );
    contract(&c, "kill.yaml", KILL_SCRIBE);
    let _daemon = c.daemon();
    c.task("scribe", "t-long", "sleep a while");
    let uid = c.user("scribe").uid;
    let mut run = c
        .run_command("scribe", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the exec runner's session", Duration::from_secs(20), || {
        alive(uid).iter().any(|l| l.contains("sleep 300"))
            && all_events(&c.root.socket())
                .iter()
                .any(|e| matches!(e.payload, Payload::SessionStarted(_)))
    });
    assert_eq!(
        con(&c, &["contracts", "check", "T-KILL"]).status.code(),
        Some(1)
    );
    let _ = run.wait();
    assert!(alive(uid).is_empty(), "survived: {:?}", alive(uid));
    let action = all_events(&c.root.socket())
        .into_iter()
        .find(|e| matches!(&e.payload, Payload::EnforcementAction(a) if a.action == "kill_session"))
        .unwrap();
    ended_by_enforcement(&c, "scribe", action.seq());
    // A second kill finds nothing running and ends nothing again.
    ok(&con(&c, &["agent", "kill", "scribe"]));
    let ends = all_events(&c.root.socket())
        .iter()
        .filter(|e| matches!(e.payload, Payload::SessionEnded(_)))
        .count();
    assert_eq!(ends, 1);
    let _ = std::fs::remove_file(&script);
}

#[test]
fn quarantine_closes_the_inbox_to_other_agents_and_resume_reopens_it() {
    let model = ScriptedServer::start(vec![]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[
            agent("concierge", "operator", ""),
            agent("sysadmin", "operator", ""),
        ],
    );
    c.grant_tasking("concierge", "sysadmin");
    let _daemon = c.daemon();
    let inbox = c.agent_dir("sysadmin", "inbox");
    let getfacl = || {
        let out = Command::new("getfacl")
            .args(["-cp"])
            .arg(&inbox)
            .output()
            .unwrap();
        ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let before = getfacl();
    let write = |name: &str| {
        as_agent(
            &c,
            "concierge",
            &format!("echo hi > {}/{name}.task", inbox.display()),
        )
    };
    assert!(write("before"), "the grant works before the quarantine");

    let out = con(&c, &["agent", "quarantine", "sysadmin", "--json"]);
    ok(&out);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let concierge = &c.user("concierge").name;
    let removed = view["done"]["acl_removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{view}");
    assert_eq!(removed[0]["entry"], format!("user:{concierge}:rwx"));
    assert_eq!(removed[0]["path"], inbox.display().to_string());
    assert_eq!(condition(&c, "sysadmin"), "quarantined");
    // The kernel says no to the other agent now.
    assert!(!write("during"), "the concierge still writes the inbox");
    assert!(!inbox.join("during.task").exists());

    ok(&con(&c, &["agent", "resume", "sysadmin"]));
    assert_eq!(condition(&c, "sysadmin"), "active");
    assert_eq!(
        getfacl(),
        before,
        "resume restores exactly what was removed"
    );
    assert!(write("after"), "the grant works again");
}

#[test]
fn a_halt_in_supervisor_mode_ends_the_run_and_none_starts_until_resumed() {
    let model = ScriptedServer::start(vec![
        Step::tool_call(
            "exec",
            serde_json::json!({"command": "sleep 300", "timeout_secs": 600}),
        ),
        Step::text("answered after the resume"),
    ]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("scribe", "worker", "")],
    );
    let _daemon = c.supervising_daemon();
    let task = c.task("scribe", "t-long", "sleep a while");
    let uid = c.user("scribe").uid;
    wait_for("the long exec", Duration::from_secs(20), || {
        alive(uid).iter().any(|l| l.contains("sleep 300"))
    });
    let out = con(&c, &["agent", "halt", "scribe", "--json"]);
    ok(&out);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["done"]["agents"][0], "scribe", "{view}");
    assert!(alive(uid).is_empty(), "survived: {:?}", alive(uid));
    // The halt's kill ended the running session, and says so.
    let killed = all_events(&c.root.socket())
        .into_iter()
        .find_map(|e| match e.payload {
            Payload::SessionEnded(s) => Some((s.outcome, e.envelope.causation)),
            _ => None,
        });
    assert_eq!(
        killed,
        Some((Outcome::KilledByEnforcement, view["action_seq"].as_u64()))
    );
    let runs_started = || {
        all_events(&c.root.socket())
            .iter()
            .filter(|e| matches!(e.payload, Payload::RunStarted(_)))
            .count()
    };
    wait_for("the killed run's exit", Duration::from_secs(10), || {
        all_events(&c.root.socket())
            .iter()
            .any(|e| matches!(e.payload, Payload::RunExited(_)))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs_started(), 1, "a halted agent was started again");
    assert!(task.exists(), "the task waits");

    ok(&con(&c, &["agent", "resume", "scribe"]));
    wait_for("the task answered", Duration::from_secs(30), || {
        !task.exists()
    });
    assert_eq!(runs_started(), 2);
}

const ALERT: &str = r#"
id: T-ALERT
type: detective
checks:
  - name: flag
    command:
      run: 'test -e "$CON_ROOT/flag" && echo up || echo down'
      test: '[ "$RESULT" = up ]'
    on_fail:
      action: alert
      message: "the flag is down"
"#;

#[test]
fn an_alert_shows_in_status_until_its_check_passes() {
    let model = ScriptedServer::start(vec![]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("scribe", "worker", "")],
    );
    contract(&c, "alert.yaml", ALERT);
    let _daemon = c.daemon();
    let alerts = || {
        let out = con(&c, &["status", "--json"]);
        ok(&out);
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        view["alerts"].as_array().unwrap().clone()
    };
    assert_eq!(
        con(&c, &["contracts", "check", "T-ALERT"]).status.code(),
        Some(1)
    );
    let shown = alerts();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["contract"], "T-ALERT");
    assert!(
        shown[0]["message"]
            .as_str()
            .unwrap()
            .contains("the flag is down"),
        "{shown:?}"
    );
    let text = con(&c, &["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("alerts:"),
        "{text:?}"
    );
    // The failing check is a problem too, until it passes.
    let failing_checks = || {
        let out = con(&c, &["status", "--json"]);
        let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        view["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "check_failing")
            .map(|p| p["message"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let failing = failing_checks();
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert!(
        failing[0].starts_with("contract T-ALERT check "),
        "{failing:?}"
    );
    assert!(failing[0].ends_with(": fail"), "{failing:?}");
    let done = all_events(&c.root.socket())
        .into_iter()
        .find_map(|e| match e.payload {
            Payload::EnforcementDone(d) => Some(d),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        con_event::payloads::Kind::priority(&done),
        con_event::Priority::Warning
    );
    std::fs::write(c.root.path().join("flag"), "").unwrap();
    assert_eq!(
        con(&c, &["contracts", "check", "T-ALERT"]).status.code(),
        Some(0)
    );
    assert!(alerts().is_empty());
    assert!(failing_checks().is_empty());
}

/// A run killed from outside (here: every process of the agent, as the
/// OOM killer or a hard unit stop would) leaves its session open. The
/// daemon records its end as `abandoned` once no process of the agent is
/// left — not while one is (a live run ends its session itself).
#[test]
fn a_session_whose_run_died_is_recorded_abandoned_once_its_agent_has_no_process() {
    let model = ScriptedServer::start(vec![
        Step::tool_call(
            "exec",
            serde_json::json!({"command": "sleep 300", "timeout_secs": 600}),
        ),
        Step::text("never reached"),
    ]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("scribe", "worker", "")],
    );
    let mut daemon = c.daemon();
    c.task("scribe", "t-long", "sleep a while");
    let uid = c.user("scribe").uid;
    let mut run = c
        .run_command("scribe", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the long exec", Duration::from_secs(20), || {
        alive(uid).iter().any(|l| l.contains("sleep 300"))
    });
    let ends = |events: &[serde_json::Value]| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e["kind"] == "session.ended")
            .cloned()
            .collect()
    };

    // A restart while the run lives: its session is not closed for it.
    daemon.terminate();
    let mut daemon = c.daemon();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        ends(&logs_json(&c)).is_empty(),
        "closed a live run's session"
    );

    // Every process of the agent killed behind con's back.
    let _ = Command::new("pkill")
        .args(["-KILL", "-u", &uid.to_string()])
        .status();
    let _ = run.wait();
    wait_for("no process of scribe", Duration::from_secs(10), || {
        alive(uid).is_empty()
    });
    daemon.terminate();
    let _daemon = c.daemon();
    let mut ended = Vec::new();
    wait_for("the abandoned end", Duration::from_secs(10), || {
        ended = ends(&logs_json(&c));
        !ended.is_empty()
    });
    assert_eq!(ended.len(), 1, "{ended:?}");
    let started = logs_json(&c)
        .into_iter()
        .find(|e| e["kind"] == "session.started")
        .unwrap();
    assert_eq!(ended[0]["session"], started["session"]);
    assert_eq!(ended[0]["payload"]["outcome"], "abandoned");
    assert_eq!(ended[0]["payload"]["agent"], "scribe");
    assert!(
        ended[0]["actor"]["agent"].is_null(),
        "recorded by the daemon"
    );
    let out = con(&c, &["agent", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["running_sessions"], 0, "{rows}");
    // Once: a further restart closes nothing more.
    drop(_daemon);
    let _daemon = c.daemon();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ends(&logs_json(&c)).len(), 1);
}
