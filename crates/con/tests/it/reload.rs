//! Configuration reloads, black-box: the real daemon re-reads `con.toml` on
//! SIGHUP and when the file changes, records `config.reloaded`, and serves
//! the new agent set, routes and budgets without a restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use con_event::Payload;
use con_event::payloads::ConfigReloaded;
use con_llm_script::{Reply, ScriptedServer, Step};
use con_test_support::{Daemon, Root, all_events};

use crate::CON;
use crate::runs::{Conspiracy, KEY, KEY_VAR, agent, ok, sessions_of, wait_for};

fn config_file(root: &Root) -> PathBuf {
    root.path().join("etc/con/con.toml")
}

/// Replaces the config whole, as `con commission` and editors do.
fn write_config(root: &Root, text: &str) {
    let path = config_file(root);
    let tmp = path.with_file_name(".con.toml.edit");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn append_config(root: &Root, extra: &str) {
    let text = std::fs::read_to_string(config_file(root)).unwrap();
    write_config(root, &format!("{text}\n{extra}\n"));
}

fn sighup(daemon: &Daemon) {
    let status = Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn reloads(root: &Root) -> Vec<ConfigReloaded> {
    all_events(&root.socket())
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::ConfigReloaded(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Waits for the `n`th `config.reloaded` and returns it.
fn nth_reload(root: &Root, n: usize) -> ConfigReloaded {
    let mut found = Vec::new();
    wait_for("config.reloaded", Duration::from_secs(10), || {
        found = reloads(root);
        found.len() >= n
    });
    found.swap_remove(n - 1)
}

/// Whether the process is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

fn log_of(c: &Conspiracy) -> PathBuf {
    c.root.path().join("daemon.stderr")
}

fn supervising(c: &Conspiracy) -> Daemon {
    Daemon::start_logging(CON, &c.root, &["--supervisor", "daemon"], &log_of(c))
}

/// A supervising daemon with the concierge only; `scout` gets its user and
/// directories (what `con commission` creates) but is not configured yet.
fn with_a_scout_to_come(model: &ScriptedServer) -> Conspiracy {
    let mut c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("concierge", "operator", "")],
    );
    c.add_agent_account("scout");
    c
}

fn answered(c: &Conspiracy, agent: &str, id: &str) -> PathBuf {
    let response = c.agent_dir(agent, "outbox").join(format!("{id}.response"));
    wait_for(
        &format!("{agent}'s response to {id}"),
        Duration::from_secs(30),
        || response.exists(),
    );
    response
}

fn a_new_agent_is_served_after_a_reload(by_signal: bool) {
    let model = ScriptedServer::start(vec![Step::text("Scout reporting.")]);
    let c = with_a_scout_to_come(&model);
    let mut daemon = supervising(&c);
    let pid = daemon.pid();
    append_config(&c.root, "[[agents]]\nname = \"scout\"\ntier = \"worker\"\n");
    if by_signal {
        sighup(&daemon);
    }
    let reload = nth_reload(&c.root, 1);
    if by_signal {
        // The rename is also a file change: whichever the daemon saw first
        // reloaded the new agent; the signal always reloads (an unchanged
        // file then, recorded with no changes).
        wait_for("the signal's reload", Duration::from_secs(10), || {
            reloads(&c.root).iter().any(|r| r.trigger == "signal")
        });
    } else {
        assert_eq!(reload.trigger, "file");
    }
    assert_eq!(reload.agents_added, ["scout"]);
    assert!(reload.agents_removed.is_empty() && reload.agents_changed.is_empty());
    assert!(!reload.keys_changed);
    assert!(reload.restart_needed.is_empty(), "{reload:?}");
    let text = std::fs::read(config_file(&c.root)).unwrap();
    assert_eq!(reload.config_digest, con_event::Digest::of(&text));

    c.task("scout", "t-scout", "Report.");
    let response = answered(&c, "scout", "t-scout");
    assert_eq!(
        std::fs::read_to_string(response).unwrap(),
        "Scout reporting."
    );
    assert_eq!(daemon.pid(), pid, "no restart");
    assert!(daemon.terminate().success(), "{:?}", read(&log_of(&c)));
}

/// `con status` as `agent`'s user: what the daemon makes of its uid.
fn status_as(c: &Conspiracy, agent: &str) -> std::process::Output {
    c.user(agent)
        .command(CON)
        .args(c.root.con_flags())
        .args(["status"])
        .output()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn reload_on_sighup_serves_a_new_agent_without_a_restart() {
    a_new_agent_is_served_after_a_reload(true);
}

#[test]
fn reload_on_a_config_file_change_serves_a_new_agent() {
    a_new_agent_is_served_after_a_reload(false);
}

#[test]
fn reload_refuses_a_broken_file_and_keeps_serving_the_old_config() {
    let model = ScriptedServer::start(vec![Step::text("Still here."), Step::text("New key.")]);
    let c = with_a_scout_to_come(&model);
    let mut daemon = supervising(&c);
    let refusals = |what: &str| {
        read(&log_of(&c))
            .lines()
            .filter(|l| {
                l.starts_with("con daemon: reload refused, the running configuration stays: ")
            })
            .filter(|l| l.contains(what))
            .count()
    };
    let waited = |what: &str, n: usize| {
        let start = std::time::Instant::now();
        while refusals(what) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no refusal {n} naming {what:?}: {}",
                read(&log_of(&c))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let before = std::fs::read_to_string(config_file(&c.root)).unwrap();
    // A valid agent and an invalid one: all or nothing.
    append_config(
        &c.root,
        "[[agents]]\nname = \"scout\"\ntier = \"worker\"\n\n[[agents]]\nname = \"Bad_Name\"\ntier = \"worker\"\n",
    );
    sighup(&daemon);
    waited("con.toml", 1);
    let log = read(&log_of(&c));
    assert!(
        log.lines()
            .filter(|l| l.contains("reload"))
            .all(|l| l.contains("con.toml: agents[") && l.contains("Bad_Name")),
        "one line naming the file, the agent and the problem: {log}"
    );
    assert!(
        reloads(&c.root).is_empty(),
        "a refused reload records nothing"
    );
    // The running agent set stays: the concierge is an agent, scout is not.
    ok(&status_as(&c, "concierge"));
    let out = status_as(&c, "scout");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("neither an operator nor an agent"),
        "{out:?}"
    );

    // A secrets file others could read is refused too, and so is every
    // reload while it stays that way: the running keys stay.
    let env = c.root.path().join("etc/con/env");
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&env, format!("{KEY_VAR}=sk-new-key\n")).unwrap();
    let broken = refusals("con.toml");
    waited("con.toml", broken + 1);
    write_config(&c.root, &before);
    waited("mode 0600", 1);
    assert!(!read(&log_of(&c)).contains("sk-new-key"));
    assert!(reloads(&c.root).is_empty());
    c.task("concierge", "t-1", "Are you there?");
    let response = answered(&c, "concierge", "t-1");
    assert_eq!(std::fs::read_to_string(response).unwrap(), "Still here.");
    let auth = |i: usize| model.requests()[i].headers["authorization"].clone();
    assert_eq!(auth(0), format!("Bearer {KEY}"));

    // Fixed, it loads: new keys for the next call.
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    sighup(&daemon);
    let reload = nth_reload(&c.root, 1);
    assert!(reload.keys_changed);
    assert!(reload.agents_added.is_empty() && reload.agents_changed.is_empty());
    c.task("concierge", "t-2", "And now?");
    answered(&c, "concierge", "t-2");
    assert_eq!(auth(1), "Bearer sk-new-key");
    assert!(daemon.terminate().success());
}

#[test]
fn reload_applies_a_budget_change() {
    // The first call costs $0.001 (1000 input tokens at $1/Mtok); with the
    // budget lowered to $0.0001 by a reload, the second is never made.
    let model = ScriptedServer::start(vec![
        Step::Reply(Reply::text("first").with_usage(1000, 0)),
        Step::text("never sent"),
    ]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[agent("scribe", "worker", "")],
    );
    let daemon = c.daemon();
    c.task("scribe", "t-1", "first");
    ok(&c.run("scribe", &[]));
    assert_eq!(model.requests().len(), 1);

    let text = std::fs::read_to_string(config_file(&c.root)).unwrap();
    let edited = text.replace(
        "tier = \"worker\"",
        "tier = \"worker\"\ndaily_budget_usd = 0.0001",
    );
    assert_ne!(edited, text);
    write_config(&c.root, &edited);
    sighup(&daemon);
    let reload = nth_reload(&c.root, 1);
    assert_eq!(reload.agents_changed, ["scribe"]);

    let second = c.task("scribe", "t-2", "write a poem");
    // The run waits for a budget that does not come (2 s here), then
    // leaves the task queued: no session, no call.
    let out = c.run("scribe", &["--session-secs", "2"]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_eq!(model.requests().len(), 1, "no model call once over budget");
    assert!(second.exists(), "the task stays queued");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waiting until the budget allows") && stderr.contains("daily budget"),
        "{stderr}"
    );
    let events = all_events(&c.root.socket());
    assert_eq!(sessions_of(&events, "scribe").len(), 1, "only t-1's");
}

#[test]
fn reload_removes_an_agent_from_identity_and_supervision() {
    let model = ScriptedServer::start(vec![Step::text("hello")]);
    let c = Conspiracy::new(
        "openai-compatible",
        &model.base_url(),
        &[
            agent("concierge", "operator", ""),
            agent("scout", "worker", ""),
        ],
    );
    let mut daemon = supervising(&c);
    let text = std::fs::read_to_string(config_file(&c.root)).unwrap();
    let (kept, _) = text.split_once("[[agents]]\nname = \"scout\"").unwrap();
    write_config(&c.root, kept);
    sighup(&daemon);
    let reload = nth_reload(&c.root, 1);
    assert_eq!(reload.agents_removed, ["scout"]);

    let out = status_as(&c, "scout");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither an operator nor an agent"),
        "{out:?}"
    );
    // Not supervised any more: a task in its inbox starts no run.
    c.task("scout", "t-1", "anyone?");
    std::thread::sleep(Duration::from_secs(2));
    let started = all_events(&c.root.socket())
        .iter()
        .filter(|e| matches!(&e.payload, Payload::RunStarted(r) if r.agent == "scout"))
        .count();
    assert_eq!(started, 0);
    assert!(model.requests().is_empty());
    assert!(daemon.terminate().success());
}

#[test]
fn reload_sighup_does_not_stop_the_daemon() {
    let root = Root::new();
    let mut daemon = Daemon::start(CON, &root);
    let pid = daemon.pid();
    sighup(&daemon);
    sighup(&daemon);
    // Each signal is a reload of an unchanged file (two, or one if the
    // second arrived while the first was pending).
    let reload = nth_reload(&root, 1);
    assert_eq!(reload.trigger, "signal");
    assert!(reload.agents_added.is_empty() && reload.agents_removed.is_empty());
    assert!(!reload.keys_changed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "SIGHUP must not end the daemon");
    assert!(daemon.terminate().success());
}
