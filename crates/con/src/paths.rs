//! Where things live on a host, all under one root prefix (SPEC §3).

use std::path::PathBuf;

/// Resolved host paths.
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
    config: Option<PathBuf>,
    user_prefix: String,
}

impl Paths {
    /// Paths under `root`; `config` overrides the config file location.
    pub fn new(root: PathBuf, config: Option<PathBuf>, user_prefix: String) -> Self {
        Self {
            root,
            config,
            user_prefix,
        }
    }

    /// The root prefix.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Prefix of agent user names (`a-`).
    pub fn user_prefix(&self) -> &str {
        &self.user_prefix
    }

    fn under(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The outer config file.
    pub fn config_file(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| self.under("/etc/con/con.toml"))
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.under("/run/con/con.sock")
    }

    /// The outer inbox (human → concierge).
    pub fn outer_inbox(&self) -> PathBuf {
        self.under("/srv/con/inbox")
    }

    /// An agent's inbox. `agent` must be a validated agent name.
    pub fn agent_inbox(&self, agent: &str) -> PathBuf {
        self.under("/srv/con/agents").join(agent).join("inbox")
    }

    /// The event log database directory.
    pub fn event_log(&self) -> PathBuf {
        self.under("/var/lib/con/events")
    }
}
