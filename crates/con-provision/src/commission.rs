//! `con commission` and `con decommission`: one agent added to or removed
//! from the installed config, then the same plan → apply as bootstrap.
//!
//! Everything is validated before anything is touched: the name (the rule
//! that makes it safe as a user and path name), the roles (they must exist
//! in the installed profile), the whole resulting config and its plan. Only
//! then is the config replaced (atomically, owner and mode kept) and the
//! plan applied. A lock on the config's directory serialises concurrent
//! runs, so two commissions cannot both edit the same old text.
//!
//! Applying a plan only ever converges what the plan names, so removing an
//! agent from the config withdraws what other resources granted it (ACL
//! entries on other agents' inboxes, the sysadmin directories, its uid in
//! the egress set) but leaves its own things alone. Decommissioning
//! therefore also **retires** the agent, before its entry is removed: its
//! units are stopped and deleted, its sudoers drop-in deleted, its account
//! locked and expired with no supplementary groups (kept, so its uid stays
//! reserved and its files attributable), and its directory made root's
//! alone (kept for forensics). If retiring fails the config is not
//! changed, so running the command again retries.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use con_config::Config;
use con_layout::Layout;
use nix::unistd::User;

use crate::apply::systemd_manages;
use crate::config_edit::{self, NewAgent};
use crate::host::{NOLOGIN, run};
use crate::plan::{PlanInput, Resource};
use crate::profile::Profile;
use crate::{ApplyOptions, ProvisionError, Report, Step, StepStatus};

/// The installed config and its text, and the profile next to it.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The config file's text as read.
    pub text: String,
    /// What planning needs (the profile is the config's directory).
    pub input: PlanInput,
    /// The directory the profile was read from.
    pub profile_dir: PathBuf,
}

impl Installed {
    /// Reads and validates the layout's config file and the profile beside it.
    pub fn read(layout: &Layout, env: &BTreeMap<String, String>) -> Result<Self, ProvisionError> {
        let path = layout.config_file();
        let text = std::fs::read_to_string(path).map_err(|e| ProvisionError::io(path, &e))?;
        let config = parse(&text, path, env)?;
        let profile_dir = layout.profile_dir();
        Ok(Self {
            input: PlanInput {
                config,
                profile: Profile::read(&profile_dir)?,
                install_profile: false,
            },
            text,
            profile_dir,
        })
    }
}

fn parse(
    text: &str,
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Config, ProvisionError> {
    con_config::parse(text, path, env).map_err(|e| ProvisionError::Invalid(e.to_string()))
}

/// Held for the whole edit: an exclusive `flock` on the config's directory.
struct ConfigLock {
    _dir: std::fs::File,
}

impl ConfigLock {
    fn take(layout: &Layout) -> Result<Self, ProvisionError> {
        let dir = layout.profile_dir();
        let file = std::fs::File::open(&dir).map_err(|e| ProvisionError::io(&dir, &e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| ProvisionError::Invalid(format!("{}: cannot lock: {e}", dir.display())))?;
        Ok(Self { _dir: file })
    }
}

fn check_name(name: &str) -> Result<(), ProvisionError> {
    con_config::validate_agent_name(name)
        .map_err(|m| ProvisionError::Invalid(format!("agent name {name:?}: {m}")))
}

/// Adds agent `agent` to the installed config and provisions it. Refused
/// (with nothing touched) if the name is invalid or taken, if a Linux user
/// of that name already exists (a decommissioned agent keeps its account
/// and files, which a new agent must not inherit), if a role is not in the
/// profile, or if the resulting config or plan is invalid. The inboxes of
/// the `quarantined` agents stay closed
/// ([`crate::Plan::withhold_quarantined_inbox_writers`]).
pub fn commission(
    layout: &Layout,
    env: &BTreeMap<String, String>,
    agent: &NewAgent,
    sudo_user: Option<&str>,
    netns: Option<&str>,
    quarantined: &[String],
) -> Result<Report, ProvisionError> {
    check_name(&agent.name)?;
    for role in &agent.roles {
        con_config::validate_agent_name(role)
            .map_err(|m| ProvisionError::Invalid(format!("role {role:?}: {m}")))?;
    }
    let _lock = ConfigLock::take(layout)?;
    let installed = Installed::read(layout, env)?;
    if let Some(caller) = Delegation::of(layout, &installed, sudo_user)? {
        caller.may_grant(agent)?;
    }
    let path = layout.config_file();
    if installed.input.config.agent(&agent.name).is_some() {
        return Err(ProvisionError::Invalid(format!(
            "agent {} already exists in {}",
            agent.name,
            path.display()
        )));
    }
    let user = layout.user(&agent.name);
    if User::from_name(&user)
        .map_err(|e| ProvisionError::Invalid(format!("user {user}: lookup failed: {e}")))?
        .is_some()
    {
        return Err(ProvisionError::Invalid(format!(
            "user {user} already exists (a decommissioned agent keeps its account and files); choose another name"
        )));
    }
    let roles_dir = installed.profile_dir.join("roles");
    for role in &agent.roles {
        let dir = roles_dir.join(role);
        if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Err(ProvisionError::Invalid(format!(
                "role {role}: no such role in {} (available: {})",
                roles_dir.display(),
                available_roles(&roles_dir)
            )));
        }
    }
    let text = config_edit::add_agent(&installed.text, path, agent)?;
    let input = PlanInput {
        config: parse(&text, path, env)?,
        ..installed.input
    };
    let mut plan = crate::plan(&input, layout)?;
    let notes = plan.withhold_quarantined_inbox_writers(layout, quarantined);
    config_edit::write_config(path, &text)?;
    let mut report = crate::apply(
        &plan,
        layout,
        &ApplyOptions {
            dry_run: false,
            netns: netns.map(str::to_owned),
        },
    );
    report.steps.extend(notes);
    Ok(report)
}

/// An agent acting through its sudo grant of `con commission` or `con
/// decommission`: what it may do is bounded by what it is, so a prompt
/// injected into it cannot mint a more privileged agent or remove one it
/// does not outrank.
///
/// - It may commission an agent of its own tier or a lower one, with only
///   roles it holds itself and none that carries sudo rights (a
///   `sudoers/<role>` template in the profile): no agent it creates can
///   sudo.
/// - It may decommission only an agent of a lower tier that holds no role
///   with sudo rights (never itself, its peers or its superiors).
///
/// A person who uses sudo (a user that is no agent) is not limited here.
#[derive(Debug)]
pub struct Delegation<'a> {
    caller: &'a con_config::Agent,
    privileged: Vec<String>,
}

impl<'a> Delegation<'a> {
    /// The agent behind `sudo_user` (the user sudo says ran the command), or
    /// `None` if no sudo was involved or the user is not an agent's. A user
    /// named like an agent's that no configured agent has (a decommissioned
    /// one) may do nothing.
    pub fn of(
        layout: &Layout,
        installed: &'a Installed,
        sudo_user: Option<&str>,
    ) -> Result<Option<Self>, ProvisionError> {
        let Some(user) = sudo_user else {
            return Ok(None);
        };
        let config = &installed.input.config;
        let privileged = privileged_roles(installed);
        match config.agents.iter().find(|a| layout.user(&a.name) == user) {
            Some(caller) => Ok(Some(Self { caller, privileged })),
            None if user.starts_with(&layout.user("")) => Err(ProvisionError::Invalid(format!(
                "user {user} ran this through sudo but is no configured agent: refused"
            ))),
            None => Ok(None),
        }
    }

    /// Refuses a new agent above what the caller may grant.
    pub fn may_grant(&self, new: &NewAgent) -> Result<(), ProvisionError> {
        let caller = self.caller;
        let refuse = |why: String| {
            Err(ProvisionError::Invalid(format!(
                "agent {} (through sudo) may not commission {}: {why}",
                caller.name, new.name
            )))
        };
        if new.tier < caller.tier {
            return refuse(format!(
                "tier {} is above its own tier {}",
                new.tier, caller.tier
            ));
        }
        for role in &new.roles {
            if self.privileged.contains(role) {
                return refuse(format!("role {role} carries sudo rights (sudoers/{role})"));
            }
            if !caller.roles.contains(role) {
                return refuse(format!("role {role} is not one of its own"));
            }
        }
        Ok(())
    }

    /// Refuses removing an agent the caller does not outrank.
    pub fn may_remove(&self, target: &con_config::Agent) -> Result<(), ProvisionError> {
        let caller = self.caller;
        let refuse = |why: String| {
            Err(ProvisionError::Invalid(format!(
                "agent {} (through sudo) may not decommission {}: {why}",
                caller.name, target.name
            )))
        };
        if target.tier <= caller.tier {
            return refuse(format!(
                "its tier {} is not below its own tier {}",
                target.tier, caller.tier
            ));
        }
        if let Some(role) = target.roles.iter().find(|r| self.privileged.contains(r)) {
            return refuse(format!("its role {role} carries sudo rights"));
        }
        Ok(())
    }
}

/// Roles whose profile has a sudoers template.
fn privileged_roles(installed: &Installed) -> Vec<String> {
    installed
        .input
        .profile
        .files
        .keys()
        .filter_map(|rel| rel.strip_prefix("sudoers").ok())
        .map(|role| role.to_string_lossy().into_owned())
        .collect()
}

fn available_roles(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| con_config::validate_agent_name(n).is_ok())
        .collect();
    names.sort();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// What decommissioning did.
#[derive(Debug, Clone, Default)]
pub struct Decommissioned {
    /// Retirement steps, then the apply of the plan without the agent.
    pub report: Report,
    /// Whether the agent's entry was removed from the config (false when
    /// retiring it failed: nothing else was then changed).
    pub removed: bool,
}

/// Retires agent `name` and removes it from the installed config, then
/// applies the plan without it (see the module docs). Refused if the name
/// is invalid or not configured, or if the config without it is invalid.
/// The inboxes of the `quarantined` agents stay closed
/// ([`crate::Plan::withhold_quarantined_inbox_writers`]).
pub fn decommission(
    layout: &Layout,
    env: &BTreeMap<String, String>,
    name: &str,
    sudo_user: Option<&str>,
    netns: Option<&str>,
    quarantined: &[String],
) -> Result<Decommissioned, ProvisionError> {
    check_name(name)?;
    let _lock = ConfigLock::take(layout)?;
    let installed = Installed::read(layout, env)?;
    let path = layout.config_file();
    let Some(target) = installed.input.config.agent(name) else {
        return Err(ProvisionError::Invalid(format!(
            "no agent named {name} in {}",
            path.display()
        )));
    };
    if let Some(caller) = Delegation::of(layout, &installed, sudo_user)? {
        caller.may_remove(target)?;
    }
    // Its units as the current config generates them.
    let units: Vec<(String, PathBuf)> = crate::plan(&installed.input, layout)?
        .resources
        .into_iter()
        .filter_map(|r| match r {
            Resource::Unit {
                name: unit,
                path,
                agent: Some(a),
                ..
            } if a == name => Some((unit, path)),
            _ => None,
        })
        .collect();
    let text = config_edit::remove_agent(&installed.text, path, name)?;
    let input = PlanInput {
        config: parse(&text, path, env)?,
        ..installed.input
    };
    let mut plan = crate::plan(&input, layout)?;
    let notes = plan.withhold_quarantined_inbox_writers(layout, quarantined);

    let mut report = Report::default();
    retire(layout, name, &units, &mut report);
    if !report.failed().is_empty() {
        report.steps.push(Step {
            change: format!(
                "- {} not changed: agent {name} is not fully retired (run again)",
                path.display()
            ),
            status: StepStatus::Note,
        });
        report.withheld.push(name.to_owned());
        return Ok(Decommissioned {
            report,
            removed: false,
        });
    }
    config_edit::write_config(path, &text)?;
    report.steps.push(Step {
        change: format!("- agent {name} from {}", path.display()),
        status: StepStatus::Done,
    });
    let applied = crate::apply(
        &plan,
        layout,
        &ApplyOptions {
            dry_run: false,
            netns: netns.map(str::to_owned),
        },
    );
    report.steps.extend(applied.steps);
    report.steps.extend(notes);
    report.withheld = applied.withheld;
    Ok(Decommissioned {
        report,
        removed: true,
    })
}

fn push(report: &mut Report, change: String, result: Result<(), String>) {
    report.steps.push(Step {
        change,
        status: match result {
            Ok(()) => StepStatus::Done,
            Err(e) => StepStatus::Failed(e),
        },
    });
}

/// SIGKILLs every process of `uid`; none running is fine.
fn kill_all_of(uid: &str) -> Result<(), String> {
    let status = std::process::Command::new("pkill")
        .args(["-KILL", "-U", uid])
        .status()
        .map_err(|e| format!("cannot run pkill: {e}"))?;
    // pkill: 0 = signalled some, 1 = none matched.
    match status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(format!("pkill -KILL -U {uid}: {status}")),
    }
}

/// Stops and removes what belongs to agent `name` alone.
fn retire(layout: &Layout, name: &str, units: &[(String, PathBuf)], report: &mut Report) {
    let systemd = systemd_manages(layout);
    let present: Vec<&(String, PathBuf)> = units
        .iter()
        .filter(|(_, path)| std::fs::symlink_metadata(path).is_ok())
        .collect();
    if systemd {
        for (unit, _) in &present {
            push(
                report,
                format!("~ disable --now {unit}"),
                run("systemctl", &["disable", "--now", unit]),
            );
        }
    }
    for (_, path) in &present {
        push(
            report,
            format!("- unit {}", path.display()),
            std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display())),
        );
    }
    if systemd && !present.is_empty() {
        push(
            report,
            "~ systemctl daemon-reload".to_owned(),
            run("systemctl", &["daemon-reload"]),
        );
    }

    let sudoers = layout.sudoers_file(name);
    if std::fs::symlink_metadata(&sudoers).is_ok() {
        push(
            report,
            format!("- sudoers {}", sudoers.display()),
            std::fs::remove_file(&sudoers).map_err(|e| format!("{}: {e}", sudoers.display())),
        );
    }

    let user = layout.user(name);
    match User::from_name(&user) {
        Ok(Some(found)) if found.uid.is_root() => push(
            report,
            format!("! user {user}"),
            Err(format!("user {user} has uid 0: refusing to touch it")),
        ),
        Ok(Some(found)) => {
            // Whatever still runs as the agent (a tool that escaped its
            // process group, a run the daemon started) stops now: once its
            // uid leaves the egress set it would reach anything.
            let uid = found.uid.as_raw().to_string();
            push(
                report,
                format!("~ processes of {user} killed (pkill -KILL -U {uid})"),
                kill_all_of(&uid),
            );
            push(
                report,
                format!(
                    "~ user {user} locked and expired (usermod -L -e 1), shell {NOLOGIN}, no supplementary groups"
                ),
                // Kept, not deleted: its uid stays reserved, so files it left
                // behind stay attributable and no new account inherits them.
                run(
                    "usermod",
                    &[
                        "--lock",
                        "--expiredate",
                        "1",
                        "--shell",
                        NOLOGIN,
                        "--groups",
                        "",
                        &user,
                    ],
                ),
            );
        }
        Ok(None) => {}
        Err(e) => push(
            report,
            format!("! user {user}"),
            Err(format!("lookup failed: {e}")),
        ),
    }

    let dir = layout.agent_dir(name);
    if let Some(change) = close_dir(&dir) {
        push(
            report,
            format!(
                "~ dir {} root:root 0700, no ACL (kept for forensics)",
                dir.display()
            ),
            change,
        );
    }
}

/// Makes `dir` root's alone (0700, no extended ACL); `None` if it is
/// missing or already so.
fn close_dir(dir: &Path) -> Option<Result<(), String>> {
    let shown = dir.display();
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("{shown}: {e}"))),
    };
    if !meta.is_dir() {
        return Some(Err(format!(
            "{shown}: not a directory; refusing to touch it"
        )));
    }
    let has_acl = |xattr: &str| {
        !matches!(
            rustix::fs::getxattr(dir, xattr, &mut [0u8; 0][..]),
            Err(rustix::io::Errno::NODATA)
        )
    };
    if meta.uid() == 0
        && meta.gid() == 0
        && meta.mode() & 0o7777 == 0o700
        && !has_acl("system.posix_acl_access")
        && !has_acl("system.posix_acl_default")
    {
        return None;
    }
    Some((|| {
        let root = nix::unistd::Uid::from_raw(0);
        let root_group = nix::unistd::Gid::from_raw(0);
        // Mode first: from now on nothing but root gets in, whatever the owner.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{shown}: chmod: {e}"))?;
        // Without the ACL xattrs the mode bits are the whole story.
        for xattr in ["system.posix_acl_access", "system.posix_acl_default"] {
            match rustix::fs::removexattr(dir, xattr) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(format!("{shown}: cannot remove {xattr}: {e}")),
            }
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{shown}: chmod: {e}"))?;
        nix::unistd::chown(dir, Some(root), Some(root_group))
            .map_err(|e| format!("{shown}: chown: {e}"))
    })())
}

/// Commissioning and decommissioning need root (accounts, ownership,
/// sudoers); checked first so a non-root run fails on one line.
pub fn require_root_for(command: &str) -> Result<(), ProvisionError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "con {command} must run as root"
        )))
    }
}

#[cfg(test)]
mod delegation_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use con_config::Tier;

    fn config() -> Config {
        let text = "[[agents]]\nname = \"sysadmin\"\ntier = \"operator\"\nroles = [\"sysadmin\", \"helper\"]\n\n\
                    [[agents]]\nname = \"concierge\"\ntier = \"operator\"\n\n\
                    [[agents]]\nname = \"boss\"\ntier = \"officer\"\n\n\
                    [[agents]]\nname = \"scout\"\ntier = \"worker\"\n\n\
                    [[agents]]\nname = \"root-ish\"\ntier = \"worker\"\nroles = [\"sysadmin\"]\n";
        con_config::parse(text, Path::new("con.toml"), &BTreeMap::new()).unwrap()
    }

    fn new(tier: Tier, roles: &[&str]) -> NewAgent {
        NewAgent {
            name: "fresh".into(),
            tier,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn an_agent_grants_no_more_than_it_is_and_removes_only_what_it_outranks() {
        let config = config();
        let d = Delegation {
            caller: config.agent("sysadmin").unwrap(),
            privileged: vec!["sysadmin".into()],
        };
        let refused = |r: Result<(), ProvisionError>| r.unwrap_err().to_string();

        assert!(d.may_grant(&new(Tier::Worker, &[])).is_ok());
        assert!(d.may_grant(&new(Tier::Operator, &["helper"])).is_ok());
        assert!(
            refused(d.may_grant(&new(Tier::Officer, &[])))
                .contains("tier officer is above its own tier operator")
        );
        assert!(
            refused(d.may_grant(&new(Tier::Worker, &["sysadmin"])))
                .contains("role sysadmin carries sudo rights")
        );
        assert!(
            refused(d.may_grant(&new(Tier::Worker, &["concierge"])))
                .contains("role concierge is not one of its own")
        );

        assert!(d.may_remove(config.agent("scout").unwrap()).is_ok());
        for (target, why) in [
            (
                "concierge",
                "its tier operator is not below its own tier operator",
            ),
            ("sysadmin", "not below"),
            ("boss", "its tier officer is not below"),
            ("root-ish", "its role sysadmin carries sudo rights"),
        ] {
            let err = refused(d.may_remove(config.agent(target).unwrap()));
            assert!(err.contains(why), "{target}: {err}");
            assert!(err.starts_with("agent sysadmin (through sudo) may not decommission"));
        }
    }
}
