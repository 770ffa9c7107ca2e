//! Writing a task into an inbox the way the watcher expects: complete
//! before it has a `.task` name, and never over another task.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `text` as a new task in `inbox`, owned by the calling user (its
/// owner is its provenance), writable by no one else, and returns its path.
///
/// It is staged under a hidden name the watcher ignores, so no reader sees
/// half of it, then renamed to `<id>.task` without replacing anything; the
/// id sorts by creation time and stays unique across writers.
pub fn submit_task(inbox: &Path, text: &str) -> Result<PathBuf, con_fs::FsError> {
    let path = inbox.join(format!("{}.task", task_id()));
    // No write bit beyond the owner's: a task anyone else could rewrite is
    // unverified. This also caps the inbox's default ACL (its mask comes
    // from these group bits), so the target agent can read its task but not
    // rewrite it, even after moving it to processed/.
    let mut task = con_fs::StagedFile::begin(&path, 0o644)?;
    task.write_all(text.as_bytes())?;
    task.commit_new()?;
    Ok(path)
}

/// UTC time to the nanosecond, then 8 random hex digits.
fn task_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_nanos(UNIX_EPOCH + now).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{compact}-{}", &random[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_whole_named_in_creation_order_and_nothing_else_is_left() {
        let inbox = tempfile::tempdir().unwrap();
        let first = submit_task(inbox.path(), "one").unwrap();
        let second = submit_task(inbox.path(), "two").unwrap();
        assert!(crate::is_task_name(&first), "{}", first.display());
        assert!(first < second, "{} {}", first.display(), second.display());
        assert_eq!(std::fs::read_to_string(&second).unwrap(), "two");
        assert_eq!(std::fs::read_dir(inbox.path()).unwrap().count(), 2);
        assert!(submit_task(&inbox.path().join("missing"), "x").is_err());
    }
}
