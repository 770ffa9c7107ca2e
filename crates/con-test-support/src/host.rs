//! A con host in a temp dir, and the real `con daemon` serving it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use con_event::{Event, Payload, SessionId};
use con_protocol::{Client, ClientEvent, Query};

use crate::users::unique_prefix;

/// The workspace's root directory (where `configs/` is).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A host's root prefix in a temp dir, with the default profile's
/// `etc/con/con.toml` and a user prefix of its own, so that tests running
/// in parallel never share an agent's user. Removed on drop.
pub struct Root {
    /// The temp dir, removed on drop; `None` for a root that outlives the
    /// handle ([`Root::at`]).
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
    user_prefix: String,
}

impl Root {
    /// A new root: mode 0755, so agent users can reach the socket under it
    /// (mktemp's 0700 would hide it).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("con-daemon-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        std::fs::create_dir_all(dir.path().join("etc/con")).expect("etc/con");
        std::fs::copy(
            workspace().join("configs/default/con.toml"),
            dir.path().join("etc/con/con.toml"),
        )
        .expect("copy the default con.toml");
        Self {
            path: dir.path().to_owned(),
            _dir: Some(dir),
            // One character of tag: 9 characters in all, the width the
            // policy snapshots were taken with.
            user_prefix: unique_prefix("c"),
        }
    }

    /// A root prefix that already exists at `path` (with its own
    /// `etc/con/con.toml`) and is kept when the handle is dropped: a
    /// benchmark's data set, made once and reused.
    pub fn at(path: &Path, user_prefix: &str) -> Self {
        Self {
            _dir: None,
            path: path.to_owned(),
            user_prefix: user_prefix.to_owned(),
        }
    }

    /// The root prefix (`--root`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The user prefix of this host's agents (`--user-prefix`).
    pub fn user_prefix(&self) -> &str {
        &self.user_prefix
    }

    /// The global flags that point `con` at this host: `--root <path>
    /// --user-prefix <prefix>`.
    pub fn con_flags(&self) -> [std::ffi::OsString; 4] {
        [
            "--root".into(),
            self.path().into(),
            "--user-prefix".into(),
            self.user_prefix.as_str().into(),
        ]
    }

    /// The Linux user of `agent` on this host.
    pub fn user(&self, agent: &str) -> String {
        format!("{}{agent}", self.user_prefix)
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.path().join("run/con/con.sock")
    }

    /// The event log's database directory.
    pub fn db(&self) -> PathBuf {
        self.path().join("var/lib/con/events")
    }
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `con daemon`; SIGTERMed and reaped on drop.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    /// `con daemon` (the binary at `con`) on `root`, once its socket accepts.
    pub fn start(con: impl AsRef<Path>, root: &Root) -> Self {
        Self::start_with(con, root, &[], &[])
    }

    /// [`Daemon::start`] with extra `con daemon` arguments and environment.
    pub fn start_with(
        con: impl AsRef<Path>,
        root: &Root,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(con.as_ref(), root, args, env, Stdio::null())
    }

    /// [`Daemon::start_with`] (no extra environment) with the daemon's
    /// stderr going to the file `stderr`, for tests of what it says.
    pub fn start_logging(con: impl AsRef<Path>, root: &Root, args: &[&str], stderr: &Path) -> Self {
        let file = std::fs::File::create(stderr).expect("create the daemon's stderr file");
        Self::spawn(con.as_ref(), root, args, &[], Stdio::from(file))
    }

    fn spawn(con: &Path, root: &Root, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        let child = Command::new(con)
            .arg("--root")
            .arg(root.path())
            .args(["--user-prefix", root.user_prefix(), "daemon"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn con daemon");
        let mut daemon = Self { child: Some(child) };
        let start = Instant::now();
        while UnixStream::connect(root.socket()).is_err() {
            // Say which: it stopped (and how), or it is still starting.
            if let Some(status) = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("daemon exited before its socket accepted: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not start within 20 s (still running)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, and waits for it to exit.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().expect("SIGKILL con daemon");
        child.wait().expect("wait for con daemon");
    }

    /// SIGTERM, and waits for it to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("wait for con daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
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
        payload: payload.encode().expect("encode payload"),
        attachments: vec![],
    }
}

/// Every event in the log, through the daemon at `socket`, as root.
pub fn all_events(socket: &Path) -> Vec<Event> {
    let mut events = Vec::new();
    Client::connect(socket)
        .expect("connect to the daemon")
        .query(
            Query {
                from_seq: 1,
                ..Query::default()
            },
            |b| {
                events.push(Event::from_stored(&b).expect("stored event decodes"));
                true
            },
        )
        .expect("query the log");
    events
}
