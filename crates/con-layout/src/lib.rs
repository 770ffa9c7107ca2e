//! Where everything con uses lives on a host, and what its users and groups
//! are called.
//!
//! This is the one definition: the daemon, agent runs, provisioning, the
//! unit and sudoers renderers and the CLI all ask a [`Layout`] instead of
//! spelling a path or a group name themselves. Every path derives from one
//! root prefix and every account name from a user or group prefix, so tests
//! provision a whole conspiracy into a temp root with accounts nobody else
//! uses.
//!
//! Pure: nothing here touches the file system or the process environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The root prefix of a production host.
pub const DEFAULT_ROOT: &str = "/";

/// The prefix of agent user names on a production host.
pub const DEFAULT_USER_PREFIX: &str = "a-";

/// The prefix of con's group names on a production host (none).
pub const DEFAULT_GROUP_PREFIX: &str = "";

/// Exists while systemd is PID 1 (`sd_booted(3)`). It is the running
/// system's, never under a root prefix.
pub const SYSTEMD_BOOTED_MARKER: &str = "/run/systemd/system";

// Where con's own directories are, relative to the root prefix.
const ETC_DIR: &str = "etc/con";
const SRV_DIR: &str = "srv/con";
const STATE_DIR: &str = "var/lib/con";
const RUNTIME_DIR: &str = "run/con";

/// The con binary units run: the one installed on this host, never under
/// the root prefix.
const CON_BINARY: &str = "/usr/local/bin/con";

/// The longest user or group prefix: short, because it eats into the 32
/// bytes Linux allows a user name (provisioning refuses a longer one).
const MAX_PREFIX_LEN: usize = 12;

/// con's own Linux groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConGroup {
    /// Every agent.
    Agents,
    /// Agents of the officer tier.
    Officers,
    /// Agents of the operator tier.
    Operators,
    /// Agents of the worker tier.
    Workers,
    /// Humans whose tasks count as verified; the daemon treats its members
    /// as operators.
    Trusted,
}

impl ConGroup {
    /// Every group, in the order they are created.
    pub const ALL: [ConGroup; 5] = [
        ConGroup::Agents,
        ConGroup::Officers,
        ConGroup::Operators,
        ConGroup::Workers,
        ConGroup::Trusted,
    ];

    /// The name without the group prefix, as config files spell it.
    pub fn base_name(self) -> &'static str {
        match self {
            ConGroup::Agents => "agents",
            ConGroup::Officers => "officers",
            ConGroup::Operators => "operators",
            ConGroup::Workers => "workers",
            ConGroup::Trusted => "trusted",
        }
    }

    /// The group whose unprefixed name is `name`, if it is one of con's.
    pub fn from_base_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.base_name() == name)
    }
}

/// A layout that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A user or group prefix breaks the naming rule.
    #[error(
        "{what} {prefix:?}: must be empty or up to {MAX_PREFIX_LEN} of [a-z0-9-], starting with a letter"
    )]
    Prefix {
        /// Which prefix.
        what: &'static str,
        /// Its value.
        prefix: String,
    },
    /// A path that must be absolute is not.
    #[error("{what} {}: must be an absolute path", path.display())]
    Relative {
        /// Which path.
        what: &'static str,
        /// Its value.
        path: PathBuf,
    },
}

/// Host paths and account naming for one conspiracy.
///
/// Every path is under [`Layout::root`] except [`Layout::con_binary`] (the
/// binary on this host). Three can be pointed elsewhere: the config file
/// (`--config`), the sudoers directory (a test installs into the real
/// `/etc/sudoers.d` to ask sudo itself) and the con binary (unit tests
/// verify units against a stand-in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
    user_prefix: String,
    group_prefix: String,
    config_file: PathBuf,
    sudoers_dir: PathBuf,
    con_binary: PathBuf,
}

impl Layout {
    /// Every path under `root`, at its default location.
    ///
    /// `root` must be absolute: paths are recorded in the log and handed to
    /// processes that run elsewhere. The prefixes must be empty or up to 12
    /// lower-case letters, digits and `-`, starting with a letter: they
    /// become parts of user, group and sudoers file names, where `.` would
    /// make sudo skip the file.
    pub fn new(root: &Path, user_prefix: &str, group_prefix: &str) -> Result<Self, LayoutError> {
        check_absolute("root", root)?;
        check_prefix("user prefix", user_prefix)?;
        check_prefix("group prefix", group_prefix)?;
        Ok(Self::checked(root, user_prefix, group_prefix))
    }

    /// The production layout: root `/`, default prefixes.
    pub fn host() -> Self {
        Self::checked(
            Path::new(DEFAULT_ROOT),
            DEFAULT_USER_PREFIX,
            DEFAULT_GROUP_PREFIX,
        )
    }

    /// [`Layout::new`] once the arguments are known to be acceptable.
    fn checked(root: &Path, user_prefix: &str, group_prefix: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            user_prefix: user_prefix.to_owned(),
            group_prefix: group_prefix.to_owned(),
            config_file: default_config_file(root),
            sudoers_dir: root.join("etc/sudoers.d"),
            con_binary: PathBuf::from(CON_BINARY),
        }
    }

    /// This layout reading its config from `path` instead (`--config`).
    pub fn with_config_file(mut self, path: &Path) -> Result<Self, LayoutError> {
        check_absolute("config file", path)?;
        self.config_file = path.to_path_buf();
        Ok(self)
    }

    /// This layout installing sudoers drop-ins into `dir` instead.
    pub fn with_sudoers_dir(mut self, dir: &Path) -> Result<Self, LayoutError> {
        check_absolute("sudoers directory", dir)?;
        self.sudoers_dir = dir.to_path_buf();
        Ok(self)
    }

    /// This layout's units running `binary` instead of the installed con.
    pub fn with_con_binary(mut self, binary: &Path) -> Result<Self, LayoutError> {
        check_absolute("con binary", binary)?;
        self.con_binary = binary.to_path_buf();
        Ok(self)
    }

    /// The root prefix (`/` in production).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this is the real host (root `/`): only then are units
    /// started and the journal catalog rebuilt.
    pub fn is_host_root(&self) -> bool {
        self.root == Path::new(DEFAULT_ROOT)
    }

    /// Prefix of agent user names (`a-` in production).
    pub fn user_prefix(&self) -> &str {
        &self.user_prefix
    }

    /// The global `con` flags under which another `con` process resolves
    /// this same layout: only those that differ from their defaults, so a
    /// production unit's command line stays short. (The sudoers directory
    /// and the binary have no flags: only tests move them.)
    pub fn con_flags(&self) -> Vec<OsString> {
        let mut flags = Vec::new();
        let mut flag = |name: &str, value: OsString| {
            flags.push(OsString::from(name));
            flags.push(value);
        };
        if !self.is_host_root() {
            flag("--root", self.root.clone().into_os_string());
        }
        if self.user_prefix != DEFAULT_USER_PREFIX {
            flag("--user-prefix", self.user_prefix.clone().into());
        }
        if self.group_prefix != DEFAULT_GROUP_PREFIX {
            flag("--group-prefix", self.group_prefix.clone().into());
        }
        if self.config_file != default_config_file(&self.root) {
            flag("--config", self.config_file.clone().into_os_string());
        }
        flags
    }

    // Accounts.

    /// The Linux user of agent `agent`.
    pub fn user(&self, agent: &str) -> String {
        format!("{}{agent}", self.user_prefix)
    }

    /// The Linux name of one of con's groups.
    pub fn group(&self, group: ConGroup) -> String {
        format!("{}{}", self.group_prefix, group.base_name())
    }

    /// The group whose members are operators and whose tasks are verified.
    pub fn trusted_group(&self) -> String {
        self.group(ConGroup::Trusted)
    }

    /// All of con's groups, prefixed, in [`ConGroup::ALL`] order.
    pub fn con_groups(&self) -> Vec<String> {
        ConGroup::ALL.iter().map(|g| self.group(*g)).collect()
    }

    /// The nftables table holding the egress rules (`con` in production;
    /// nft names take no `-`).
    pub fn egress_table(&self) -> String {
        format!("{}con", self.group_prefix).replace('-', "_")
    }

    // /etc/con.

    /// `/etc/con`: the config, secrets and instruction layers.
    pub fn etc_dir(&self) -> PathBuf {
        self.root.join(ETC_DIR)
    }

    /// The config file (`/etc/con/con.toml` unless overridden).
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// The profile in use (instruction layers, skills, sudoers templates):
    /// the config file's directory, so `/etc/con`, or a profile directory
    /// named with `--config`.
    pub fn profile_dir(&self) -> PathBuf {
        self.config_file
            .parent()
            .map_or_else(|| self.etc_dir(), Path::to_path_buf)
    }

    /// The secrets file (`/etc/con/env`): API keys, root's alone.
    pub fn env_file(&self) -> PathBuf {
        self.etc_dir().join("env")
    }

    // /srv/con.

    /// `/srv/con`: inboxes, agents' directories, contracts.
    pub fn srv_dir(&self) -> PathBuf {
        self.root.join(SRV_DIR)
    }

    /// The outer inbox (humans → the concierge).
    pub fn outer_inbox(&self) -> PathBuf {
        self.srv_dir().join("inbox")
    }

    /// Parent of every agent's directory.
    pub fn agents_dir(&self) -> PathBuf {
        self.srv_dir().join("agents")
    }

    /// Contract files.
    pub fn contracts_dir(&self) -> PathBuf {
        self.srv_dir().join("contracts")
    }

    /// The inner config overlay the sysadmin role manages.
    pub fn config_overlay_dir(&self) -> PathBuf {
        self.srv_dir().join("config")
    }

    /// Where agents leave artifacts for each other.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.srv_dir().join("artifacts")
    }

    /// Policy documents.
    pub fn policy_dir(&self) -> PathBuf {
        self.srv_dir().join("policy")
    }

    /// The ledger.
    pub fn ledger_dir(&self) -> PathBuf {
        self.srv_dir().join("ledger")
    }

    /// Published status.
    pub fn status_dir(&self) -> PathBuf {
        self.srv_dir().join("status")
    }

    /// Contract scopes.
    pub fn scopes_dir(&self) -> PathBuf {
        self.srv_dir().join("scopes")
    }

    /// Agent `agent`'s directory. `agent` must be a validated agent name.
    pub fn agent_dir(&self, agent: &str) -> PathBuf {
        self.agents_dir().join(agent)
    }

    /// Agent `agent`'s inbox: `.task` files waiting.
    pub fn agent_inbox(&self, agent: &str) -> PathBuf {
        self.agent_dir(agent).join("inbox")
    }

    /// Agent `agent`'s outbox: one `.response` per answered task.
    pub fn agent_outbox(&self, agent: &str) -> PathBuf {
        self.agent_dir(agent).join("outbox")
    }

    /// Where agent `agent`'s answered tasks go.
    pub fn agent_processed(&self, agent: &str) -> PathBuf {
        self.agent_dir(agent).join("processed")
    }

    /// Where agent `agent`'s runs set aside tasks they cannot run (unreadable,
    /// unnameable, too large): never retried, kept for the operator.
    pub fn agent_failed(&self, agent: &str) -> PathBuf {
        self.agent_dir(agent).join("failed")
    }

    /// Agent `agent`'s workspace: its tools' working directory.
    pub fn agent_workspace(&self, agent: &str) -> PathBuf {
        self.agent_dir(agent).join("workspace")
    }

    /// Agent `agent`'s skills (`*.md`, root's), inside its workspace.
    pub fn agent_skills(&self, agent: &str) -> PathBuf {
        self.agent_workspace(agent).join("skills")
    }

    /// Agent `agent`'s per-task claims.
    pub fn agent_sessions(&self, agent: &str) -> PathBuf {
        self.agent_dir(agent).join("sessions")
    }

    // Homes.

    /// Parent of the agents' home directories (`/home`).
    pub fn home_base(&self) -> PathBuf {
        self.root.join("home")
    }

    /// Agent `agent`'s home directory.
    pub fn home(&self, agent: &str) -> PathBuf {
        self.home_base().join(self.user(agent))
    }

    /// Agent `agent`'s instructions, in its home.
    pub fn agents_md(&self, agent: &str) -> PathBuf {
        self.home(agent).join("AGENTS.md")
    }

    // The daemon.

    /// `/var/lib/con`: the daemon's state, root's alone.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// The event log database directory.
    pub fn event_log(&self) -> PathBuf {
        self.state_dir().join("events")
    }

    /// `/run/con`: the daemon's runtime directory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join(RUNTIME_DIR)
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir().join("con.sock")
    }

    // The rest of the host.

    /// The host's `/etc` under the root: accounts, sudoers and units are
    /// written below it.
    pub fn system_etc_dir(&self) -> PathBuf {
        self.root.join("etc")
    }

    /// `/etc/sudoers.d` (unless overridden).
    pub fn sudoers_dir(&self) -> &Path {
        &self.sudoers_dir
    }

    /// The sudoers drop-in of agent `agent`. The name has no `.` (sudo skips
    /// such files), which the prefix rule guarantees.
    pub fn sudoers_file(&self, agent: &str) -> PathBuf {
        self.sudoers_dir.join(format!("con-{}", self.user(agent)))
    }

    /// `/etc/systemd/system`.
    fn unit_dir(&self) -> PathBuf {
        self.system_etc_dir().join("systemd/system")
    }

    /// The unit file named `name` (e.g. `con-daemon.service`).
    pub fn unit_file(&self, name: &str) -> PathBuf {
        self.unit_dir().join(name)
    }

    /// con's journal message catalog.
    pub fn catalog_file(&self) -> PathBuf {
        self.root.join("usr/lib/systemd/catalog/con.catalog")
    }

    /// The con binary units run (`/usr/local/bin/con` unless overridden;
    /// never under the root prefix: it is the binary on this host).
    pub fn con_binary(&self) -> &Path {
        &self.con_binary
    }
}

fn default_config_file(root: &Path) -> PathBuf {
    root.join(ETC_DIR).join("con.toml")
}

fn check_absolute(what: &'static str, path: &Path) -> Result<(), LayoutError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(LayoutError::Relative {
            what,
            path: path.to_path_buf(),
        })
    }
}

fn check_prefix(what: &'static str, prefix: &str) -> Result<(), LayoutError> {
    let ok = match prefix.as_bytes() {
        [] => true,
        [first, ..] => {
            first.is_ascii_lowercase()
                && prefix.len() <= MAX_PREFIX_LEN
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }
    };
    if ok {
        Ok(())
    } else {
        Err(LayoutError::Prefix {
            what,
            prefix: prefix.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const AGENT: &str = "scribe";

    /// Every path a layout defines, by method name, for agent [`AGENT`].
    fn every_path(layout: &Layout) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("etc_dir", layout.etc_dir()),
            ("config_file", layout.config_file().to_path_buf()),
            ("env_file", layout.env_file()),
            ("srv_dir", layout.srv_dir()),
            ("outer_inbox", layout.outer_inbox()),
            ("agents_dir", layout.agents_dir()),
            ("contracts_dir", layout.contracts_dir()),
            ("config_overlay_dir", layout.config_overlay_dir()),
            ("artifacts_dir", layout.artifacts_dir()),
            ("policy_dir", layout.policy_dir()),
            ("ledger_dir", layout.ledger_dir()),
            ("status_dir", layout.status_dir()),
            ("scopes_dir", layout.scopes_dir()),
            ("agent_dir", layout.agent_dir(AGENT)),
            ("agent_inbox", layout.agent_inbox(AGENT)),
            ("agent_outbox", layout.agent_outbox(AGENT)),
            ("agent_processed", layout.agent_processed(AGENT)),
            ("agent_failed", layout.agent_failed(AGENT)),
            ("agent_workspace", layout.agent_workspace(AGENT)),
            ("agent_skills", layout.agent_skills(AGENT)),
            ("agent_sessions", layout.agent_sessions(AGENT)),
            ("home_base", layout.home_base()),
            ("home", layout.home(AGENT)),
            ("agents_md", layout.agents_md(AGENT)),
            ("state_dir", layout.state_dir()),
            ("event_log", layout.event_log()),
            ("runtime_dir", layout.runtime_dir()),
            ("socket", layout.socket()),
            ("system_etc_dir", layout.system_etc_dir()),
            ("sudoers_dir", layout.sudoers_dir().to_path_buf()),
            ("sudoers_file", layout.sudoers_file(AGENT)),
            ("unit_dir", layout.unit_dir()),
            ("unit_file", layout.unit_file("con-daemon.service")),
            ("catalog_file", layout.catalog_file()),
            ("con_binary", layout.con_binary().to_path_buf()),
        ]
    }

    fn test_root() -> Layout {
        Layout::new(Path::new("/tmp/con-test root"), "t1-", "g1-").unwrap()
    }

    #[test]
    fn no_two_paths_collide() {
        for layout in [Layout::host(), test_root()] {
            let mut seen: BTreeMap<PathBuf, &str> = BTreeMap::new();
            for (name, path) in every_path(&layout) {
                if let Some(other) = seen.insert(path.clone(), name) {
                    panic!("{name} and {other} are both {}", path.display());
                }
            }
        }
    }

    #[test]
    fn the_root_prefix_applies_to_every_path_but_the_binary() {
        let layout = test_root();
        for (name, path) in every_path(&layout) {
            if name == "con_binary" {
                assert_eq!(path, Path::new(CON_BINARY));
            } else {
                assert!(
                    path.starts_with("/tmp/con-test root"),
                    "{name}: {}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn a_host_layout_is_the_production_tree() {
        let host = Layout::host();
        assert_eq!(Layout::new(Path::new("/"), "a-", "").unwrap(), host);
        assert!(host.is_host_root());
        assert_eq!(host.config_file(), Path::new("/etc/con/con.toml"));
        assert_eq!(host.env_file(), Path::new("/etc/con/env"));
        assert_eq!(host.socket(), Path::new("/run/con/con.sock"));
        assert_eq!(host.event_log(), Path::new("/var/lib/con/events"));
        assert_eq!(
            host.agent_inbox("scribe"),
            Path::new("/srv/con/agents/scribe/inbox")
        );
        assert_eq!(
            host.agents_md("scribe"),
            Path::new("/home/a-scribe/AGENTS.md")
        );
        assert_eq!(
            host.sudoers_file("scribe"),
            Path::new("/etc/sudoers.d/con-a-scribe")
        );
        assert_eq!(
            host.catalog_file(),
            Path::new("/usr/lib/systemd/catalog/con.catalog")
        );
        assert!(host.con_flags().is_empty());
    }

    #[test]
    fn the_group_prefix_applies_to_every_group() {
        let layout = test_root();
        let groups = layout.con_groups();
        assert_eq!(
            groups,
            [
                "g1-agents",
                "g1-officers",
                "g1-operators",
                "g1-workers",
                "g1-trusted"
            ]
        );
        for g in ConGroup::ALL {
            assert_eq!(layout.group(g), format!("g1-{}", g.base_name()));
            assert_eq!(ConGroup::from_base_name(g.base_name()), Some(g));
        }
        assert_eq!(layout.trusted_group(), "g1-trusted");
        assert_eq!(layout.egress_table(), "g1_con");
        assert_eq!(layout.user("scribe"), "t1-scribe");
        assert_eq!(ConGroup::from_base_name("docker"), None);
    }

    #[test]
    fn con_flags_name_exactly_what_differs() {
        let layout = test_root();
        assert_eq!(
            layout.con_flags(),
            [
                "--root",
                "/tmp/con-test root",
                "--user-prefix",
                "t1-",
                "--group-prefix",
                "g1-"
            ]
        );
        let moved = layout
            .clone()
            .with_config_file(Path::new("/profiles/x/con.toml"))
            .unwrap();
        assert_eq!(
            moved.con_flags()[6..],
            [OsString::from("--config"), "/profiles/x/con.toml".into()]
        );
        // Naming the default explicitly changes nothing.
        let same = layout
            .clone()
            .with_config_file(&default_config_file(layout.root()))
            .unwrap();
        assert_eq!(same.con_flags().len(), 6);
    }

    #[test]
    fn bad_prefixes_and_relative_paths_are_refused() {
        for bad in [
            "A-",
            "a.",
            "a.b-",
            "1a",
            "a_b",
            "abcdefghijklm",
            "-a",
            "../",
        ] {
            assert!(Layout::new(Path::new("/"), bad, "").is_err(), "{bad}");
            assert!(Layout::new(Path::new("/"), "a-", bad).is_err(), "{bad}");
        }
        assert!(Layout::new(Path::new("relative"), "a-", "").is_err());
        assert!(
            Layout::host()
                .with_config_file(Path::new("con.toml"))
                .is_err()
        );
        assert_eq!(
            Layout::new(Path::new("/"), "A", "")
                .unwrap_err()
                .to_string(),
            "user prefix \"A\": must be empty or up to 12 of [a-z0-9-], starting with a letter"
        );
    }
}
