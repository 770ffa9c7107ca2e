//! Fixtures shared by the black-box daemon tests: a temp root, a running
//! `con daemon`, and Linux users that remove themselves.

#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use con_event::{Event, Payload, SessionId};
use con_protocol::{Client, ClientEvent, Query};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A temp root an agent user can traverse (mktemp's 0700 would hide the socket).
pub struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("con-daemon-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("etc/con")).unwrap();
        std::fs::copy(
            workspace().join("configs/default/con.toml"),
            dir.path().join("etc/con/con.toml"),
        )
        .unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("run/con/con.sock")
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("var/lib/con/events")
    }
}

pub fn prefix() -> String {
    format!("ct{}-", std::process::id())
}

/// A running `con daemon`; SIGTERMed (and reaped) on drop.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    pub fn start(root: &Root) -> Self {
        Self::start_with(root, &prefix(), &[], &[])
    }

    /// With another user prefix, extra `con daemon` arguments and environment.
    pub fn start_with(root: &Root, user_prefix: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_con"))
            .args([
                "--root",
                root.path().to_str().unwrap(),
                "--user-prefix",
                user_prefix,
                "daemon",
            ])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while UnixStream::connect(root.socket()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// A Linux user created for one test, removed on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

static USERS: AtomicU32 = AtomicU32::new(0);

impl TestUser {
    pub fn agent(agent: &str) -> Self {
        Self::create(&format!("{}{agent}", prefix()))
    }

    pub fn stranger() -> Self {
        let n = USERS.fetch_add(1, Ordering::SeqCst);
        Self::create(&format!("cx{}n{n}", std::process::id()))
    }

    pub fn create(name: &str) -> Self {
        let out = Command::new("useradd")
            .args(["-M", "-U", "-s", "/usr/sbin/nologin", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        Self {
            name: name.to_owned(),
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    /// `cmd` run as this user (no supplementary groups, like an agent).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={}", self.uid),
            &format!("--regid={}", self.gid),
            "--clear-groups",
            "--",
        ])
        .arg(program);
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A client event for `payload` (no task, no causation, no attachments).
pub fn client_event(payload: Payload, session: Option<SessionId>) -> ClientEvent {
    let spec = payload.spec();
    ClientEvent {
        session,
        task: None,
        causation: None,
        kind: spec.id,
        kind_version: spec.version,
        payload: payload.encode().unwrap(),
        attachments: vec![],
    }
}

/// Every event in the log, through the daemon, as root.
pub fn all_events(socket: &Path) -> Vec<Event> {
    let mut events = Vec::new();
    Client::connect(socket)
        .unwrap()
        .query(
            Query {
                from_seq: 1,
                ..Query::default()
            },
            |b| {
                events.push(Event::from_stored(&b).unwrap());
                true
            },
        )
        .unwrap();
    events
}
