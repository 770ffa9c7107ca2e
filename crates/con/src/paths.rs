//! Where things live on a host, all under one root prefix (SPEC §3).

use std::path::PathBuf;

use con_provision::Layout;

/// Resolved host paths.
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
    config: Option<PathBuf>,
    user_prefix: String,
}

impl Paths {
    /// Paths under `root`; `config` overrides the config file location.
    /// Relative paths are made absolute: paths are recorded in the log and
    /// handed to processes that run elsewhere (`/`).
    pub fn new(root: PathBuf, config: Option<PathBuf>, user_prefix: String) -> Self {
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        Self {
            root: absolute(root),
            config: config.map(absolute),
            user_prefix,
        }
    }

    /// The config file given explicitly (`--config`), if any.
    pub fn explicit_config(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
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

    /// The secrets file (API keys), root's alone.
    pub fn env_file(&self) -> PathBuf {
        self.under("/etc/con/env")
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

    /// The provisioning layout under the root, with this config file.
    pub fn layout(&self, group_prefix: &str) -> anyhow::Result<Layout> {
        let mut layout = Layout::new(&self.root, &self.user_prefix, group_prefix)?;
        layout.config_file = self.config_file();
        Ok(layout)
    }

    /// The event log database directory.
    pub fn event_log(&self) -> PathBuf {
        self.under("/var/lib/con/events")
    }
}
