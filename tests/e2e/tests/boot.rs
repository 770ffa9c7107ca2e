#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The ground every scenario stands on: the image boots to `running`, con is
//! installed and runs, the journal works, commands run as other users with
//! their own rights, and containers never outlive their test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use con_e2e::{BootState, CONFIGS_PATH, Container, Error, Image};

fn boot(hint: &str) -> Container {
    let image = Image::ensure().unwrap();
    Container::boot(&image, hint).unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
    })
}

#[test]
fn boots_to_running_with_con_installed() {
    if !con_e2e::enabled() {
        return;
    }
    let c = boot("boot");
    // The image is meant to boot clean: degraded means a unit of ours broke.
    assert_eq!(*c.boot_state(), BootState::Running);
    let state = c.exec(&["systemctl", "is-system-running"]).unwrap();
    assert_eq!(state.stdout_trimmed(), "running", "{state}");
    assert_eq!(
        c.exec(&["systemctl", "show", "-P", "Id", "--", "-.slice"])
            .unwrap()
            .stdout_trimmed(),
        "-.slice",
        "systemctl talks to the container's own manager"
    );
    assert_eq!(c.exec_ok(&["hostname"]).unwrap().stdout_trimmed(), c.name());
    // --private-network: loopback only.
    let links = c.exec_ok(&["ip", "-o", "link", "show"]).unwrap();
    let names: Vec<&str> = links
        .stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .collect();
    assert_eq!(names, ["lo"], "{links}");

    // The con binary just built, not some other one.
    let version = c.exec_ok(&["con", "--version"]).unwrap();
    assert_eq!(
        version.stdout_trimmed(),
        format!("con {}", env!("CARGO_PKG_VERSION"))
    );
    let check = c
        .exec_ok(&[
            "con",
            "config",
            "check",
            &format!("{CONFIGS_PATH}/default/con.toml"),
        ])
        .unwrap();
    for agent in ["concierge", "sysadmin", "strategist"] {
        assert!(check.stdout.contains(agent), "{check}");
    }
    // Each container has its own identity, initialised from nspawn's --uuid.
    let machine_id = c.exec_ok(&["cat", "/etc/machine-id"]).unwrap();
    assert_eq!(machine_id.stdout_trimmed().len(), 32, "{machine_id}");
}

#[test]
fn journal_round_trip() {
    if !con_e2e::enabled() {
        return;
    }
    let c = boot("journal");
    let marker = format!("con-e2e marker {}", uuid_like());
    c.command(&["systemd-cat", "-t", "con-e2e", "-p", "notice"])
        .stdin(marker.clone())
        .ok()
        .unwrap();
    // journald ingests asynchronously; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = c
            .exec_ok(&["journalctl", "-t", "con-e2e", "-o", "cat", "--no-pager"])
            .unwrap();
        if read.stdout.lines().any(|l| l == marker) {
            break;
        }
        assert!(Instant::now() < deadline, "marker never showed up: {read}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fields = c
        .exec_ok(&["journalctl", "-t", "con-e2e", "-o", "export", "--no-pager"])
        .unwrap();
    assert!(fields.stdout.contains("PRIORITY=5\n"), "{fields}");
    assert!(
        fields.stdout.contains(&format!("_HOSTNAME={}\n", c.name())),
        "{fields}"
    );
    assert!(c.journal().unwrap().contains(&marker));
}

#[test]
fn files_go_in_and_users_get_only_their_rights() {
    if !con_e2e::enabled() {
        return;
    }
    let c = boot("copy-user");
    let host = tempfile::tempdir().unwrap();
    let script = host.path().join("probe.sh");
    std::fs::write(&script, "#!/bin/sh\necho probe ran as $(id -un)\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tree = host.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/data.txt"), "payload").unwrap();

    c.copy_in(&script, "/usr/local/bin/probe").unwrap();
    c.copy_in(&tree, "/srv/tree").unwrap();
    assert_eq!(
        c.exec_ok(&["cat", "/srv/tree/sub/data.txt"])
            .unwrap()
            .stdout,
        "payload"
    );
    let owner = c
        .exec_ok(&[
            "stat",
            "-c",
            "%U:%G %a",
            "/srv/tree/sub/data.txt",
            "/usr/local/bin/probe",
        ])
        .unwrap();
    assert_eq!(owner.stdout, "root:root 644\nroot:root 755\n");

    c.exec_ok(&["useradd", "--create-home", "--user-group", "e2e-probe"])
        .unwrap();
    let ran = c.command(&["probe"]).user("e2e-probe").ok().unwrap();
    assert_eq!(ran.stdout_trimmed(), "probe ran as e2e-probe");
    // As the attacker: the kernel refuses an unprivileged user root's files.
    let denied = c
        .command(&["sh", "-c", "echo x > /root/owned"])
        .user("e2e-probe")
        .output()
        .unwrap();
    assert!(!denied.success(), "{denied}");
    assert!(denied.stderr.contains("Permission denied"), "{denied}");
    c.exec_ok(&["test", "!", "-e", "/root/owned"]).unwrap();
    // Variables given to a user command survive setpriv's --reset-env.
    let env = c
        .command(&["sh", "-c", "echo $GREETING $HOME"])
        .user("e2e-probe")
        .env("GREETING", "hi")
        .ok()
        .unwrap();
    assert_eq!(env.stdout_trimmed(), "hi /home/e2e-probe");

    let err = c.exec_ok(&["false"]).unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    let err = c
        .command(&["sleep", "60"])
        .timeout(Duration::from_millis(500))
        .output()
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Killed inside the container too, and reaped: no zombie left to stall shutdown.
    let left = c.exec(&["ps", "-eo", "stat=,comm="]).unwrap();
    assert!(!left.stdout.contains("sleep"), "{left}");
}

#[test]
fn containers_are_removed_even_when_the_test_panics() {
    if !con_e2e::enabled() {
        return;
    }
    let image = Image::ensure().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let c = Container::boot(&image, "panics").unwrap();
        tx.send((c.state_dir().to_owned(), c.pid1())).unwrap();
        panic!("a failing scenario");
    })
    .join();
    assert!(panicked.is_err());
    let (dir, pid1) = rx.recv().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!alive(pid1), "container systemd {pid1} still running");
}

#[test]
fn containers_of_killed_processes_are_swept() {
    if !con_e2e::enabled() {
        return;
    }
    // An owner that dies without running any destructor.
    let mut owner = Command::new(env!("CARGO_BIN_EXE_con-e2e-boot"))
        .arg("orphan")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(owner.stdout.take().unwrap()).lines();
    let mut field = |name: &str| loop {
        let line = lines.next().expect("con-e2e-boot exited").unwrap();
        if let Some(value) = line.strip_prefix(&format!("{name}: ")) {
            return value.to_owned();
        }
    };
    let dir = PathBuf::from(field("state_dir"));
    let pid1: u32 = field("pid1").parse().unwrap();
    assert!(dir.exists() && alive(pid1));
    owner.kill().unwrap();
    owner.wait().unwrap();

    // The next boot, in any process, cleans up.
    let _next = boot("after-orphan");
    assert!(!dir.exists(), "{} left behind", dir.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid1) {
        assert!(
            Instant::now() < deadline,
            "orphaned systemd {pid1} survived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A marker unlikely to be in any journal already.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

#[test]
fn reboots_keep_the_disk_and_the_machine_and_lose_what_is_in_memory() {
    if !con_e2e::enabled() {
        return;
    }
    let mut c = boot("reboot");
    c.sh_ok(
        "set -e\necho kept > /var/lib/marker\necho gone > /run/marker\n\
         systemd-run --unit=transient sleep 600 >/dev/null",
    )
    .unwrap();
    let machine_id = c.exec_ok(&["cat", "/etc/machine-id"]).unwrap().stdout;
    let boots = |c: &Container| {
        c.exec_ok(&["journalctl", "--list-boots", "--no-pager", "-q"])
            .unwrap()
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    for (n, hard) in [(2, false), (3, true)] {
        let before = c.pid1();
        if hard {
            c.hard_reboot().unwrap();
        } else {
            c.reboot().unwrap();
        }
        assert_ne!(c.pid1(), before, "a new systemd");
        assert!(!alive(before), "the old one is gone");
        assert_eq!(*c.boot_state(), BootState::Running, "hard: {hard}");
        assert_eq!(
            c.exec_ok(&["cat", "/var/lib/marker"])
                .unwrap()
                .stdout_trimmed(),
            "kept"
        );
        assert!(!c.exec(&["test", "-e", "/run/marker"]).unwrap().success());
        let transient = c
            .exec(&["systemctl", "is-active", "transient.service"])
            .unwrap();
        assert_ne!(transient.stdout_trimmed(), "active", "{transient}");
        assert_eq!(
            c.exec_ok(&["cat", "/etc/machine-id"]).unwrap().stdout,
            machine_id
        );
        assert_eq!(boots(&c), n, "the journal keeps every boot");
        assert_eq!(c.exec_ok(&["hostname"]).unwrap().stdout_trimmed(), c.name());
    }
    let dir = c.state_dir().to_path_buf();
    drop(c);
    assert!(!dir.exists(), "removed after its reboots");
}
