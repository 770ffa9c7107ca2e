//! Reading a contracts directory (IO). Each file is read through a
//! descriptor opened without following links, and its owner and mode come
//! from that descriptor, so the file judged is the file parsed. Who owns a
//! file decides who its checks run as: root's files as root, anyone else's
//! as that user, never as root.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::model::Contract;
use crate::parse::{ContractError, parse_contract};

/// Largest contract file or check script read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// A contract and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedContract {
    /// The file.
    pub file: PathBuf,
    /// Its directory (scripts are relative to it).
    pub dir: PathBuf,
    /// The uid its checks run as: the file's owner. The daemon replaces
    /// root with the author for a root-owned file whose content was added
    /// through it (`con contracts add`, recorded as `contract.added`).
    pub owner: u32,
    /// SHA-256 of the file as read.
    pub digest: con_event::Digest,
    /// What it says.
    pub contract: Contract,
}

/// A directory's contracts, and the files that could not be used.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Usable contracts, in file name order.
    pub contracts: Vec<LoadedContract>,
    /// One error per unusable file: each is a failing result of its own.
    pub broken: Vec<ContractError>,
}

/// The `*.yaml`/`*.yml` files directly in `dir`, parsed. A missing
/// directory has no contracts; one that cannot be listed is an error. Two
/// files with the same id: the second is broken.
pub fn load_dir(dir: &Path) -> std::io::Result<Loaded> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in read {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            files.push(path);
        }
    }
    files.sort();
    let mut loaded = Loaded::default();
    for file in files {
        match load_file(&file, dir) {
            Ok(c)
                if loaded
                    .contracts
                    .iter()
                    .any(|o| o.contract.id == c.contract.id) =>
            {
                loaded.broken.push(ContractError {
                    file: file.clone(),
                    contract: Some(c.contract.id.clone()),
                    field: "id".into(),
                    message: "another file already defines this contract".into(),
                });
            }
            Ok(c) => loaded.contracts.push(c),
            Err(e) => loaded.broken.push(e),
        }
    }
    Ok(loaded)
}

fn load_file(file: &Path, dir: &Path) -> Result<LoadedContract, ContractError> {
    let whole = |message: String| ContractError {
        file: file.to_owned(),
        contract: None,
        field: String::new(),
        message,
    };
    let (bytes, owner) = read_trusted(file).map_err(whole)?;
    let digest = con_event::Digest::of(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| whole("not valid UTF-8".into()))?;
    let contract = parse_contract(file, &text)?;
    Ok(LoadedContract {
        file: file.to_owned(),
        dir: dir.to_owned(),
        owner,
        digest,
        contract,
    })
}

/// Reads a contract file or script: a regular file (not a link), at most
/// [`MAX_FILE_BYTES`], and, if root's, writable by no one else (its group
/// bits include an ACL's mask, so no named entry can write either): a file
/// root owns but others can edit would let them run anything as root.
/// Returns its content and owner.
pub fn read_trusted(path: &Path) -> Result<(Vec<u8>, u32), String> {
    let mut f = File::options()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => {
                "a symbolic link; contract files must be regular files".into()
            }
            _ => e.to_string(),
        })?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_FILE_BYTES} are read",
            meta.len()
        ));
    }
    if meta.uid() == 0 && meta.mode() & 0o022 != 0 {
        return Err(format!(
            "owned by root but writable by group or others (mode {:04o}); not run",
            meta.mode() & 0o7777
        ));
    }
    let mut bytes = Vec::new();
    f.by_ref()
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("more than {MAX_FILE_BYTES} bytes"));
    }
    Ok((bytes, meta.uid()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_broken_file_is_reported_and_the_others_load() {
        let dir = tempfile::tempdir().unwrap();
        let good = "id: G-1\ntype: detective\nchecks:\n  - name: c\n    command: {run: 'echo 1', test: 'true'}\n";
        std::fs::write(dir.path().join("a.yaml"), good).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "id: [broken\n").unwrap();
        std::fs::write(dir.path().join("c.yml"), good.replace("G-1", "G-2")).unwrap();
        std::fs::write(dir.path().join("d.yaml"), good).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a.yaml"), dir.path().join("e.yaml")).unwrap();
        let w = dir.path().join("f.yaml");
        std::fs::write(&w, good.replace("G-1", "G-3")).unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o666)).unwrap();

        let loaded = load_dir(dir.path()).unwrap();
        let ids: Vec<&str> = loaded
            .contracts
            .iter()
            .map(|c| c.contract.id.as_str())
            .collect();
        assert_eq!(ids, ["G-1", "G-2"]);
        let errors: Vec<String> = loaded.broken.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("b.yaml: "), "{errors:?}");
        assert!(
            errors[1]
                .ends_with("d.yaml: contract G-1: id: another file already defines this contract"),
            "{errors:?}"
        );
        assert!(errors[2].contains("e.yaml: a symbolic link"), "{errors:?}");
        if nix::unistd::geteuid().is_root() {
            assert!(
                errors[3]
                    .contains("f.yaml: owned by root but writable by group or others (mode 0666)"),
                "{errors:?}"
            );
        }
        assert!(
            load_dir(&dir.path().join("missing"))
                .unwrap()
                .contracts
                .is_empty()
        );
    }
}
