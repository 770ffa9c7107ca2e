//! A fleet behind one journal server: two con hosts (containers under a
//! real systemd), each answering tasks, ship their journals as
//! `journalctl -o export` streams to one `systemd-journal-remote` on the
//! receiving side (this machine, into a directory the test creates). There
//! `con replay --journal --directory` lists both hosts' sessions apart,
//! replays each exactly as its own host's daemon does, and `con verify
//! --journal` checks each host's chain on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use con_e2e::{Container, Image};
use serde_json::Value;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// A con host answering two tasks with an exec runner; returns its log id.
fn host(c: &Container) -> String {
    c.bootstrap_default_with(
        r#"[[agents]]
name = "echo"
tier = "worker"
runner = "exec:cat""#,
    )
    .unwrap();
    c.sh_ok(&format!(
        r#"set -e
con task --to echo "first from {name}" >/dev/null
con task --to echo "second from {name}" >/dev/null
"#,
        name = c.name()
    ))
    .unwrap();
    c.wait_for("two answers", Duration::from_secs(60), || {
        c.sh("ls /srv/con/agents/echo/outbox/*.response 2>/dev/null | wc -l")
            .unwrap()
            .stdout_trimmed()
            == "2"
    });
    c.wait_for("both sessions ended", Duration::from_secs(30), || {
        c.exec_ok(&[
            "journalctl",
            "-t",
            "con",
            "CON_EVENT=session_ended",
            "-o",
            "cat",
            "--no-pager",
        ])
        .unwrap()
        .stdout
        .lines()
        .count()
            == 2
    });
    let first = c
        .exec_ok(&[
            "journalctl",
            "-t",
            "con",
            "-o",
            "json",
            "-n",
            "1",
            "--no-pager",
        ])
        .unwrap();
    let entry: Value = serde_json::from_str(first.stdout.lines().next().unwrap()).unwrap();
    entry["CON_LOG_ID"].as_str().unwrap().to_owned()
}

fn con(args: &[&str]) -> std::process::Output {
    Command::new(con_e2e::con_binary().unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn two_hosts_behind_one_journal_server_replay_and_verify_apart() {
    if !con_e2e::enabled() {
        return;
    }
    assert!(
        Path::new(JOURNAL_REMOTE).exists(),
        "{JOURNAL_REMOTE} is missing: scripts/install-deps.sh installs systemd-journal-remote"
    );
    let image = Image::ensure().unwrap();
    let alpha = Container::boot(&image, "fleet-alpha").unwrap();
    let beta = Container::boot(&image, "fleet-beta").unwrap();
    let hosts = [(&alpha, host(&alpha)), (&beta, host(&beta))];
    assert_ne!(hosts[0].1, hosts[1].1, "each host has its own log");

    // Ship: each host's con entries as an export stream into one
    // journal-remote writing the receiving directory.
    let server = tempfile::tempdir_in("/var/tmp").unwrap();
    let remote = server.path().join("remote");
    std::fs::create_dir(&remote).unwrap();
    for (c, _) in &hosts {
        let export = c
            .exec_ok(&["journalctl", "-t", "con", "-o", "export", "--no-pager"])
            .unwrap();
        let mut receiver = Command::new(JOURNAL_REMOTE)
            .arg(format!(
                "--output={}/{}.journal",
                remote.display(),
                c.name()
            ))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(receiver.stdin.as_mut().unwrap(), export.stdout.as_bytes())
            .unwrap();
        drop(receiver.stdin.take());
        let out = receiver.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "journal-remote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = remote.to_str().unwrap();

    // Listed apart: two sessions per host, each under its own log id and
    // host name.
    let listed = ok(
        con(&[
            "replay",
            "--journal",
            "--directory",
            dir,
            "--list",
            "--json",
        ]),
        "replay --list",
    );
    let rows: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{listed}");
    for (c, log_id) in &hosts {
        let mine: Vec<&Value> = rows
            .iter()
            .filter(|r| r["log_id"] == log_id.as_str())
            .collect();
        assert_eq!(mine.len(), 2, "{log_id}: {listed}");
        assert!(
            mine.iter().all(|r| r["hostname"] == c.name()),
            "{}: {listed}",
            c.name()
        );
        // Each session replays from the server's directory as its own
        // host's daemon replays it.
        for row in mine {
            let session = row["session"].as_str().unwrap();
            let central = ok(
                con(&[
                    "replay",
                    "--json",
                    "--journal",
                    "--directory",
                    dir,
                    "--log-id",
                    log_id,
                    session,
                ]),
                "replay from the server",
            );
            let local = c.exec_ok(&["con", "replay", "--json", session]).unwrap();
            assert_eq!(central, local.stdout, "{session} of {}", c.name());
            assert!(central.contains(&format!("from {}", c.name())), "{central}");
        }
        // Each host's chain verifies on its own.
        ok(
            con(&[
                "verify",
                "--journal",
                "--directory",
                dir,
                "--log-id",
                log_id,
            ]),
            "verify --journal of one host",
        );
    }
    let sessions: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 4, "session ids are distinct");
}
