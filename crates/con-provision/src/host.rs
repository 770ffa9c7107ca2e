//! Reading the host and bringing one resource in line with the plan.
//!
//! [`converge`] is the single diff: it compares a resource with what is on
//! the host and, unless asked only to look, fixes each difference it
//! reports. `check` and `--dry-run` call it looking only, so what they
//! print is exactly what applying would do.

use std::ffi::CString;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Group, Uid, User};
use posix_acl::{PosixACL, Qualifier};

use crate::plan::{AclEntry, AclTag, Content, FileKind, Resource, acl_text};
use crate::sudoers;

/// The shell of every agent user: agents never log in.
pub const NOLOGIN: &str = "/usr/sbin/nologin";

/// What [`converge`] found (and, when fixing, did).
#[derive(Debug, Default)]
pub(crate) struct Converged {
    /// One line per difference, e.g. `~ mode /srv/con 0700 -> 0755`.
    pub changes: Vec<String>,
    /// Why the resource could not be read or fixed; the resource is then
    /// not in the planned state.
    pub error: Option<String>,
}

/// Compares `resource` with the host; fixes the differences unless `dry`.
/// Egress is handled by the caller (its rules need uids).
/// `has_acl` says whether the plan also has a [`Resource::Acl`] for this
/// path; if not, any extended ACL found on it is a difference.
pub(crate) fn converge(resource: &Resource, has_acl: bool, dry: bool) -> Converged {
    let mut out = Converged::default();
    let result = match resource {
        Resource::Group { name } => group(name, dry, &mut out.changes),
        Resource::User {
            name, home, groups, ..
        } => user(name, home, groups, dry, &mut out.changes),
        Resource::Dir {
            path,
            owner,
            group,
            mode,
            ..
        } => dir(path, owner, group, *mode, dry, &mut out.changes).and_then(|()| {
            if has_acl || (dry && !path.exists()) {
                Ok(())
            } else {
                strip_extended_acl(path, *mode, true, dry, &mut out.changes)
            }
        }),
        Resource::File {
            path,
            content,
            owner,
            group,
            mode,
            kind,
            ..
        } => {
            let label = match kind {
                FileKind::Instructions => "instructions",
                FileKind::Skill => "skill",
                _ => "file",
            };
            let want = Want {
                owner,
                group,
                mode: *mode,
            };
            match content {
                Content::Bytes(bytes) => file(label, path, bytes, &want, dry, &mut out.changes),
                Content::Unmanaged => unmanaged_file(path, &want, dry, &mut out.changes),
            }
        }
        Resource::Acl {
            path,
            access,
            default,
            ..
        } => acl(path, access, default, dry, &mut out.changes),
        Resource::Sudoers { path, text, .. } => {
            sudoers_file(path, text.as_deref(), dry, &mut out.changes)
        }
        Resource::Unit { path, text, .. } => {
            let want = Want {
                owner: "root",
                group: "root",
                mode: 0o644,
            };
            file("unit", path, text.as_bytes(), &want, dry, &mut out.changes)
        }
        Resource::Egress { .. } => Ok(()),
    };
    out.error = result.err();
    out
}

struct Want<'a> {
    owner: &'a str,
    group: &'a str,
    mode: u32,
}

impl std::fmt::Display for Want<'_> {
    /// `owner:group 0644`, as a `+` line shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} {:04o}", self.owner, self.group, self.mode)
    }
}

fn group(name: &str, dry: bool, changes: &mut Vec<String>) -> Result<(), String> {
    if Group::from_name(name)
        .map_err(|e| format!("group {name}: lookup failed: {e}"))?
        .is_some()
    {
        return Ok(());
    }
    changes.push(format!("+ group {name}"));
    if dry {
        return Ok(());
    }
    run("groupadd", &["--system", name])
}

fn user(
    name: &str,
    home: &Path,
    groups: &[String],
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let home_s = home.display().to_string();
    let groups_s = groups.join(",");
    let Some(found) =
        User::from_name(name).map_err(|e| format!("user {name}: lookup failed: {e}"))?
    else {
        changes.push(format!("+ user {name} (groups {groups_s})"));
        if dry {
            return Ok(());
        }
        // useradd leaves the password locked ("!"); the private group of the
        // same name keeps the agent's home and workspace its own.
        return run(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                &home_s,
                "--shell",
                NOLOGIN,
                "--groups",
                &groups_s,
                name,
            ],
        );
    };
    if found.uid.is_root() || found.gid.as_raw() == 0 {
        return Err(format!(
            "user {name} exists with uid or gid 0: refusing to use it for an agent"
        ));
    }
    let mut usermod: Vec<String> = Vec::new();
    let shell = found.shell.display().to_string();
    if shell != NOLOGIN {
        changes.push(format!("~ user {name} shell {shell} -> {NOLOGIN}"));
        usermod.extend(["--shell".into(), NOLOGIN.into()]);
    }
    if found.dir != home {
        changes.push(format!(
            "~ user {name} home {} -> {home_s}",
            found.dir.display()
        ));
        usermod.extend(["--home".into(), home_s.clone()]);
    }
    let primary = group_name(found.gid);
    if primary != name {
        changes.push(format!("~ user {name} primary group {primary} -> {name}"));
        usermod.extend(["--gid".into(), name.into()]);
    }
    let cname = CString::new(name).map_err(|_| format!("user {name}: NUL in name"))?;
    let mut current: Vec<String> = nix::unistd::getgrouplist(&cname, found.gid)
        .map_err(|e| format!("user {name}: cannot list groups: {e}"))?
        .into_iter()
        .filter(|g| *g != found.gid)
        .map(group_name)
        .collect();
    current.sort();
    current.dedup();
    let mut want = groups.to_vec();
    want.sort();
    if current != want {
        changes.push(format!(
            "~ user {name} groups {} -> {}",
            or_none(&current.join(",")),
            want.join(",")
        ));
        usermod.extend(["--groups".into(), groups_s]);
    }
    if dry || usermod.is_empty() {
        return Ok(());
    }
    usermod.push(name.to_owned());
    let args: Vec<&str> = usermod.iter().map(String::as_str).collect();
    run("usermod", &args)
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

fn dir(
    path: &Path,
    owner: &str,
    group: &str,
    mode: u32,
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    let Some(meta) = lstat(path)? else {
        changes.push(format!("+ dir {shown} {owner}:{group} {mode:04o}"));
        if dry {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::create_dir(path).map_err(|e| format!("{shown}: {e}"))?;
        set_owner(path, owner, group)?;
        set_mode(path, mode)?;
        // A parent's default ACL would have been inherited.
        return strip_extended_acl(path, mode, true, false, &mut Vec::new());
    };
    if !meta.is_dir() {
        return Err(format!(
            "{shown}: exists but is not a directory (a symlink or file); refusing to replace it"
        ));
    }
    ownership_and_mode(path, &meta, owner, group, mode, dry, changes)
}

fn ownership_and_mode(
    path: &Path,
    meta: &Metadata,
    owner: &str,
    group: &str,
    mode: u32,
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    let (cur_owner, cur_group) = (
        user_name(Uid::from_raw(meta.uid())),
        group_name(Gid::from_raw(meta.gid())),
    );
    if cur_owner != owner || cur_group != group {
        changes.push(format!(
            "~ owner {shown} {cur_owner}:{cur_group} -> {owner}:{group}"
        ));
        if !dry {
            set_owner(path, owner, group)?;
        }
    }
    let cur_mode = meta.mode() & 0o7777;
    if cur_mode != mode {
        changes.push(format!("~ mode {shown} {cur_mode:04o} -> {mode:04o}"));
        if !dry {
            set_mode(path, mode)?;
        }
    }
    Ok(())
}

/// Checks that a file or directory planned without an extended ACL has none.
/// Called for every planned path that has no [`Resource::Acl`].
fn strip_extended_acl(
    path: &Path,
    mode: u32,
    is_dir: bool,
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    let access = read_acl(path, false)?;
    let extended: Vec<AclEntry> = access
        .into_iter()
        .filter(|e| matches!(e.tag, AclTag::User(_) | AclTag::Group(_) | AclTag::Mask))
        .collect();
    if !extended.is_empty() {
        changes.push(format!("~ acl {shown} -{}", acl_text(&extended)));
        if !dry {
            PosixACL::new(mode)
                .write_acl(path)
                .map_err(|e| format!("{shown}: cannot set ACL: {e}"))?;
        }
    }
    if is_dir {
        let default = read_acl(path, true)?;
        if !default.is_empty() {
            changes.push(format!("~ default acl {shown} -{}", acl_text(&default)));
            if !dry {
                remove_default_acl(path)?;
            }
        }
    }
    Ok(())
}

fn remove_default_acl(path: &Path) -> Result<(), String> {
    match rustix::fs::removexattr(path, "system.posix_acl_default") {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(format!(
            "{}: cannot remove default ACL: {e}",
            path.display()
        )),
    }
}

fn file(
    label: &str,
    path: &Path,
    bytes: &[u8],
    want: &Want<'_>,
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    let Some(meta) = lstat(path)? else {
        changes.push(format!("+ {label} {shown} {want}"));
        return if dry {
            Ok(())
        } else {
            write_atomic(path, bytes, want)
        };
    };
    if !meta.is_file() {
        return Err(format!(
            "{shown}: exists but is not a regular file (a symlink?); refusing to replace it"
        ));
    }
    let current = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    if current != bytes {
        changes.push(format!("~ {label} {shown} content"));
        if !dry {
            // A fresh inode with the right owner and mode: no window in
            // which the new content has the old file's permissions.
            return write_atomic(path, bytes, want);
        }
    }
    ownership_and_mode(path, &meta, want.owner, want.group, want.mode, dry, changes)?;
    strip_extended_acl(path, want.mode, false, dry, changes)
}

/// The secrets file: created empty if missing; owner and mode enforced; its
/// content never read.
fn unmanaged_file(
    path: &Path,
    want: &Want<'_>,
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    let Some(meta) = lstat(path)? else {
        changes.push(format!("+ file {shown} {want} (empty)"));
        if dry {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(want.mode)
            .open(path)
            .map_err(|e| format!("{shown}: {e}"))?;
        set_owner(path, want.owner, want.group)?;
        return set_mode(path, want.mode);
    };
    if !meta.is_file() {
        return Err(format!(
            "{shown}: exists but is not a regular file (a symlink?); refusing to touch it"
        ));
    }
    ownership_and_mode(path, &meta, want.owner, want.group, want.mode, dry, changes)?;
    strip_extended_acl(path, want.mode, false, dry, changes)
}

fn acl(
    path: &Path,
    access: &[AclEntry],
    default: &[AclEntry],
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    if lstat(path)?.is_none() {
        if dry {
            changes.push(format!("+ acl {shown} {}", acl_text(access)));
            return Ok(());
        }
        return Err(format!("{shown}: missing"));
    }
    let current = read_acl(path, false)?;
    if let Some(diff) = entry_diff(&current, access) {
        changes.push(format!("~ acl {shown} {diff}"));
        if !dry {
            to_posix(access)?
                .write_acl(path)
                .map_err(|e| format!("{shown}: cannot set ACL: {e}"))?;
        }
    }
    let current = read_acl(path, true)?;
    if let Some(diff) = entry_diff(&current, default) {
        changes.push(format!("~ default acl {shown} {diff}"));
        if !dry {
            if default.is_empty() {
                remove_default_acl(path)?;
            } else {
                to_posix(default)?
                    .write_default_acl(path)
                    .map_err(|e| format!("{shown}: cannot set default ACL: {e}"))?;
            }
        }
    }
    Ok(())
}

/// `+entry -entry …` between `current` and `want`, or `None` if equal.
fn entry_diff(current: &[AclEntry], want: &[AclEntry]) -> Option<String> {
    let added: Vec<String> = want
        .iter()
        .filter(|e| !current.contains(e))
        .map(|e| format!("+{e}"))
        .collect();
    let removed: Vec<String> = current
        .iter()
        .filter(|e| !want.contains(e))
        .map(|e| format!("-{e}"))
        .collect();
    if added.is_empty() && removed.is_empty() {
        None
    } else {
        Some([added, removed].concat().join(" "))
    }
}

fn to_posix(entries: &[AclEntry]) -> Result<PosixACL, String> {
    let mut acl = PosixACL::empty();
    for e in entries {
        let qual = match &e.tag {
            AclTag::UserObj => Qualifier::UserObj,
            AclTag::GroupObj => Qualifier::GroupObj,
            AclTag::Other => Qualifier::Other,
            AclTag::Mask => Qualifier::Mask,
            AclTag::User(n) => Qualifier::User(uid_of(n)?.as_raw()),
            AclTag::Group(n) => Qualifier::Group(gid_of(n)?.as_raw()),
        };
        acl.set(qual, e.perm);
    }
    Ok(acl)
}

/// The access (or default) ACL of `path` with names for uids and gids, sorted.
fn read_acl(path: &Path, default: bool) -> Result<Vec<AclEntry>, String> {
    let acl = if default {
        PosixACL::read_default_acl(path)
    } else {
        PosixACL::read_acl(path)
    }
    .map_err(|e| format!("{}: cannot read ACL: {e}", path.display()))?;
    let mut entries: Vec<AclEntry> = acl
        .entries()
        .into_iter()
        .filter_map(|e| {
            let tag = match e.qual {
                Qualifier::UserObj => AclTag::UserObj,
                Qualifier::GroupObj => AclTag::GroupObj,
                Qualifier::Other => AclTag::Other,
                Qualifier::Mask => AclTag::Mask,
                Qualifier::User(uid) => AclTag::User(user_name(Uid::from_raw(uid))),
                Qualifier::Group(gid) => AclTag::Group(group_name(Gid::from_raw(gid))),
                Qualifier::Undefined => return None,
            };
            Some(AclEntry { tag, perm: e.perm })
        })
        .collect();
    entries.sort();
    Ok(entries)
}

fn sudoers_file(
    path: &Path,
    text: Option<&str>,
    dry: bool,
    changes: &mut Vec<String>,
) -> Result<(), String> {
    let shown = path.display();
    let meta = lstat(path)?;
    let Some(text) = text else {
        if meta.is_some() {
            changes.push(format!("- sudoers {shown}"));
            if !dry {
                std::fs::remove_file(path).map_err(|e| format!("{shown}: {e}"))?;
            }
        }
        return Ok(());
    };
    let Some(meta) = meta else {
        changes.push(format!("+ sudoers {shown}"));
        return if dry {
            Ok(())
        } else {
            sudoers::install(path, text)
        };
    };
    if !meta.is_file() {
        return Err(format!(
            "{shown}: exists but is not a regular file; refusing to replace it"
        ));
    }
    let current = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    if current != text.as_bytes() {
        changes.push(format!("~ sudoers {shown} content"));
        if !dry {
            return sudoers::install(path, text);
        }
    }
    ownership_and_mode(path, &meta, "root", "root", 0o440, dry, changes)
}

/// Replaces `path` with `bytes` whole (owner and mode set before it
/// becomes visible), creating its directory if needed.
fn write_atomic(path: &Path, bytes: &[u8], want: &Want<'_>) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut staged = con_fs::StagedFile::begin(path, 0o600).map_err(|e| e.to_string())?;
    staged.write_all(bytes).map_err(|e| e.to_string())?;
    staged
        .set_owner(uid_of(want.owner)?.as_raw(), gid_of(want.group)?.as_raw())
        .map_err(|e| e.to_string())?;
    staged.set_mode(want.mode).map_err(|e| e.to_string())?;
    staged.commit().map_err(|e| e.to_string())
}

fn lstat(path: &Path) -> Result<Option<Metadata>, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn set_owner(path: &Path, owner: &str, group: &str) -> Result<(), String> {
    nix::unistd::chown(path, Some(uid_of(owner)?), Some(gid_of(group)?))
        .map_err(|e| format!("{}: chown: {e}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: chmod: {e}", path.display()))
}

/// The uid of user `name`.
pub(crate) fn uid_of(name: &str) -> Result<Uid, String> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid),
        Ok(None) => Err(format!("no such user {name}")),
        Err(e) => Err(format!("user {name}: lookup failed: {e}")),
    }
}

fn gid_of(name: &str) -> Result<Gid, String> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("no such group {name}")),
        Err(e) => Err(format!("group {name}: lookup failed: {e}")),
    }
}

fn user_name(uid: Uid) -> String {
    match User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: Gid) -> String {
    match Group::from_gid(gid) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// Runs a system tool (useradd, systemctl, …); its stderr, on one line, is
/// the error.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        ))
    }
}
