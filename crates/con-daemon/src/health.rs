//! con's built-in checks of its own health: the daemon's invariants seen
//! from outside (the journal mirror keeps up; the event log and the secrets
//! file are root's alone, as the daemon requires of them), each as the
//! verdict a `contract.result` event records. Contract files will be
//! evaluated next to these and reuse them.

use std::path::Path;
use std::time::{Duration, Instant};

use con_event::payloads::{CheckStatus, ContractResult};
use con_journal::MirrorHealth;
use con_layout::Layout;

use crate::host::is_root_only;

/// The contract ids of the built-in checks: no contract file may take one.
pub const BUILTIN_IDS: &[&str] = &["CON-LOG-001", "CON-LOG-002", "CON-LOG-003"];

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Contract id (`CON-LOG-001`).
    pub contract: &'static str,
    /// Check name within the contract.
    pub check: &'static str,
    /// Outcome.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// How long the check took.
    pub duration: Duration,
}

impl Verdict {
    /// Whether this counts as a failure (`fail`, `error`, `timeout`).
    pub fn failed(&self) -> bool {
        matches!(
            self.status,
            CheckStatus::Fail | CheckStatus::Error | CheckStatus::Timeout
        )
    }

    /// The `contract.result` payload recording it.
    pub fn result(&self) -> ContractResult {
        ContractResult {
            contract: self.contract.to_owned(),
            check: self.check.to_owned(),
            scope_agent: None,
            status: self.status,
            detail: self.detail.clone(),
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The built-in checks on `layout`; `journal_mirror` is the mirror's health
/// as the daemon sees it.
pub fn builtin_checks(layout: &Layout, journal_mirror: &MirrorHealth) -> Vec<Verdict> {
    let timed = |contract, check, run: &dyn Fn() -> (CheckStatus, String)| {
        let started = Instant::now();
        let (status, detail) = run();
        Verdict {
            contract,
            check,
            status,
            detail,
            duration: started.elapsed(),
        }
    };
    vec![
        timed("CON-LOG-001", "journal-mirror", &|| match journal_mirror {
            MirrorHealth::Healthy => (CheckStatus::Pass, "journald mirror: healthy".to_owned()),
            MirrorHealth::Degraded {
                first_unmirrored_seq,
                reason,
                dropped,
            } => (
                CheckStatus::Fail,
                format!(
                    "journald mirror degraded since seq {first_unmirrored_seq} ({dropped} entries lost): {reason}"
                ),
            ),
        }),
        timed("CON-LOG-002", "database-permissions", &|| {
            root_only(&layout.event_log())
        }),
        timed("CON-LOG-002", "state-dir-permissions", &|| {
            root_only(&layout.state_dir())
        }),
        timed("CON-LOG-003", "secrets-permissions", &|| {
            let env_file = layout.env_file();
            match root_only(&env_file) {
                // No secrets file, no keys to protect.
                (CheckStatus::Error, _) if !env_file.exists() => (
                    CheckStatus::Skipped,
                    format!("{}: not present", env_file.display()),
                ),
                verdict => verdict,
            }
        }),
    ]
}

/// Whether `path` is owned by root and grants group and others nothing.
fn root_only(path: &Path) -> (CheckStatus, String) {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) if is_root_only(&m) => (
            CheckStatus::Pass,
            format!("{}: uid 0, mode {:04o}", path.display(), m.mode() & 0o7777),
        ),
        Ok(m) => (
            CheckStatus::Fail,
            format!(
                "{}: uid {}, mode {:04o} (want uid 0 and no group/other access)",
                path.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
        ),
        Err(e) => (CheckStatus::Error, format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn status_of(verdicts: &[Verdict], check: &str) -> CheckStatus {
        verdicts.iter().find(|v| v.check == check).unwrap().status
    }

    #[test]
    fn permissions_and_the_mirror_are_judged() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path(), "a-", "").unwrap();
        std::fs::create_dir_all(layout.event_log()).unwrap();
        for dir in [layout.state_dir(), layout.event_log()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let v = builtin_checks(&layout, &MirrorHealth::Healthy);
        assert_eq!(v.len(), 4);
        let mut ids: Vec<&str> = v.iter().map(|v| v.contract).collect();
        ids.dedup();
        assert_eq!(ids, BUILTIN_IDS);
        assert_eq!(status_of(&v, "journal-mirror"), CheckStatus::Pass);
        assert_eq!(status_of(&v, "database-permissions"), CheckStatus::Pass);
        assert_eq!(status_of(&v, "state-dir-permissions"), CheckStatus::Pass);
        // No secrets file is nothing to protect, not a failure.
        assert_eq!(status_of(&v, "secrets-permissions"), CheckStatus::Skipped);
        assert!(v.iter().all(|v| !v.failed()));

        std::fs::set_permissions(layout.state_dir(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let env = layout.env_file();
        std::fs::create_dir_all(env.parent().unwrap()).unwrap();
        std::fs::write(&env, "K=v\n").unwrap();
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
        let v = builtin_checks(
            &layout,
            &MirrorHealth::Degraded {
                first_unmirrored_seq: 9,
                reason: "journald is not reachable".into(),
                dropped: 3,
            },
        );
        assert_eq!(status_of(&v, "journal-mirror"), CheckStatus::Fail);
        assert_eq!(status_of(&v, "state-dir-permissions"), CheckStatus::Fail);
        assert_eq!(status_of(&v, "secrets-permissions"), CheckStatus::Fail);
        let result = v[0].result();
        assert_eq!(
            (result.contract.as_str(), result.check.as_str()),
            ("CON-LOG-001", "journal-mirror")
        );
        assert_eq!(
            result.detail,
            "journald mirror degraded since seq 9 (3 entries lost): journald is not reachable"
        );
    }
}
