//! The plan: every piece of host state a config implies, as typed resources
//! in the order they must be applied. Computing it does no IO.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use con_config::{Config, Tier};
use con_layout::{ConGroup, Layout};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::units;
use crate::profile::Profile;
use crate::{ProvisionError, instructions, sudoers};

/// What planning needs, all read up front.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The resolved config.
    pub config: Config,
    /// The profile's files: a profile directory, or the installed `/etc/con`.
    pub profile: Profile,
    /// Whether to install the profile's files into `/etc/con` (true for
    /// `--profile DIR`; false when `profile` was read from `/etc/con` itself).
    pub install_profile: bool,
}

/// Apply order: every resource depends only on earlier phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Groups.
    Groups,
    /// Users.
    Users,
    /// Directories, owners, modes.
    Dirs,
    /// Config files and the secrets file.
    Files,
    /// ACLs.
    Acls,
    /// Sudoers drop-ins.
    Sudoers,
    /// AGENTS.md and skills.
    Instructions,
    /// systemd units.
    Units,
    /// nftables egress rules.
    Egress,
    /// The journald catalog.
    Catalog,
    /// A contract file (or its script) from con's shipped library.
    Contract,
}

/// An ACL entry's tag; users and groups by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AclTag {
    /// The owner (`u::`).
    UserObj,
    /// A named user (`u:<name>:`).
    User(String),
    /// The owning group (`g::`).
    GroupObj,
    /// A named group (`g:<name>:`).
    Group(String),
    /// The mask (`m::`).
    Mask,
    /// Everyone else (`o::`).
    Other,
}

/// One ACL entry: tag and `rwx` bits (4 = r, 2 = w, 1 = x).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AclEntry {
    /// Whom it is for.
    pub tag: AclTag,
    /// Permission bits.
    pub perm: u32,
}

impl std::fmt::Display for AclEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match &self.tag {
            AclTag::UserObj => "u:".to_owned(),
            AclTag::User(n) => format!("u:{n}"),
            AclTag::GroupObj => "g:".to_owned(),
            AclTag::Group(n) => format!("g:{n}"),
            AclTag::Mask => "m:".to_owned(),
            AclTag::Other => "o:".to_owned(),
        };
        let bit = |b: u32, c: char| if self.perm & b != 0 { c } else { '-' };
        write!(f, "{who}:{}{}{}", bit(4, 'r'), bit(2, 'w'), bit(1, 'x'))
    }
}

/// ACL entries as `getfacl -c` would write them on one line.
pub fn acl_text(entries: &[AclEntry]) -> String {
    entries
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What a planned file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// Exactly these bytes.
    Bytes(#[serde(serialize_with = "serialize_digest")] Vec<u8>),
    /// Whatever is there (created empty if missing): only owner and mode are
    /// managed. The secrets file, whose content is never read, planned,
    /// printed or compared.
    Unmanaged,
}

fn serialize_digest<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&digest(bytes))
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What kind of file a [`Resource::File`] is (decides its phase and wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A file installed from the profile into `/etc/con`.
    Config,
    /// `/etc/con/env`.
    Secrets,
    /// An agent's assembled `AGENTS.md`.
    Instructions,
    /// A skill in an agent's `workspace/skills/`.
    Skill,
    /// The journald catalog.
    Catalog,
    /// A contract file (or its script) from con's shipped library.
    Contract,
}

/// One piece of host state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Resource {
    /// A Linux group.
    Group {
        /// Group name.
        name: String,
    },
    /// An agent's Linux user: locked, shell `/usr/sbin/nologin`, primary
    /// group a private group of the same name.
    User {
        /// The agent.
        agent: String,
        /// User name.
        name: String,
        /// Home directory.
        home: PathBuf,
        /// Supplementary groups, exactly.
        groups: Vec<String>,
    },
    /// A directory with owner, group and mode (the group bits of a directory
    /// with an extended ACL are its mask, as the kernel reports them).
    Dir {
        /// Path.
        path: PathBuf,
        /// Owner name.
        owner: String,
        /// Group name.
        group: String,
        /// Mode bits including setgid/sticky.
        mode: u32,
        /// The agent it belongs to, if any.
        agent: Option<String>,
    },
    /// A regular file.
    File {
        /// Path.
        path: PathBuf,
        /// Content.
        content: Content,
        /// Owner name.
        owner: String,
        /// Group name.
        group: String,
        /// Mode bits.
        mode: u32,
        /// What it is.
        kind: FileKind,
        /// The agent it belongs to, if any.
        agent: Option<String>,
    },
    /// An extended ACL on a directory planned as a [`Resource::Dir`]. A
    /// planned file or directory without one must have no extended ACL.
    Acl {
        /// Path.
        path: PathBuf,
        /// The full access ACL (owner, group, other, named entries, mask).
        access: Vec<AclEntry>,
        /// The full default ACL, or empty for none.
        default: Vec<AclEntry>,
        /// The agent it belongs to (the target of a tasking grant), if any.
        agent: Option<String>,
    },
    /// An agent's sudoers drop-in; `text: None` means the file must not exist.
    Sudoers {
        /// The agent.
        agent: String,
        /// Path of the drop-in.
        path: PathBuf,
        /// Installed text (see [`crate::sudoers`]), or `None` for no rights.
        text: Option<String>,
    },
    /// A systemd unit file.
    Unit {
        /// Unit name.
        name: String,
        /// Path of the unit file.
        path: PathBuf,
        /// Unit text.
        text: String,
        /// Whether bootstrap enables and starts it (when systemd runs).
        enable: bool,
        /// The agent it runs, if any.
        agent: Option<String>,
    },
    /// The nftables egress table; its rules need the agents' uids, so they
    /// are computed when applying.
    Egress {
        /// Table name.
        table: String,
        /// `[network] outbound_filter`.
        enabled: bool,
    },
}

impl Resource {
    /// When this resource is applied.
    pub fn phase(&self) -> Phase {
        match self {
            Resource::Group { .. } => Phase::Groups,
            Resource::User { .. } => Phase::Users,
            Resource::Dir { .. } => Phase::Dirs,
            Resource::File { kind, .. } => match kind {
                FileKind::Config | FileKind::Secrets | FileKind::Contract => Phase::Files,
                FileKind::Instructions | FileKind::Skill => Phase::Instructions,
                FileKind::Catalog => Phase::Catalog,
            },
            Resource::Acl { .. } => Phase::Acls,
            Resource::Sudoers { .. } => Phase::Sudoers,
            Resource::Unit { .. } => Phase::Units,
            Resource::Egress { .. } => Phase::Egress,
        }
    }

    /// The agent whose safety depends on this resource: if it cannot be
    /// applied, that agent's units are not installed or enabled.
    pub fn guards_agent(&self) -> Option<&str> {
        match self {
            Resource::User { agent, .. } | Resource::Sudoers { agent, .. } => Some(agent),
            Resource::Dir { agent, .. }
            | Resource::File { agent, .. }
            | Resource::Acl { agent, .. } => agent.as_deref(),
            Resource::Group { .. } | Resource::Unit { .. } | Resource::Egress { .. } => None,
        }
    }

    /// One line describing the resource; paths under `root` are written
    /// `<root>/…` so that renderings do not depend on where a test ran.
    pub fn render(&self, root: &Path) -> String {
        let p = |path: &Path| display_under(root, path);
        match self {
            Resource::Group { name } => format!("group {name}"),
            Resource::User {
                name, home, groups, ..
            } => format!(
                "user {name} home={} shell=/usr/sbin/nologin groups={}",
                p(home),
                groups.join(",")
            ),
            Resource::Dir {
                path,
                owner,
                group,
                mode,
                ..
            } => format!("dir {} {owner}:{group} {mode:04o}", p(path)),
            Resource::File {
                path,
                content,
                owner,
                group,
                mode,
                kind,
                ..
            } => {
                let what = match content {
                    Content::Unmanaged => "content not managed".to_owned(),
                    // Generated from the event registry, which grows with every
                    // new kind; its hash would churn every rendering.
                    Content::Bytes(_) if *kind == FileKind::Catalog => {
                        "generated from the event registry".to_owned()
                    }
                    // The library changes with con; its hashes would churn too.
                    Content::Bytes(_) if *kind == FileKind::Contract => {
                        "shipped with con".to_owned()
                    }
                    Content::Bytes(b) => digest(b).chars().take(19).collect(),
                };
                let label = match kind {
                    FileKind::Config | FileKind::Secrets | FileKind::Catalog => "file",
                    FileKind::Instructions => "instructions",
                    FileKind::Skill => "skill",
                    FileKind::Contract => "contract",
                };
                format!("{label} {} {owner}:{group} {mode:04o} {what}", p(path))
            }
            Resource::Acl {
                path,
                access,
                default,
                ..
            } => {
                let mut line = format!("acl {} {}", p(path), acl_text(access));
                if !default.is_empty() {
                    let _ = write!(line, " default {}", acl_text(default));
                }
                line
            }
            Resource::Sudoers { path, text, agent } => match text {
                Some(text) => {
                    let rules = text
                        .lines()
                        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                        .count();
                    format!(
                        "sudoers {} root:root 0440 agent={agent} rules={rules} {}",
                        p(path),
                        digest(text.as_bytes()).chars().take(19).collect::<String>()
                    )
                }
                None => format!("sudoers {} absent (agent={agent})", p(path)),
            },
            Resource::Unit {
                name, path, enable, ..
            } => format!(
                "unit {name} {}{}",
                p(path),
                if *enable { " enable" } else { "" }
            ),
            Resource::Egress { table, enabled } => format!(
                "egress table {table} {}",
                if *enabled {
                    "filter agent uids"
                } else {
                    "off (outbound_filter = false)"
                }
            ),
        }
    }
}

/// `path` with a `root` prefix written as `<root>`.
pub fn display_under(root: &Path, path: &Path) -> String {
    if root == Path::new("/") {
        return path.display().to_string();
    }
    match path.strip_prefix(root) {
        Ok(rest) => format!("<root>/{}", rest.display()),
        Err(_) => path.display().to_string(),
    }
}

/// The ordered resources, plus what applying needs beyond them.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Resources in apply order.
    pub resources: Vec<Resource>,
    /// `[network]`, for the egress rules.
    #[serde(skip)]
    pub network: con_config::Network,
    /// (agent, user name) of every agent, in config order.
    pub agents: Vec<(String, String)>,
}

impl Plan {
    /// Takes out of each `quarantined` agent's inbox access ACL every named
    /// entry granting write: what a quarantine removed
    /// ([`crate::quarantine::revoke_inbox_writers`]) and only a resume puts
    /// back, from the recorded entries. An apply (bootstrap, commission,
    /// decommission) while an agent is quarantined therefore leaves its
    /// inbox closed to the other agents. The default ACL, owner, group and
    /// mask stay as planned, as quarantine leaves them. Returns a note per
    /// inbox whose grants are withheld.
    pub fn withhold_quarantined_inbox_writers(
        &mut self,
        layout: &Layout,
        quarantined: &[String],
    ) -> Vec<crate::Step> {
        let mut notes = Vec::new();
        for agent in quarantined {
            let inbox = layout.agent_inbox(agent);
            for r in &mut self.resources {
                let Resource::Acl { path, access, .. } = r else {
                    continue;
                };
                if *path != inbox {
                    continue;
                }
                let before = access.len();
                access.retain(|e| {
                    !(matches!(e.tag, AclTag::User(_) | AclTag::Group(_)) && e.perm & 2 != 0)
                });
                let withheld = before - access.len();
                if withheld > 0 {
                    notes.push(crate::Step {
                        change: format!(
                            "= acl {}: {withheld} write grant(s) withheld while {agent} is quarantined (con agent resume restores them)",
                            display_under(layout.root(), path)
                        ),
                        status: crate::StepStatus::Note,
                    });
                }
            }
        }
        notes
    }

    /// One line per resource (see [`Resource::render`]).
    pub fn render(&self, root: &Path) -> String {
        self.resources
            .iter()
            .map(|r| r.render(root) + "\n")
            .collect()
    }
}

/// Directory settings before ACLs are folded in.
struct DirSpec {
    owner: String,
    group: String,
    mode: u32,
    agent: Option<String>,
    named: Vec<(AclTag, u32)>,
    default_named: Vec<(AclTag, u32)>,
}

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;
const RWX: u32 = R | W | X;

/// Computes the plan. Fails (before anything is touched) on an agent group
/// outside con's own, a user name too long for Linux, a sudoers template
/// that breaks the substitution rule, or a profile file that is not UTF-8.
pub fn plan(input: &PlanInput, layout: &Layout) -> Result<Plan, ProvisionError> {
    let config = &input.config;
    let root = "root".to_owned();
    let mut resources = Vec::new();

    for group in layout.con_groups() {
        resources.push(Resource::Group { name: group });
    }
    for agent in &config.agents {
        // Names are validated by con-config; re-checked here because they
        // become paths and user names, and this is the code that creates them.
        con_config::validate_agent_name(&agent.name)
            .map_err(|m| ProvisionError::Invalid(format!("agent {:?}: {m}", agent.name)))?;
        let user = layout.user(&agent.name);
        if user.len() > 32 {
            return Err(ProvisionError::Invalid(format!(
                "agent {}: user name {user:?} is longer than 32 bytes",
                agent.name
            )));
        }
        resources.push(Resource::User {
            agent: agent.name.clone(),
            name: user,
            home: layout.home(&agent.name),
            groups: agent_groups(layout, agent)?,
        });
    }

    // Directories, in creation order (parents first).
    let mut dirs: Vec<(PathBuf, DirSpec)> = Vec::new();
    let plain = |owner: &str, group: &str, mode: u32, agent: Option<&str>| DirSpec {
        owner: owner.to_owned(),
        group: group.to_owned(),
        mode,
        agent: agent.map(str::to_owned),
        named: Vec::new(),
        default_named: Vec::new(),
    };
    dirs.push((layout.etc_dir(), plain("root", "root", 0o755, None)));
    if input.install_profile {
        let mut layer_dirs: Vec<PathBuf> = Vec::new();
        for rel in input.profile.files.keys() {
            let mut dir = rel.parent();
            let mut chain = Vec::new();
            while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
                chain.push(d.to_path_buf());
                dir = d.parent();
            }
            for d in chain.into_iter().rev() {
                if !layer_dirs.contains(&d) {
                    layer_dirs.push(d);
                }
            }
        }
        layer_dirs.sort();
        for d in layer_dirs {
            dirs.push((layout.etc_dir().join(d), plain("root", "root", 0o755, None)));
        }
    }
    dirs.push((layout.srv_dir(), plain("root", "root", 0o755, None)));
    // Humans in `trusted` drop tasks here; the daemon (root) routes them.
    // Sticky: one operator cannot delete or rename another's task.
    dirs.push((
        layout.outer_inbox(),
        plain("root", &layout.trusted_group(), 0o1770, None),
    ));
    dirs.push((layout.agents_dir(), plain("root", "root", 0o755, None)));
    let sysadmins: Vec<String> = config
        .agents
        .iter()
        .filter(|a| a.roles.iter().any(|r| r == "sysadmin"))
        .map(|a| layout.user(&a.name))
        .collect();
    // The sysadmin role manages contracts and the inner config overlay;
    // the default ACL keeps what root or another sysadmin adds writable.
    // The contracts directory is sticky: a sysadmin adds and removes its
    // own files there, never root's (the shipped library, and what `con
    // contracts add` stored): deleting or renaming one would silence a
    // check.
    let sysadmin_managed = [
        (layout.contracts_dir(), 0o1755),
        (layout.config_overlay_dir(), 0o755),
    ];
    for (dir, mode) in &sysadmin_managed {
        let mut spec = plain("root", "root", *mode, None);
        for s in &sysadmins {
            spec.named.push((AclTag::User(s.clone()), RWX));
            spec.default_named.push((AclTag::User(s.clone()), RWX));
        }
        dirs.push((dir.clone(), spec));
    }
    // The shipped library's scripts: root's alone, since root runs them.
    dirs.push((
        layout.contracts_dir().join("scripts"),
        plain("root", "root", 0o755, None),
    ));
    // Officers and operators leave artifacts for everyone; sticky so none
    // can delete or replace another's. Every agent reads them.
    let officers = layout.group(ConGroup::Officers);
    let operators = layout.group(ConGroup::Operators);
    let mut artifacts = plain("root", &layout.group(ConGroup::Agents), 0o1750, None);
    for g in [&officers, &operators] {
        artifacts.named.push((AclTag::Group(g.clone()), RWX));
    }
    dirs.push((layout.artifacts_dir(), artifacts));
    // Standing policy is the officers' to write (global, per tier, per
    // agent) and every agent's to read; the default ACL keeps what one
    // officer writes writable by the others and readable by all.
    let mut policy = plain("root", &layout.group(ConGroup::Agents), 0o755, None);
    policy.named.push((AclTag::Group(officers.clone()), RWX));
    policy
        .default_named
        .push((AclTag::Group(officers.clone()), RWX));
    dirs.push((layout.policy_dir(), policy));
    // The daily ledger files (the daemon writes them, 0644): accounting of
    // the whole fleet, so read only by those who see the fleet, as the
    // daemon's ledger request is: officers, and operators where
    // `[fleet_view]` says so. Workers cannot enter.
    let mut ledger = plain("root", &officers, 0o750, None);
    if config.fleet_view.operators {
        ledger.named.push((AclTag::Group(operators.clone()), R | X));
    }
    dirs.push((layout.ledger_dir(), ledger));
    for dir in [layout.status_dir(), layout.scopes_dir()] {
        dirs.push((dir, plain("root", "root", 0o755, None)));
    }
    dirs.push((layout.state_dir(), plain("root", "root", 0o700, None)));
    dirs.push((layout.runtime_dir(), plain("root", "root", 0o755, None)));
    dirs.push((layout.home_base(), plain("root", "root", 0o755, None)));

    // Who may task whom: officers and operators every other agent, workers no one.
    let writers = |target: &str| -> Vec<String> {
        config
            .agents
            .iter()
            .filter(|a| a.name != target && matches!(a.tier, Tier::Officer | Tier::Operator))
            .map(|a| layout.user(&a.name))
            .collect()
    };
    let mut writable: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for agent in &config.agents {
        let name = agent.name.as_str();
        let user = layout.user(name);
        let a = Some(name);
        // Root-owned, readable by the agent's private group only: the agent
        // reads its AGENTS.md but cannot rename or replace it, as it could if
        // it owned the directory.
        dirs.push((layout.home(name), plain("root", &user, 0o750, a)));
        // Root-owned for the same reason: an agent owning its base dir could
        // rename `workspace` away and recreate it with skills of its own.
        let mut base = plain("root", &user, 0o750, a);
        // Sticky: an agent that may write here can rename or delete only the
        // tasks it wrote itself, not the operator's or another agent's.
        let mut inbox = plain(&user, &user, 0o1700, a);
        for w in writers(name) {
            base.named.push((AclTag::User(w.clone()), X));
            inbox.named.push((AclTag::User(w.clone()), RWX));
            writable
                .entry(w)
                .or_default()
                .push(layout.agent_inbox(name));
        }
        if !inbox.named.is_empty() {
            // Tasks written by others must stay readable by the target, and
            // no more: one it could rewrite would be unverified.
            inbox.default_named.push((AclTag::User(user.clone()), R));
        }
        let dir = layout.agent_dir(name);
        dirs.push((dir.clone(), base));
        dirs.push((layout.agent_inbox(name), inbox));
        for sub in [
            layout.agent_outbox(name),
            layout.agent_processed(name),
            layout.agent_failed(name),
            layout.agent_sessions(name),
        ] {
            dirs.push((sub, plain(&user, &user, 0o700, a)));
        }
        // Writable by the agent through its private group; sticky and
        // root-owned so it cannot rename or delete the root-owned `skills`.
        dirs.push((
            layout.agent_workspace(name),
            plain("root", &user, 0o1770, a),
        ));
        dirs.push((layout.agent_skills(name), plain("root", "root", 0o755, a)));
        writable.entry(user.clone()).or_default().push(dir);
    }
    for s in &sysadmins {
        writable
            .entry(s.clone())
            .or_default()
            .extend(sysadmin_managed.iter().map(|(dir, _)| dir.clone()));
    }
    for agent in &config.agents {
        let grants: &[PathBuf] = match agent.tier {
            Tier::Officer => &[layout.policy_dir(), layout.artifacts_dir()],
            Tier::Operator => &[layout.artifacts_dir()],
            Tier::Worker => &[],
        };
        writable
            .entry(layout.user(&agent.name))
            .or_default()
            .extend(grants.iter().cloned());
    }

    let mut acls = Vec::new();
    for (path, spec) in dirs {
        let mut mode = spec.mode;
        if !spec.named.is_empty() {
            let access = full_acl(spec.mode, &spec.named);
            let mask = access
                .iter()
                .find(|e| e.tag == AclTag::Mask)
                .map_or(0, |e| e.perm);
            mode = (mode & !0o070) | (mask << 3);
            let default = if spec.default_named.is_empty() {
                Vec::new()
            } else {
                full_acl(spec.mode, &spec.default_named)
            };
            acls.push(Resource::Acl {
                path: path.clone(),
                access,
                default,
                agent: spec.agent.clone(),
            });
        }
        resources.push(Resource::Dir {
            path,
            owner: spec.owner,
            group: spec.group,
            mode,
            agent: spec.agent,
        });
    }

    // Files installed from the profile, and the secrets file.
    if input.install_profile {
        if input.profile.get("con.toml").is_none() {
            return Err(ProvisionError::Invalid(
                "profile has no con.toml".to_owned(),
            ));
        }
        for (rel, content) in &input.profile.files {
            let path = if rel == Path::new("con.toml") {
                layout.config_file().to_path_buf()
            } else {
                layout.etc_dir().join(rel)
            };
            resources.push(file(path, content.clone(), 0o644, FileKind::Config, None));
        }
    }
    // con's own contract library. Its files are root's and read-only to
    // everyone else (a root-owned file others could write would be refused
    // by the daemon); what the sysadmin adds next to them is its own.
    for (rel, content, mode) in crate::shipped::CONTRACTS {
        resources.push(file(
            layout.contracts_dir().join(rel),
            content.to_vec(),
            *mode,
            FileKind::Contract,
            None,
        ));
    }
    resources.push(Resource::File {
        path: layout.env_file(),
        content: Content::Unmanaged,
        owner: root.clone(),
        group: root.clone(),
        mode: 0o600,
        kind: FileKind::Secrets,
        agent: None,
    });
    resources.extend(acls);

    // Sudoers, instructions, skills.
    for agent in &config.agents {
        let user = layout.user(&agent.name);
        let mut templates = Vec::new();
        for role in &agent.roles {
            if let Some(text) = input.profile.text(&format!("sudoers/{role}"))? {
                templates.push((role.clone(), text));
            }
        }
        let text = if templates.is_empty() {
            None
        } else {
            Some(
                sudoers::render(&agent.name, &user, &templates)
                    .map_err(|m| ProvisionError::Invalid(format!("agent {}: {m}", agent.name)))?,
            )
        };
        resources.push(Resource::Sudoers {
            agent: agent.name.clone(),
            path: layout.sudoers_file(&agent.name),
            text,
        });
    }
    for agent in &config.agents {
        let a = Some(agent.name.as_str());
        let text = instructions::assemble(agent, config, &input.profile, layout)?;
        resources.push(file(
            layout.agents_md(&agent.name),
            text.into_bytes(),
            0o444,
            FileKind::Instructions,
            a,
        ));
        let mut skills: BTreeMap<String, (&str, &[u8])> = BTreeMap::new();
        for role in &agent.roles {
            for (name, content) in input.profile.skills(role) {
                if let Some((other, _)) = skills.insert(name.clone(), (role, content)) {
                    return Err(ProvisionError::Invalid(format!(
                        "agent {}: skill {name} is in both roles/{other} and roles/{role}",
                        agent.name
                    )));
                }
            }
        }
        let dir = layout.agent_skills(&agent.name);
        for (name, (_, content)) in skills {
            resources.push(file(
                dir.join(name),
                content.to_vec(),
                0o444,
                FileKind::Skill,
                a,
            ));
        }
    }

    // Units.
    let mut unit_resource = |unit: units::Unit, agent: Option<&str>| {
        check_unit_name(&unit.name)?;
        resources.push(Resource::Unit {
            path: layout.unit_file(&unit.name),
            name: unit.name,
            text: unit.text,
            enable: unit.enable,
            agent: agent.map(str::to_owned),
        });
        Ok::<(), ProvisionError>(())
    };
    for unit in units::system_units(config, layout) {
        unit_resource(unit, None)?;
    }
    for agent in &config.agents {
        let paths = writable
            .get(&layout.user(&agent.name))
            .cloned()
            .unwrap_or_default();
        for unit in units::agent_units(config, agent, layout, &paths) {
            unit_resource(unit, Some(&agent.name))?;
        }
    }

    resources.push(Resource::Egress {
        table: layout.egress_table(),
        enabled: config.network.outbound_filter,
    });
    resources.push(file(
        layout.catalog_file(),
        con_journal::catalog().into_bytes(),
        0o644,
        FileKind::Catalog,
        None,
    ));

    resources.sort_by_key(Resource::phase);
    Ok(Plan {
        resources,
        network: config.network.clone(),
        agents: config
            .agents
            .iter()
            .map(|a| (a.name.clone(), layout.user(&a.name)))
            .collect(),
    })
}

/// The supplementary groups of an agent: `agents`, its tier group, and the
/// config's `groups`, each of which must be one of con's own groups other
/// than `trusted` (an allowlist, so no host group such as `input`, `video`
/// or `docker` can be named). `trusted` is refused because the daemon treats
/// its members as operators and the inbox watcher trusts what they write.
pub(crate) fn agent_groups(
    layout: &Layout,
    agent: &con_config::Agent,
) -> Result<Vec<String>, ProvisionError> {
    let allowed: Vec<ConGroup> = ConGroup::ALL
        .into_iter()
        .filter(|g| *g != ConGroup::Trusted)
        .collect();
    let mut groups = vec![
        layout.group(ConGroup::Agents),
        layout.group(agent.tier.group()),
    ];
    for g in &agent.groups {
        let Some(group) = ConGroup::from_base_name(g).filter(|g| allowed.contains(g)) else {
            let names: Vec<&str> = allowed.iter().map(|g| g.base_name()).collect();
            return Err(ProvisionError::Invalid(format!(
                "agent {}: groups: {g:?} is not one of con's agent groups (allowed: {})",
                agent.name,
                names.join(", ")
            )));
        };
        let full = layout.group(group);
        if !groups.contains(&full) {
            groups.push(full);
        }
    }
    Ok(groups)
}

fn file(
    path: PathBuf,
    content: Vec<u8>,
    mode: u32,
    kind: FileKind,
    agent: Option<&str>,
) -> Resource {
    Resource::File {
        path,
        content: Content::Bytes(content),
        owner: "root".to_owned(),
        group: "root".to_owned(),
        mode,
        kind,
        agent: agent.map(str::to_owned),
    }
}

/// A unit name becomes a file name in the unit directory.
fn check_unit_name(name: &str) -> Result<(), ProvisionError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "unit name {name:?} is not a valid file name"
        )))
    }
}

/// The full ACL for a directory of `mode` with `named` entries: owner,
/// group and other from the mode, the named entries, and the mask the
/// kernel would compute (the union of the group class).
fn full_acl(mode: u32, named: &[(AclTag, u32)]) -> Vec<AclEntry> {
    let mut entries = vec![
        AclEntry {
            tag: AclTag::UserObj,
            perm: (mode >> 6) & RWX,
        },
        AclEntry {
            tag: AclTag::GroupObj,
            perm: (mode >> 3) & RWX,
        },
        AclEntry {
            tag: AclTag::Other,
            perm: mode & RWX,
        },
    ];
    let mut mask = (mode >> 3) & RWX;
    for (tag, perm) in named {
        mask |= perm;
        entries.push(AclEntry {
            tag: tag.clone(),
            perm: *perm,
        });
    }
    entries.push(AclEntry {
        tag: AclTag::Mask,
        perm: mask,
    });
    entries.sort();
    entries
}
