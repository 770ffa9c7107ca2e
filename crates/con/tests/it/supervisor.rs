//! The supervisor, black-box: `con daemon` starting runs as real agent users.
//! A stand-in for `con run` records who it ran as and what it was given.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use con_event::payloads::AgentCondition;
use con_event::{Event, Payload};
use con_protocol::Client;
use con_test_support::{Daemon, Root, TestUser};

use crate::CON;

const STAND_IN: &str = r#"#!/bin/sh
# Stand-in for `con run`: called as <program> --root R --user-prefix P run AGENT.
root="$2"; agent="$6"; trace="$root/trace"
if ! mkdir "$trace/running-$agent" 2>/dev/null; then touch "$trace/OVERLAP-$agent"; fi
{ echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"; env | sort; } > "$trace/.tmp-$agent-$$"
mv "$trace/.tmp-$agent-$$" "$trace/run-$agent-$$"
dir="$root/srv/con/agents/$agent"
if [ ! -e "$trace/keep-$agent" ]; then
  for f in "$dir"/inbox/*.task; do [ -e "$f" ] && mv "$f" "$dir/processed/"; done
fi
sleep 0.3
rmdir "$trace/running-$agent"
"#;

struct Conspiracy {
    root: Root,
    users: Vec<TestUser>,
}

impl Conspiracy {
    /// A temp root with `agents` (name, extra TOML lines), their users and
    /// inboxes, and the stand-in runner.
    fn new(agents: &[(&str, &str)]) -> Self {
        let root = Root::new();
        let mut toml = String::from("[system]\nname = \"supervisor-test\"\n");
        let mut users = Vec::new();
        std::fs::create_dir_all(root.path().join("srv/con/inbox")).unwrap();
        let trace = root.path().join("trace");
        std::fs::create_dir_all(&trace).unwrap();
        std::fs::set_permissions(&trace, std::fs::Permissions::from_mode(0o1777)).unwrap();
        for (name, extra) in agents {
            toml.push_str(&format!(
                "\n[[agents]]\nname = \"{name}\"\ntier = \"operator\"\n{extra}\n"
            ));
            let user = TestUser::create(&root.user(name));
            for sub in ["inbox", "processed"] {
                let dir = root.path().join("srv/con/agents").join(name).join(sub);
                std::fs::create_dir_all(&dir).unwrap();
                user.chown(&dir);
            }
            std::fs::set_permissions(
                root.path().join("srv/con/agents").join(name),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
            users.push(user);
        }
        std::fs::write(root.path().join("etc/con/con.toml"), toml).unwrap();
        let stand_in = root.path().join("stand-in-run");
        std::fs::write(&stand_in, STAND_IN).unwrap();
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { root, users }
    }

    fn start(&self, env: &[(&str, &str)]) -> Daemon {
        let stand_in = self.root.path().join("stand-in-run");
        Daemon::start_with(
            CON,
            &self.root,
            &[
                "--supervisor",
                "daemon",
                "--run-program",
                stand_in.to_str().unwrap(),
            ],
            env,
        )
    }

    fn user(&self, agent: &str) -> &TestUser {
        self.users
            .iter()
            .find(|u| u.name == self.root.user(agent))
            .unwrap()
    }

    fn traces(&self, agent: &str) -> Vec<String> {
        let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(self.root.path().join("trace"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("run-{agent}-")))
            })
            .map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap_or_default()))
            .collect();
        out.sort();
        out.into_iter().map(|(_, t)| t).collect()
    }

    fn drop_task(&self, inbox: &Path, name: &str) {
        let tmp = inbox.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, "do the thing").unwrap();
        std::fs::rename(&tmp, inbox.join(format!("{name}.task"))).unwrap();
    }

    fn events(&self) -> Vec<Event> {
        con_test_support::all_events(&self.root.socket())
    }

    fn set_condition(&self, agent: &str, condition: AgentCondition) {
        Client::connect(&self.root.socket())
            .unwrap()
            .set_condition(con_protocol::SetCondition {
                agent: agent.into(),
                condition,
                reason: "test".into(),
            })
            .unwrap();
    }
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_outer_task_is_routed_to_the_concierge_which_runs_as_itself_without_secrets() {
    let c = Conspiracy::new(&[("concierge", "")]);
    let _daemon = c.start(&[("CON_OPENROUTER_API_KEY", "sk-secret-test-key")]);
    let out = Command::new(CON)
        .args([
            "--root",
            c.root.path().to_str().unwrap(),
            "task",
            "what agents are running?",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = wait_until("a concierge run", Duration::from_secs(15), || {
        c.traces("concierge").into_iter().next()
    });
    let user = c.user("concierge");
    assert!(
        trace.starts_with(&format!(
            "uid={} gid={} groups={}",
            user.uid, user.gid, user.gid
        )),
        "{trace}"
    );
    assert!(
        !trace.contains("sk-secret"),
        "the daemon's secrets leaked into the run:\n{trace}"
    );
    assert!(
        trace.contains("PATH=") && trace.contains(&format!("USER={}", user.name)),
        "{trace}"
    );
    let processed = c.root.path().join("srv/con/agents/concierge/processed");
    wait_until("the task processed", Duration::from_secs(10), || {
        (std::fs::read_dir(&processed).unwrap().count() == 1).then_some(())
    });
    let events = wait_until("run.exited", Duration::from_secs(10), || {
        let e = c.events();
        e.iter()
            .any(|e| matches!(e.payload, Payload::RunExited(_)))
            .then_some(e)
    });
    let routed = events.iter().find_map(|e| match &e.payload {
        Payload::TaskRouted(r) => Some(r.clone()),
        _ => None,
    });
    let routed = routed.expect("task.routed");
    assert_eq!(
        (routed.from.as_str(), routed.to.as_str()),
        ("outer", "concierge")
    );
    let started = events.iter().find_map(|e| match &e.payload {
        Payload::RunStarted(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(started.unwrap().trigger, "inbox");
    // Both arrivals are recorded, verified (root wrote the task), and the
    // concierge's before its run was started.
    let arrived = |inbox: &str| {
        events
            .iter()
            .find_map(|e| match &e.payload {
                Payload::InboxArrived(a) if a.inbox == inbox => Some((e.seq(), a.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no inbox.arrived for {inbox}: {events:?}"))
    };
    let (_, outer) = arrived("outer");
    let (arrived_seq, at_concierge) = arrived("concierge");
    assert_eq!(outer.trust, con_event::payloads::Trust::Verified);
    assert_eq!(at_concierge.owner_uid, 0, "routing keeps the owner");
    assert_eq!(at_concierge.content.digest, outer.content.digest);
    let started_seq = events
        .iter()
        .find(|e| matches!(e.payload, Payload::RunStarted(_)))
        .unwrap()
        .seq();
    assert!(arrived_seq < started_seq, "recorded before acted on");
    let exited = events.iter().find_map(|e| match &e.payload {
        Payload::RunExited(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(exited.unwrap().exit_code, Some(0));
}

#[test]
fn a_halted_agent_is_not_started_and_max_sessions_holds() {
    let c = Conspiracy::new(&[("worker", "max_sessions = 1")]);
    let _daemon = c.start(&[]);
    c.set_condition("worker", AgentCondition::Halted);
    // Runs never consume the task, so an active agent would be restarted
    // over and over.
    std::fs::write(c.root.path().join("trace/keep-worker"), "").unwrap();
    let inbox = c.root.path().join("srv/con/agents/worker/inbox");
    c.drop_task(&inbox, "t1");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(c.traces("worker").is_empty(), "a halted agent was started");

    c.set_condition("worker", AgentCondition::Active);
    wait_until("three runs", Duration::from_secs(20), || {
        (c.traces("worker").len() >= 3).then_some(())
    });
    assert!(
        !c.root.path().join("trace/OVERLAP-worker").exists(),
        "two runs overlapped with max_sessions = 1"
    );
}

#[test]
fn cron_agents_fire_on_their_schedule_only() {
    let c = Conspiracy::new(&[
        ("every", "mode = \"cron\"\ncron = \"* * * * *\""),
        ("newyear", "mode = \"cron\"\ncron = \"0 0 1 1 *\""),
    ]);
    let _daemon = c.start(&[]);
    wait_until("the every-minute agent", Duration::from_secs(15), || {
        c.traces("every").into_iter().next()
    });
    let started: Vec<String> = c
        .events()
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::RunStarted(r) => Some(format!("{} {}", r.agent, r.trigger)),
            _ => None,
        })
        .collect();
    assert!(started.contains(&"every cron".to_owned()), "{started:?}");
    assert!(
        !started.iter().any(|s| s.starts_with("newyear")),
        "{started:?}"
    );
}
