//! Agent runs: `con run <agent>`, as the agent's own Linux user.
//!
//! A run drains the agent's inbox, oldest task first by name, one
//! *session* per task. A session frames the task by its kernel-decided
//! provenance ([`prompt`]), then either drives the built-in LLM tool loop —
//! every model call goes through the daemon, which holds the keys and
//! records `llm.request`/`llm.response` — or hands the prompt to an external
//! agent CLI on stdin. Every step is recorded through a [`DaemonLink`]
//! before it takes effect: `session.started`, `tool.call` (before the tool
//! runs), `tool.result`, `task.routed` and `session.ended`. If an event
//! cannot be recorded, nothing further happens ("no audit, no action").
//!
//! The tools ([`tools`]) run as the agent's user with no deny-list: Linux
//! permissions are the sandbox.
//!
//! This crate knows nothing of the daemon's internals: it speaks
//! [`con_protocol`] through [`ClientLink`], or whatever [`DaemonLink`] a
//! test supplies.

mod inbox;
mod link;
pub mod prompt;
mod session;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use con_config::Runner;
use con_event::payloads::Outcome;
use con_event::{EncodeError, Payload, SessionId};
use con_layout::Layout;
use con_protocol::ClientEvent;

pub use link::{ClientLink, DaemonLink, LinkError, RecordedTrust};
pub use session::{Drained, SessionReport, drain};

/// How long a run told to stop may take to record the end of its session
/// before it exits anyway (a second signal exits at once).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Everything one agent's run needs to know.
#[derive(Clone, Debug)]
pub struct AgentRun {
    /// Agent name.
    pub agent: String,
    /// Where its files are, and its user's and the trusted group's names.
    pub layout: Layout,
    /// Its home directory, from the passwd entry (the tools' `HOME`).
    pub home: PathBuf,
    /// What executes a session.
    pub runner: Runner,
    /// Provider name, for `session.started` (the daemon picks the real one).
    pub provider: Option<String>,
    /// Model, for `session.started`.
    pub model: Option<String>,
    /// Model calls per session.
    pub max_iterations: u32,
    /// Wall clock per session.
    pub session_limit: Duration,
    /// Budget for earlier exchanges in the prompt, in estimated tokens.
    pub history_tokens: usize,
    /// Largest task file run (`[inbox] max_task_kb`); a larger or sparse
    /// one is set aside.
    pub max_task_bytes: u64,
    /// Sessions of one task that may fail before it is set aside.
    pub max_attempts: u32,
    /// Set to stop the run: the running command is killed, and the session
    /// ends as `killed` at its next step (see [`stop_on_signals`]).
    pub stop: Arc<AtomicBool>,
}

impl AgentRun {
    /// A run of the configured `agent` on `layout`, whose user's home is
    /// `home`.
    pub fn new(
        agent: &con_config::Agent,
        inbox: &con_config::Inbox,
        layout: Layout,
        home: PathBuf,
    ) -> Self {
        Self {
            agent: agent.name.clone(),
            layout,
            home,
            runner: agent.runner.clone(),
            provider: agent.provider.map(|p| p.as_str().to_owned()),
            model: agent.model.clone(),
            max_iterations: agent.max_iterations,
            session_limit: Duration::from_secs(u64::from(agent.max_session_min) * 60),
            history_tokens: prompt::DEFAULT_HISTORY_TOKENS,
            max_task_bytes: inbox.max_task_bytes,
            max_attempts: inbox.max_attempts,
            stop: Arc::default(),
        }
    }

    /// Its Linux user name.
    pub fn user(&self) -> String {
        self.layout.user(&self.agent)
    }

    /// Its inbox.
    pub fn inbox(&self) -> PathBuf {
        self.layout.agent_inbox(&self.agent)
    }

    /// Where its responses go.
    pub fn outbox(&self) -> PathBuf {
        self.layout.agent_outbox(&self.agent)
    }

    /// Where its answered tasks go.
    pub fn processed(&self) -> PathBuf {
        self.layout.agent_processed(&self.agent)
    }

    /// Where the tasks it cannot run go.
    pub fn failed(&self) -> PathBuf {
        self.layout.agent_failed(&self.agent)
    }

    /// Its workspace.
    pub fn workspace(&self) -> PathBuf {
        self.layout.agent_workspace(&self.agent)
    }

    /// Its per-task claims.
    pub fn sessions(&self) -> PathBuf {
        self.layout.agent_sessions(&self.agent)
    }
}

/// Why a run stopped with an error (as opposed to a session outcome).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Runs never execute as root.
    #[error(
        "con run must not run as root: it runs as the agent's own Linux user (the daemon starts it with setpriv)"
    )]
    Root,
    /// The caller is not the agent's Linux user.
    #[error("con run {agent}: must run as user {expected}, not {actual}")]
    WrongUser {
        /// The agent.
        agent: String,
        /// Its user name.
        expected: String,
        /// Who ran it.
        actual: String,
    },
    /// An event could not be recorded, so the step it describes was not
    /// taken.
    #[error("cannot record {kind} (no audit, no action): {source}")]
    Record {
        /// The event kind.
        kind: &'static str,
        /// The link's error.
        source: LinkError,
    },
    /// An event could not be encoded.
    #[error("cannot encode {kind}: {source}")]
    Encode {
        /// The event kind.
        kind: &'static str,
        /// The codec's error.
        source: EncodeError,
    },
    /// A filesystem operation the run itself needs failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The task file could not be examined.
    #[error(transparent)]
    Task(#[from] con_inbox::WatchError),
}

impl RunError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// The passwd entry of the process's effective uid, if it may run `agent`:
/// never root, and only as the agent's own user in `layout`.
pub fn check_identity(layout: &Layout, agent: &str) -> Result<nix::unistd::User, RunError> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Err(RunError::Root);
    }
    let expected = layout.user(agent);
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or_else(|| RunError::WrongUser {
            agent: agent.to_owned(),
            expected: expected.clone(),
            actual: format!("uid {uid} (no passwd entry)"),
        })?;
    if user.name != expected {
        return Err(RunError::WrongUser {
            agent: agent.to_owned(),
            expected,
            actual: user.name,
        });
    }
    Ok(user)
}

/// The event a run submits: `payload` in `session` about `task`, with the
/// contents its blob references point to.
pub fn client_event(
    payload: impl Into<Payload>,
    session: SessionId,
    task: &str,
    attachments: Vec<Vec<u8>>,
) -> Result<ClientEvent, RunError> {
    let payload = payload.into();
    let event = ClientEvent::new(&payload, attachments).map_err(|source| RunError::Encode {
        kind: payload.spec().name,
        source,
    })?;
    Ok(ClientEvent {
        session: Some(session),
        task: Some(task.to_owned()),
        ..event
    })
}

/// Sets `stop` when the process gets SIGTERM, SIGINT or SIGHUP (the
/// supervisor's shutdown, enforcement, a terminal), so the run kills the
/// command it is running — which lives in its own process group and would
/// not get the signal — and records the session as `killed` instead of
/// dying with its children orphaned.
///
/// Call it before any other thread starts: the signals are blocked in the
/// calling thread, whose mask new threads inherit, and taken by one waiting
/// thread. (Commands spawned later start with an empty mask.)
pub fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<(), RunError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| RunError::io("block signals in", Path::new("con run"), e.into()))?;
    std::thread::spawn(move || {
        let mut first = true;
        while let Ok(signal) = set.wait() {
            let code = 128 + signal as i32;
            if !first {
                std::process::exit(code);
            }
            first = false;
            stop.store(true, Ordering::SeqCst);
            // A model call in flight is not interrupted; do not let it hold
            // the run past the grace period.
            std::thread::spawn(move || {
                std::thread::sleep(STOP_GRACE);
                std::process::exit(code);
            });
        }
    });
    Ok(())
}

/// Whether a session with this outcome stops the run from draining further
/// (the task stays queued and the run exits non-zero, so the supervisor
/// backs off).
pub fn stops_draining(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Budget
            | Outcome::ProviderError
            | Outcome::RunnerError
            | Outcome::Killed
            | Outcome::KilledByEnforcement
    )
}
