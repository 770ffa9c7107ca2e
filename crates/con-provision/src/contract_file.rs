//! What `con contracts add` changes on the host, which the daemon calls:
//! one contract file written whole into the contracts directory, root's,
//! mode 0644 and without ACL entries. The directory's default ACL (which
//! gives the sysadmin role write access to what is created there) would
//! otherwise reach the new file, and a root-owned file anyone else can
//! write is refused by the evaluator.

use std::path::{Path, PathBuf};

use crate::ProvisionError;

/// Mode of an added contract file: root writes it, everyone reads it.
const MODE: u32 = 0o644;

fn fs_error(e: &con_fs::FsError) -> ProvisionError {
    ProvisionError::Io {
        path: e.path.display().to_string(),
        message: format!("cannot {}: {}", e.op, e.cause),
    }
}

/// Writes `content` as `dir/name` (replacing a file of that name whole, or
/// creating it), root-owned, mode 0644, with no extended ACL; creates `dir`
/// (root's, 0755) if it is missing. Returns the path.
pub fn install_contract(dir: &Path, name: &str, content: &[u8]) -> Result<PathBuf, ProvisionError> {
    if Path::new(name).file_name() != Some(std::ffi::OsStr::new(name)) {
        return Err(ProvisionError::Invalid(format!(
            "{name:?} is not a file name"
        )));
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| ProvisionError::io(dir, &e))?;
        std::os::unix::fs::chown(dir, Some(0), Some(0)).map_err(|e| ProvisionError::io(dir, &e))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| ProvisionError::io(dir, &e))?;
    }
    let target = dir.join(name);
    let mut staged = con_fs::StagedFile::begin(&target, MODE).map_err(|e| fs_error(&e))?;
    staged.write_all(content).map_err(|e| fs_error(&e))?;
    staged.set_owner(0, 0).map_err(|e| fs_error(&e))?;
    // Only the owner, group and other entries: whatever the directory's
    // default ACL put on the new file goes before it is renamed into place.
    let temp = staged.temp_path().to_path_buf();
    match rustix::fs::removexattr(&temp, "system.posix_acl_access") {
        Ok(()) | Err(rustix::io::Errno::NODATA) => {}
        Err(e) => {
            return Err(ProvisionError::Io {
                path: temp.display().to_string(),
                message: format!("cannot remove the ACL: {e}"),
            });
        }
    }
    staged.set_mode(MODE).map_err(|e| fs_error(&e))?;
    staged.commit().map_err(|e| fs_error(&e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly

    use std::os::unix::fs::MetadataExt;

    use posix_acl::PosixACL;

    use super::*;

    #[test]
    fn an_added_file_is_roots_0644_without_acl_entries() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("contracts");
        std::fs::create_dir(&dir).unwrap();
        // A default ACL granting someone write, as bootstrap gives the
        // sysadmin role on the contracts directory.
        let mut default = PosixACL::new(0o755);
        default.set(posix_acl::Qualifier::User(65534), 7);
        default.write_default_acl(&dir).unwrap();
        let path = install_contract(&dir, "T-1.yaml", b"id: T-1\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o644)
        );
        let acl = PosixACL::read_acl(&path).unwrap();
        assert_eq!(acl.entries().len(), 3, "{:?}", acl.as_text());
        // Replaced whole.
        install_contract(&dir, "T-1.yaml", b"id: T-1\n# again\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"id: T-1\n# again\n");
        assert!(install_contract(&dir, "../x.yaml", b"").is_err());
        // A missing directory is made, root's 0755.
        let fresh = root.path().join("srv/contracts");
        install_contract(&fresh, "T-2.yaml", b"id: T-2\n").unwrap();
        let meta = std::fs::metadata(&fresh).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
    }
}
