//! Where everything lives on a host, and what users and groups are called.
//!
//! Every path derives from one root prefix and every account name from a user
//! or group prefix, so tests provision a whole conspiracy into a temp root with
//! accounts nobody else uses. Each path can still be overridden on its own (a
//! test points `sudoers_dir` at the real `/etc/sudoers.d` to ask sudo itself).

use std::path::{Path, PathBuf};

use crate::ProvisionError;

/// con's own Linux groups, without prefix. Nothing else is ever made an
/// agent's group (see [`Layout::agent_groups`]).
pub const CON_GROUPS: [&str; 5] = ["agents", "officers", "operators", "workers", "trusted"];

/// Host paths and account naming for one conspiracy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The root prefix (`/` in production).
    pub root: PathBuf,
    /// Prefix of agent user names (`a-` in production).
    pub user_prefix: String,
    /// Prefix of con's group names (empty in production).
    pub group_prefix: String,
    /// `/etc/con`: config, secrets, instruction layers.
    pub etc: PathBuf,
    /// The config file (`/etc/con/con.toml`).
    pub config_file: PathBuf,
    /// The secrets file (`/etc/con/env`).
    pub env_file: PathBuf,
    /// `/srv/con`: inboxes, agents' directories, contracts.
    pub srv: PathBuf,
    /// Parent of the agents' home directories (`/home`).
    pub home_base: PathBuf,
    /// `/var/lib/con`: the event log.
    pub var_lib: PathBuf,
    /// `/run/con`: the daemon's socket.
    pub run: PathBuf,
    /// `/etc/sudoers.d`.
    pub sudoers_dir: PathBuf,
    /// `/etc/systemd/system`.
    pub unit_dir: PathBuf,
    /// `/usr/lib/systemd/catalog`.
    pub catalog_dir: PathBuf,
    /// The con binary units run (`/usr/local/bin/con`; never under the root
    /// prefix: it is the binary on this host).
    pub con_binary: PathBuf,
}

impl Layout {
    /// Every path under `root`, with the default locations.
    ///
    /// The prefixes must be empty or lower-case letters, digits and `-` (and
    /// start with a letter when not empty): they become parts of user, group
    /// and sudoers file names, where `.` would make sudo skip the file.
    pub fn new(root: &Path, user_prefix: &str, group_prefix: &str) -> Result<Self, ProvisionError> {
        check_prefix("user prefix", user_prefix)?;
        check_prefix("group prefix", group_prefix)?;
        let under = |p: &str| root.join(p);
        Ok(Self {
            root: root.to_path_buf(),
            user_prefix: user_prefix.to_owned(),
            group_prefix: group_prefix.to_owned(),
            etc: under("etc/con"),
            config_file: under("etc/con/con.toml"),
            env_file: under("etc/con/env"),
            srv: under("srv/con"),
            home_base: under("home"),
            var_lib: under("var/lib/con"),
            run: under("run/con"),
            sudoers_dir: under("etc/sudoers.d"),
            unit_dir: under("etc/systemd/system"),
            catalog_dir: under("usr/lib/systemd/catalog"),
            con_binary: PathBuf::from("/usr/local/bin/con"),
        })
    }

    /// Whether this layout is the real host (root `/`): only then are units
    /// started and the journal catalog rebuilt.
    pub fn is_host_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The Linux user of agent `name`.
    pub fn user(&self, name: &str) -> String {
        format!("{}{name}", self.user_prefix)
    }

    /// The Linux name of con group `name` (one of [`CON_GROUPS`]).
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.group_prefix)
    }

    /// All of con's groups, prefixed, in [`CON_GROUPS`] order.
    pub fn con_groups(&self) -> Vec<String> {
        CON_GROUPS.iter().map(|g| self.group(g)).collect()
    }

    /// The home directory of agent `name`.
    pub fn home(&self, name: &str) -> PathBuf {
        self.home_base.join(self.user(name))
    }

    /// `srv/con/agents/<name>`.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.srv.join("agents").join(name)
    }

    /// `srv/con/agents/<name>/inbox`.
    pub fn agent_inbox(&self, name: &str) -> PathBuf {
        self.agent_dir(name).join("inbox")
    }

    /// The sudoers drop-in of agent `name`. The name has no `.` (sudo skips
    /// such files), which the prefix rule guarantees.
    pub fn sudoers_file(&self, name: &str) -> PathBuf {
        self.sudoers_dir.join(format!("con-{}", self.user(name)))
    }

    /// The nftables table holding the egress rules (`con` in production).
    pub fn egress_table(&self) -> String {
        format!("{}con", self.group_prefix).replace('-', "_")
    }

    /// The supplementary groups of an agent: `agents`, its tier group, and
    /// the config's `groups`, each of which must be one of con's own groups
    /// other than `trusted` (an allowlist, so no host group such as `input`,
    /// `video` or `docker` can be named). `trusted` is refused because the
    /// daemon treats its members as operators and the inbox watcher trusts
    /// what they write.
    pub fn agent_groups(&self, agent: &con_config::Agent) -> Result<Vec<String>, ProvisionError> {
        let allowed = ["agents", "officers", "operators", "workers"];
        let mut groups = vec![self.group("agents"), self.group(agent.tier.unix_group())];
        for g in &agent.groups {
            if !allowed.contains(&g.as_str()) {
                return Err(ProvisionError::Invalid(format!(
                    "agent {}: groups: {g:?} is not one of con's agent groups (allowed: {})",
                    agent.name,
                    allowed.join(", ")
                )));
            }
            let full = self.group(g);
            if !groups.contains(&full) {
                groups.push(full);
            }
        }
        Ok(groups)
    }
}

fn check_prefix(what: &str, prefix: &str) -> Result<(), ProvisionError> {
    let ok = prefix.is_empty()
        || (prefix.as_bytes()[0].is_ascii_lowercase()
            && prefix.len() <= 12
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "{what} {prefix:?}: must be empty or up to 12 of [a-z0-9-], starting with a letter"
        )))
    }
}
