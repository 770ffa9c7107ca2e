//! Idle client connections: the daemon closes a connection that sends no
//! request for `[infra] client_idle_timeout`, but not a live run's link
//! while the run waits on a long tool.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use con_event::payloads::Outcome;
use con_protocol::Client;
use con_test_support::all_events;

use crate::runs::{Conspiracy, agent, ended, ok, session_events, sessions_of};

#[test]
fn an_idle_connection_is_closed_but_a_run_waiting_on_a_long_tool_keeps_its_link() {
    // The exec runner's command is the run's one long tool: 4 s with
    // nothing sent on the run's link, twice the idle limit.
    let slow_cat = tempfile::Builder::new()
        .prefix("con-slow-cat-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(slow_cat.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = slow_cat.path().join("slow-cat");
    std::fs::write(&script, "#!/bin/sh\nsleep 4\nexec cat\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Conspiracy::new(
        "openai-compatible",
        "http://127.0.0.1:9",
        &[agent(
            "echo",
            "worker",
            &format!("runner = \"exec:{}\"", script.display()),
        )],
    );
    let config = c.root.path().join("etc/con/con.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[infra]\nclient_idle_timeout = \"2s\"\n");
    std::fs::write(&config, toml).unwrap();
    let _daemon = c.daemon();

    // A connection that says nothing is closed after the limit.
    let mut idle = UnixStream::connect(c.root.socket()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).expect("closed, not timed out");
    assert_eq!(n, 0, "closed without an answer nobody asked for");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // One that keeps asking is not.
    let mut busy = Client::connect(&c.root.socket()).unwrap();
    for _ in 0..4 {
        busy.status().unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    busy.status().unwrap();

    // A run's link, idle for 4 s while its tool runs, is kept.
    c.task("echo", "t-slow", "take your time");
    let started = Instant::now();
    ok(&c.run("echo", &[]));
    assert!(started.elapsed() >= Duration::from_secs(4));
    let response =
        std::fs::read_to_string(c.agent_dir("echo", "outbox").join("t-slow.response")).unwrap();
    assert!(response.contains("take your time"), "{response}");
    let events = all_events(&c.root.socket());
    let session = session_events(&events, sessions_of(&events, "echo")[0]);
    let (outcome, detail) = ended(&session);
    assert_eq!(outcome, Outcome::Ok, "{detail}");
}
