//! Replacing a file whole: the one temporary-name-and-rename helper the
//! run's response and the `write_file` tool share.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` under a hidden temporary name next to `path`, then
/// renames it into place: readers (an inbox watcher, the next session's
/// history) see the old content or the new, never half of it. `durable`
/// syncs the content before the rename, so a crash cannot leave `path`
/// renamed but empty.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = fs::File::create_new(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if durable { f.sync_all() } else { Ok(()) }
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.response");
        fs::write(&path, "old content, longer").unwrap();
        for durable in [false, true] {
            write_atomically(&path, b"new", durable).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"new");
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.response"]);
        // A failed write leaves nothing behind either.
        let missing = dir.path().join("no-such-dir/b");
        assert!(write_atomically(&missing, b"x", true).is_err());
    }
}
