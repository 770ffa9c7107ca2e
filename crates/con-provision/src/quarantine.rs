//! Quarantine's change to the host, which the daemon calls: every grant of
//! write access to a quarantined agent's inbox that is not its owner's is
//! taken out of the inbox's access ACL, and on resume exactly those entries
//! are put back. The daemon records the removed entries (in
//! `enforcement.done`) before they are needed, so what comes back is what
//! was there, not what a plan says today.
//!
//! Only the inbox directory's access ACL changes: creating, renaming or
//! removing a task in it is checked against that ACL, so without a write
//! grant there no other agent can add, replace or take a task. Its default
//! ACL (what new tasks inherit) stays as it is.

use std::path::Path;

use con_event::payloads::AclGrant;
use nix::unistd::{Gid, Group, Uid, User};
use posix_acl::{ACL_WRITE, PosixACL, Qualifier};

use crate::ProvisionError;

fn acl_error(path: &Path, what: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Io {
        path: path.display().to_string(),
        message: format!("cannot {what} ACL: {e}"),
    }
}

/// The `setfacl` spelling of a named entry: `user:<name>:rwx` (the uid
/// when it has no name).
fn entry_text(qual: Qualifier, perm: u32) -> Option<String> {
    let bit = |b: u32, c: char| if perm & b != 0 { c } else { '-' };
    let perms = format!("{}{}{}", bit(4, 'r'), bit(2, 'w'), bit(1, 'x'));
    match qual {
        Qualifier::User(uid) => {
            let name = User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| uid.to_string(), |u| u.name);
            Some(format!("user:{name}:{perms}"))
        }
        Qualifier::Group(gid) => {
            let name = Group::from_gid(Gid::from_raw(gid))
                .ok()
                .flatten()
                .map_or_else(|| gid.to_string(), |g| g.name);
            Some(format!("group:{name}:{perms}"))
        }
        _ => None,
    }
}

/// Parses what [`entry_text`] writes back into a qualifier and permissions.
fn parse_entry(text: &str) -> Result<(Qualifier, u32), String> {
    let mut parts = text.splitn(3, ':');
    let (Some(tag), Some(who), Some(perms)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{text:?}: not tag:name:perms"));
    };
    let mut perm = 0;
    for (c, bit) in perms.chars().zip([4, 2, 1]) {
        match c {
            '-' => {}
            'r' | 'w' | 'x' => perm |= bit,
            _ => return Err(format!("{text:?}: bad permissions")),
        }
    }
    let qual = match tag {
        "user" => Qualifier::User(match who.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => User::from_name(who)
                .map_err(|e| format!("{who}: {e}"))?
                .ok_or_else(|| format!("no user {who}"))?
                .uid
                .as_raw(),
        }),
        "group" => Qualifier::Group(match who.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(who)
                .map_err(|e| format!("{who}: {e}"))?
                .ok_or_else(|| format!("no group {who}"))?
                .gid
                .as_raw(),
        }),
        _ => return Err(format!("{text:?}: only user and group entries")),
    };
    Ok((qual, perm))
}

/// Takes every named user or group entry that grants write out of
/// `inbox`'s access ACL (the owner's own entry is not a named one) and
/// returns what it removed. An inbox with no such entry is left alone.
pub fn revoke_inbox_writers(inbox: &Path) -> Result<Vec<AclGrant>, ProvisionError> {
    let mut acl = PosixACL::read_acl(inbox).map_err(|e| acl_error(inbox, "read", e))?;
    let mut removed = Vec::new();
    for entry in acl.entries() {
        if entry.perm & ACL_WRITE == 0 {
            continue;
        }
        if let Some(text) = entry_text(entry.qual, entry.perm) {
            acl.remove(entry.qual);
            removed.push(AclGrant {
                path: inbox.display().to_string(),
                default: false,
                entry: text,
            });
        }
    }
    if !removed.is_empty() {
        // The mask stays: it still bounds whatever named entries remain,
        // and the restored ones come back under the same mask as before.
        acl.write_acl(inbox)
            .map_err(|e| acl_error(inbox, "write", e))?;
    }
    Ok(removed)
}

/// Puts `grants` back (what [`revoke_inbox_writers`] removed); an entry
/// already there is set to the recorded permissions. Every grant is tried;
/// the error names the first that failed.
pub fn restore_grants(grants: &[AclGrant]) -> Result<(), ProvisionError> {
    let mut first_error = None;
    for g in grants {
        let path = Path::new(&g.path);
        let result = (|| {
            let (qual, perm) = parse_entry(&g.entry).map_err(|m| ProvisionError::Io {
                path: g.path.clone(),
                message: m,
            })?;
            let mut acl = if g.default {
                PosixACL::read_default_acl(path)
            } else {
                PosixACL::read_acl(path)
            }
            .map_err(|e| acl_error(path, "read", e))?;
            acl.set(qual, perm);
            if g.default {
                acl.write_default_acl(path)
            } else {
                acl.write_acl(path)
            }
            .map_err(|e| acl_error(path, "write", e))
        })();
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The triggers of an agent's runs under systemd: its path and timer units
/// (whichever it has) and its service (a continuous agent's restarts).
fn agent_unit_names(agent: &str) -> [String; 3] {
    [
        format!("con-agent@{agent}.path"),
        format!("con-agent@{agent}.timer"),
        format!("con-agent@{agent}.service"),
    ]
}

/// Under systemd, stops what would start the agent again (its path or
/// timer unit, and its service with every process of its cgroup) until
/// [`release_agent_units`]; returns the units that were active. Units stay
/// enabled, so after a reboot they start again, and the run refuses to
/// work while the agent is halted or quarantined.
pub fn hold_agent_units(agent: &str) -> Result<Vec<String>, ProvisionError> {
    let mut stopped = Vec::new();
    for unit in agent_unit_names(agent) {
        if crate::host::run("systemctl", &["is-active", "--quiet", &unit]).is_err() {
            continue;
        }
        crate::host::run("systemctl", &["stop", &unit]).map_err(|m| ProvisionError::Io {
            path: unit.clone(),
            message: m,
        })?;
        stopped.push(unit);
    }
    Ok(stopped)
}

/// Under systemd, starts the agent's triggers again: every one of its units
/// that is enabled (a path or timer unit, a continuous agent's service),
/// after clearing a start limit hit while it was held.
pub fn release_agent_units(agent: &str) -> Result<Vec<String>, ProvisionError> {
    let mut started = Vec::new();
    for unit in agent_unit_names(agent) {
        if crate::host::run("systemctl", &["is-enabled", "--quiet", &unit]).is_err() {
            continue;
        }
        // A unit that failed meanwhile (a start limit) would refuse to start.
        let _ = crate::host::run("systemctl", &["reset-failed", &unit]);
        crate::host::run("systemctl", &["start", &unit]).map_err(|m| ProvisionError::Io {
            path: unit.clone(),
            message: m,
        })?;
        started.push(unit);
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly

    use super::*;

    #[test]
    fn entries_read_back_as_written() {
        assert_eq!(parse_entry("user:0:rwx").unwrap(), (Qualifier::User(0), 7));
        assert_eq!(
            parse_entry("group:root:r-x").unwrap(),
            (Qualifier::Group(0), 5)
        );
        assert_eq!(
            entry_text(Qualifier::User(0), 6).as_deref(),
            Some("user:root:rw-")
        );
        assert!(parse_entry("mask::rwx").is_err());
        assert!(parse_entry("user:root:rwz").is_err());
        assert_eq!(entry_text(Qualifier::Mask, 7), None);
    }
}
