//! A profile's files, read up front so that planning does no IO.
//!
//! The same shape serves a profile directory (`con bootstrap --profile DIR`)
//! and the installed copy under `/etc/con`: `con.toml`, `mission.md`,
//! `{base,groups/<g>,roles/<r>,scopes/<s>,agents/<a>}/AGENTS.md`,
//! `roles/<r>/skills/<skill>.md` and `sudoers/<role>`. The original
//! agent-runner's profiles also carry ready-made drop-ins in
//! `sudoers.d/<name>`: they are read so bootstrap can vet and report them
//! ([`Profile::sudoers_drop_ins`]), never installed. Anything else in the
//! directory is not part of the profile and is ignored; a symlink or other
//! non-regular file where a profile file belongs is an error, so a profile
//! cannot smuggle in a link to a file root would then copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::ProvisionError;

/// The profile's files by path relative to the profile directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Relative path → content.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
}

/// The original agent-runner's directory of ready-made sudoers drop-ins.
const DROP_IN_DIR: &str = "sudoers.d";

/// Directories whose `<name>/AGENTS.md` is an instruction layer.
const LAYER_DIRS: [&str; 4] = ["groups", "roles", "scopes", "agents"];

impl Profile {
    /// Reads the profile files under `dir`. A missing directory is an empty profile.
    pub fn read(dir: &Path) -> Result<Self, ProvisionError> {
        let mut profile = Profile::default();
        for rel in ["con.toml", "mission.md", "base/AGENTS.md"] {
            profile.read_file(dir, Path::new(rel))?;
        }
        for layer in LAYER_DIRS {
            for name in subdirs(&dir.join(layer))? {
                profile.read_file(dir, &Path::new(layer).join(&name).join("AGENTS.md"))?;
                if layer == "roles" {
                    let skills = Path::new("roles").join(&name).join("skills");
                    for skill in entries(&dir.join(&skills))? {
                        if is_skill_name(&skill) {
                            profile.read_file(dir, &skills.join(&skill))?;
                        }
                    }
                }
            }
        }
        for role in entries(&dir.join("sudoers"))? {
            if con_config::validate_agent_name(&role).is_ok() {
                profile.read_file(dir, &Path::new("sudoers").join(&role))?;
            }
        }
        for name in entries(&dir.join(DROP_IN_DIR))? {
            // The names sudo itself would read from a sudoers.d directory.
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                profile.read_file(dir, &Path::new(DROP_IN_DIR).join(&name))?;
            }
        }
        Ok(profile)
    }

    /// The profile's `sudoers.d/` drop-ins (the original agent-runner's
    /// layout): relative path and content, in name order. con installs sudo
    /// rights only from `sudoers/<role>` templates, whose every line grants
    /// one role's user something `con policy explain` can state; a
    /// ready-made drop-in is vetted and reported, not installed.
    pub fn sudoers_drop_ins(&self) -> Vec<(&Path, &[u8])> {
        self.files
            .iter()
            .filter(|(path, _)| path.parent() == Some(Path::new(DROP_IN_DIR)))
            .map(|(path, content)| (path.as_path(), content.as_slice()))
            .collect()
    }

    /// The content of `rel`, if the profile has it.
    pub fn get(&self, rel: &str) -> Option<&[u8]> {
        self.files.get(Path::new(rel)).map(Vec::as_slice)
    }

    /// The text of `rel`, if the profile has it; not UTF-8 is an error naming it.
    pub fn text(&self, rel: &str) -> Result<Option<&str>, ProvisionError> {
        self.get(rel)
            .map(|bytes| {
                std::str::from_utf8(bytes).map_err(|_| {
                    ProvisionError::Invalid(format!("profile file {rel}: not valid UTF-8"))
                })
            })
            .transpose()
    }

    /// The skills of `role`: (file name, content), in name order.
    pub fn skills(&self, role: &str) -> Vec<(String, &[u8])> {
        let dir = Path::new("roles").join(role).join("skills");
        self.files
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir.as_path()))
            .filter_map(|(path, content)| {
                let name = path.file_name()?.to_str()?.to_owned();
                Some((name, content.as_slice()))
            })
            .collect()
    }

    fn read_file(&mut self, dir: &Path, rel: &Path) -> Result<(), ProvisionError> {
        let path = dir.join(rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ProvisionError::io(&path, &e)),
        };
        if !meta.file_type().is_file() {
            return Err(ProvisionError::Invalid(format!(
                "{}: not a regular file (profiles may not contain symlinks)",
                path.display()
            )));
        }
        let content = std::fs::read(&path).map_err(|e| ProvisionError::io(&path, &e))?;
        self.files.insert(rel.to_path_buf(), content);
        Ok(())
    }
}

/// Skill files: `<name>.md`, the name made of `[a-z0-9-]`.
fn is_skill_name(name: &str) -> bool {
    name.strip_suffix(".md")
        .is_some_and(|stem| con_config::validate_agent_name(stem).is_ok())
}

/// Names of the entries of `dir` (none if it does not exist), sorted.
fn entries(dir: &Path) -> Result<Vec<String>, ProvisionError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ProvisionError::io(dir, &e)),
    };
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| ProvisionError::io(dir, &e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Subdirectories of `dir` (real directories, not symlinks) whose names are
/// valid layer names.
fn subdirs(dir: &Path) -> Result<Vec<String>, ProvisionError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|n| con_config::validate_agent_name(n).is_ok())
        .filter(|n| std::fs::symlink_metadata(dir.join(n)).is_ok_and(|m| m.is_dir()))
        .collect())
}
