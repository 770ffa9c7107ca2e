//! `con healthcheck`: the built-in checks of con's own health, recorded.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use con_event::Payload;
use con_event::payloads::CheckStatus;
use con_test_support::{Daemon, Root, all_events};

use crate::CON;

fn healthcheck(root: &Root) -> (bool, serde_json::Value) {
    let out = Command::new(CON)
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "healthcheck",
            "--json",
        ])
        .output()
        .unwrap();
    let rows = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), rows)
}

fn status_of(rows: &serde_json::Value, check: &str) -> String {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {rows}"))["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn checks_are_recorded_and_a_readable_secrets_file_fails() {
    let root = Root::new();
    let env = root.path().join("etc/con/env");
    std::fs::write(&env, "CON_X=1\n").unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _daemon = Daemon::start(CON, &root);

    let (ok, rows) = healthcheck(&root);
    assert_eq!(status_of(&rows, "database-permissions"), "pass");
    assert_eq!(status_of(&rows, "secrets-permissions"), "pass");
    let journal = status_of(&rows, "journal-mirror");
    assert_eq!(ok, journal == "pass", "{rows}");

    // A key file others can read is a failure, and the exit code says so.
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, rows) = healthcheck(&root);
    assert!(!ok);
    assert_eq!(status_of(&rows, "secrets-permissions"), "fail");

    let recorded: Vec<(String, CheckStatus)> = all_events(&root.socket())
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::ContractResult(r) => Some((r.check, r.status)),
            _ => None,
        })
        .collect();
    assert!(recorded.contains(&("secrets-permissions".into(), CheckStatus::Pass)));
    assert!(recorded.contains(&("secrets-permissions".into(), CheckStatus::Fail)));
    assert_eq!(recorded.len(), 8, "{recorded:?}");
}

#[test]
fn no_daemon_is_a_failure() {
    let root = Root::new();
    let out = Command::new(CON)
        .args(["--root", root.path().to_str().unwrap(), "healthcheck"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the con daemon"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
