//! Provenance comes from the kernel: real users write the tasks, `lstat`
//! decides.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};

use con_event::payloads::Trust;
use con_event::{Actor, BlobRef};
use con_inbox::{WatcherConfig, classify};
use con_test_support::{TestGroup, TestUser, unique_name};

use crate::common::*;

fn config(group: &TestGroup) -> WatcherConfig {
    WatcherConfig {
        trusted_group: group.name.clone(),
        ..WatcherConfig::default()
    }
}

#[test]
fn root_written_task_is_verified() {
    require_root();
    let group = TestGroup::unique("ctg");
    let dir = inbox_dir();
    let path = drop_task(dir.path(), "t1", b"do it");

    let c = classify(&path, &config(&group)).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Verified);
    assert_eq!(c.trust_reason, "owner uid 0");
    assert_eq!(c.owner_uid, 0);
    assert_eq!(c.content, b"do it");
    assert!(!c.symlink);
    assert_eq!(c.nlink, 1);
}

#[test]
fn agent_written_task_is_unverified_with_its_owner() {
    require_root();
    let group = TestGroup::unique("ctg");
    let agent = TestUser::unique("ct");
    let dir = inbox_dir();
    let path = drop_task_as(&agent, dir.path(), "t1", "please");

    let c = classify(&path, &config(&group)).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Unverified);
    assert_eq!(c.owner_uid, agent.uid);
    assert_eq!(c.owner_gid, agent.gid);
    assert_eq!(
        c.trust_reason,
        format!(
            "owner uid {} ({}) is not trusted (not in group {})",
            agent.uid, agent.name, group.name
        )
    );
    assert_eq!(c.content, b"please");
}

#[test]
fn supplementary_member_of_trusted_group_is_verified() {
    require_root();
    let group = TestGroup::unique("ctg");
    let member = member_of(&group);
    let dir = inbox_dir();
    // Written with --clear-groups: membership is looked up for the owner,
    // not taken from the writing process.
    let path = drop_task_as(&member, dir.path(), "t1", "trusted work");

    let c = classify(&path, &config(&group)).unwrap().unwrap();
    assert_eq!(c.owner_uid, member.uid);
    assert_eq!(c.trust, Trust::Verified, "{}", c.trust_reason);
    assert_eq!(
        c.trust_reason,
        format!(
            "owner uid {} ({}) is in group {}",
            member.uid, member.name, group.name
        )
    );
}

#[test]
fn primary_member_of_trusted_group_is_verified() {
    require_root();
    let group = TestGroup::unique("ctg");
    let member = TestUser::unique_in("ct", &group);
    assert_eq!(member.gid, group.gid);
    let dir = inbox_dir();
    let path = drop_task_as(&member, dir.path(), "t1", "x");

    let c = classify(&path, &config(&group)).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Verified, "{}", c.trust_reason);
}

#[test]
fn missing_trusted_group_trusts_only_root() {
    require_root();
    let agent = TestUser::unique("ct");
    let dir = inbox_dir();
    let cfg = WatcherConfig {
        trusted_group: unique_name("ctgm"),
        ..WatcherConfig::default()
    };
    let by_agent = drop_task_as(&agent, dir.path(), "a", "x");
    let by_root = drop_task(dir.path(), "b", b"x");

    let c = classify(&by_agent, &cfg).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Unverified);
    assert!(
        c.trust_reason.contains("does not exist"),
        "{}",
        c.trust_reason
    );
    let c = classify(&by_root, &cfg).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Verified);
}

#[test]
fn symlink_is_unverified_and_never_followed() {
    require_root();
    let group = TestGroup::unique("ctg");
    let dir = inbox_dir();
    let secrets = tempfile::tempdir().unwrap();
    let target = secrets.path().join("secret");
    fs::write(&target, b"root-only secret").unwrap();
    let link = dir.path().join("t1.task");
    symlink(&target, &link).unwrap();

    let c = classify(&link, &config(&group)).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Unverified);
    assert_eq!(c.trust_reason, "symlink");
    assert!(c.symlink);
    // Root created the link, yet it is not trusted.
    assert_eq!(c.owner_uid, 0);
    assert_eq!(c.content, target.as_os_str().as_encoded_bytes());
    assert_eq!(c.payload("x").content, BlobRef::of(c.content.as_slice()));
    assert_eq!(c.key.inode, fs::symlink_metadata(&link).unwrap().ino());
}

#[test]
fn dangling_symlink_is_recorded_too() {
    require_root();
    let group = TestGroup::unique("ctg");
    let dir = inbox_dir();
    let link = dir.path().join("t1.task");
    symlink("/nonexistent/target", &link).unwrap();

    let c = classify(&link, &config(&group)).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Unverified);
    assert_eq!(c.content, b"/nonexistent/target");
}

#[test]
fn hard_link_to_root_file_is_unverified() {
    require_root();
    let group = TestGroup::unique("ctg");
    let dir = inbox_dir();
    let elsewhere = tempfile::tempdir().unwrap();
    let original = elsewhere.path().join("orig");
    fs::write(&original, b"root content").unwrap();
    let link = dir.path().join("t1.task");
    fs::hard_link(&original, &link).unwrap();

    let c = classify(&link, &config(&group)).unwrap().unwrap();
    assert_eq!(c.owner_uid, 0);
    assert_eq!(c.nlink, 2);
    assert_eq!(c.trust, Trust::Unverified);
    assert_eq!(c.trust_reason, "2 hard links");
}

/// Runs an ACL or mode tool as root and checks it worked.
fn tool(program: &str, args: &[&str], path: &std::path::Path) {
    let out = std::process::Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_root_task_someone_untrusted_may_write_is_unverified_and_says_who() {
    require_root();
    let group = TestGroup::unique("ctg");
    let agent = TestUser::unique("ct");
    let dir = inbox_dir();
    let verdict = |setup: &dyn Fn(&std::path::Path)| {
        let path = drop_task(dir.path(), "t1", b"operator order");
        setup(&path);
        let c = classify(&path, &config(&group)).unwrap().unwrap();
        fs::remove_file(&path).unwrap();
        (c.trust, c.trust_reason)
    };

    // A named user entry, as an inbox's default ACL leaves it.
    let (trust, reason) =
        verdict(&|p| tool("setfacl", &["-m", &format!("u:{}:rw-", agent.name)], p));
    assert_eq!(trust, Trust::Unverified);
    assert_eq!(
        reason,
        format!(
            "owner uid 0, but its ACL lets user {} (uid {}) write it: its content may not be the owner's",
            agent.name, agent.uid
        )
    );
    // The same entry with the mask taking write away grants only read.
    let (trust, reason) = verdict(&|p| {
        tool(
            "setfacl",
            &["-n", "-m", &format!("u:{}:rw-,m::r--", agent.name)],
            p,
        )
    });
    assert_eq!(trust, Trust::Verified, "{reason}");
    // Group and other write bits.
    let (trust, reason) = verdict(&|p| tool("chmod", &["g+w"], p));
    assert_eq!(trust, Trust::Unverified);
    assert!(
        reason.contains("its owning group root (gid 0) may write it"),
        "{reason}"
    );
    let (trust, reason) = verdict(&|p| tool("chmod", &["o+w"], p));
    assert_eq!(trust, Trust::Unverified);
    assert!(reason.contains("others may write it"), "{reason}");
    let (trust, reason) =
        verdict(&|p| tool("setfacl", &["-m", &format!("g:{}:rw-", agent.gid)], p));
    assert_eq!(trust, Trust::Unverified);
    assert!(
        reason.contains(&format!("(gid {}) write it", agent.gid)),
        "{reason}"
    );
    // Write for the trusted group, or for one of its members, is trusted.
    let (trust, reason) = verdict(&|p| {
        tool("chgrp", &[&group.name], p);
        tool("chmod", &["g+w"], p);
    });
    assert_eq!(trust, Trust::Verified, "{reason}");
    let member = TestUser::unique_in("ct", &group);
    let (trust, reason) = verdict(&|p| {
        tool(
            "setfacl",
            &["-m", &format!("u:{}:rw-,g:{}:rw-", member.name, group.name)],
            p,
        )
    });
    assert_eq!(trust, Trust::Verified, "{reason}");
}

#[test]
fn fifo_is_unverified_and_not_opened() {
    require_root();
    let group = TestGroup::unique("ctg");
    let dir = inbox_dir();
    let fifo = dir.path().join("t1.task");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();

    // Opening a FIFO for reading without O_NONBLOCK would hang here.
    let c = classify(&fifo, &config(&group)).unwrap().unwrap();
    assert_eq!(c.trust, Trust::Unverified);
    assert_eq!(c.trust_reason, "not a regular file (fifo)");
    assert!(c.content.is_empty());
}

#[test]
fn vanished_file_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let got = classify(&dir.path().join("gone.task"), &WatcherConfig::default()).unwrap();
    assert!(got.is_none());
}

#[test]
fn relative_paths_are_recorded_absolute() {
    require_root();
    let dir = inbox_dir();
    let path = drop_task(dir.path(), "t1", b"x");
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(&path, &cwd);

    let c = classify(&rel, &WatcherConfig::default()).unwrap().unwrap();
    assert!(
        std::path::Path::new(&c.key.path).is_absolute(),
        "{}",
        c.key.path
    );
    assert_eq!(
        fs::canonicalize(&c.key.path).unwrap(),
        fs::canonicalize(&path).unwrap()
    );
}

/// `path` relative to `base` via `..` components (both absolute).
fn pathdiff(path: &std::path::Path, base: &std::path::Path) -> std::path::PathBuf {
    let mut rel = std::path::PathBuf::new();
    for _ in base.components().skip(1) {
        rel.push("..");
    }
    rel.push(path.strip_prefix("/").unwrap());
    rel
}

#[test]
fn watcher_records_agent_and_member_tasks_with_their_trust() {
    require_root();
    let group = TestGroup::unique("ctg");
    let agent = TestUser::unique("ct");
    let member = member_of(&group);
    let dir = inbox_dir();
    let h = Harness::start(vec![spec("worker", dir.path())], config(&group));

    drop_task_as(&agent, dir.path(), "001", "from agent");
    drop_task_as(&member, dir.path(), "002", "from member");
    drop_task(dir.path(), "003", b"from root");
    let evs = h.take(3, WAIT);

    let got: Vec<_> = evs
        .iter()
        .map(|e| {
            let p = arrived(e);
            (p.owner_uid, p.trust, p.inbox.as_str(), e.task.as_deref())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (agent.uid, Trust::Unverified, "worker", Some("001")),
            (member.uid, Trust::Verified, "worker", Some("002")),
            (0, Trust::Verified, "worker", Some("003")),
        ]
    );
    for e in &evs {
        assert_eq!(e.actor, Actor::system());
        assert!(e.session.is_none() && e.causation.is_none());
    }
    h.assert_quiet(QUIET);
    assert!(h.errors().is_empty(), "{:?}", h.errors());
}

#[test]
fn watcher_records_symlinks_and_hard_links_when_created() {
    require_root();
    let dir = inbox_dir();
    let elsewhere = tempfile::tempdir().unwrap();
    let original = elsewhere.path().join("orig");
    fs::write(&original, b"root content").unwrap();
    let h = Harness::start(vec![spec("worker", dir.path())], WatcherConfig::default());

    // Neither produces a close-write or a rename: the create must do.
    symlink(&original, dir.path().join("001.task")).unwrap();
    fs::hard_link(&original, dir.path().join("002.task")).unwrap();
    let evs = h.take(2, WAIT);

    let a = arrived(&evs[0]);
    assert!(a.symlink);
    assert_eq!(a.trust, Trust::Unverified);
    assert_eq!(
        evs[0].attachments,
        vec![original.as_os_str().as_encoded_bytes().to_vec()]
    );
    let b = arrived(&evs[1]);
    assert_eq!((b.nlink, b.trust), (2, Trust::Unverified));
    assert_eq!(evs[1].attachments, vec![b"root content".to_vec()]);
    h.assert_quiet(QUIET);
}
