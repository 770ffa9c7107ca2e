//! The container mode (`make up`, `make down`): `con-machine up` returns
//! with a container left running, the profile bootstrapped and the daemon
//! active in it; a task dropped in it is recorded; `con-machine down`
//! stops and removes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn machine(run_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_con-machine"))
        .args(args)
        .env("CON_E2E_RUN_DIR", run_dir)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn up_leaves_a_bootstrapped_container_running_and_down_removes_it() {
    if !con_e2e::enabled() {
        return;
    }
    let run = tempfile::tempdir_in("/var/tmp").unwrap();
    let up = machine(run.path(), &["up"]);
    assert!(up.status.success(), "{}", text(&up));
    let record = std::fs::read_to_string(run.path().join("machine.up")).unwrap();
    let mut lines = record.lines();
    let holder: i32 = lines.next().unwrap().parse().unwrap();
    let name = lines.next().unwrap().to_owned();
    let pid1 = lines.next().unwrap().to_owned();
    assert!(
        text(&up).contains(&format!("nsenter -t {pid1}")),
        "{}",
        text(&up)
    );

    let inside = |args: &[&str]| {
        Command::new("nsenter")
            .args(["-t", &pid1, "-m", "-u", "-i", "-n", "-p"])
            .args(args)
            .output()
            .unwrap()
    };
    let active = inside(&["systemctl", "is-active", "con-daemon.service"]);
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    let task = inside(&["con", "task", "hello"]);
    assert!(task.status.success(), "{}", text(&task));
    let logs = inside(&["con", "logs", "--kind", "inbox.arrived"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("arrived"),
        "{}",
        text(&logs)
    );
    // A second `up` finds it.
    let again = machine(run.path(), &["up"]);
    assert!(text(&again).contains("already up"), "{}", text(&again));

    let down = machine(run.path(), &["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder), None).is_err(),
        "the holder is gone"
    );
    assert!(!run.path().join("machine.up").exists());
    assert!(
        !run.path().join(&name).exists(),
        "the container's layer is removed"
    );
    let gone = Command::new("kill").args(["-0", &pid1]).output().unwrap();
    assert!(!gone.status.success(), "the container's systemd is gone");
}
