//! Reading con entries out of a journal with `journalctl` matches: this
//! host's journal, a directory of journal files (a copy, or what a central
//! `systemd-journal-remote` writes), journal files, or export streams
//! (`journalctl -o export` saved to a file).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::read::{ReadEntry, read_export};
use crate::rebuild::{RebuildError, Rebuilder, Rebuilt};

/// The first bytes of a journal file (`journal-def.h`'s signature): what
/// tells a journal file from an export stream.
const JOURNAL_FILE_SIGNATURE: &[u8; 8] = b"LPKSHHRH";

/// Why a journal could not be queried.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `journalctl` could not be started.
    #[error("running journalctl: {0}")]
    Spawn(std::io::Error),
    /// `journalctl` failed.
    #[error("journalctl {args}: {message}")]
    Journalctl {
        /// Its arguments, for the operator to run it again.
        args: String,
        /// Its standard error, or its exit status.
        message: String,
    },
    /// An export stream could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// What was read did not rebuild into events.
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
}

/// Where the journal is.
#[derive(Clone, Debug)]
pub enum JournalLocation {
    /// This host's journal, as `journalctl` shows it to the caller.
    Local,
    /// A directory of journal files (`journalctl --directory`): a copy of
    /// `/var/log/journal/<machine-id>`, or a central server's
    /// `/var/log/journal/remote`, with several hosts' logs side by side.
    Directory(PathBuf),
    /// Journal files (`journalctl --file`) or export streams (the output
    /// of `journalctl -o export` saved to a file), told apart by their
    /// first bytes.
    Files(Vec<PathBuf>),
}

/// A conjunction of `FIELD=value` matches; a query is a disjunction of
/// them, as `journalctl A=1 B=2 + C=3` is. Several values of one field in
/// a conjunction are alternatives (`A=1 A=2 B=3`: A is 1 or 2, and B is 3),
/// as journalctl takes them.
pub type Matches = Vec<(&'static str, String)>;

impl JournalLocation {
    /// Rebuilds the con entries matching any of `alternatives` (every match
    /// of one conjunction must hold; an empty conjunction matches every
    /// entry). Journal files are filtered by `journalctl` through their
    /// indexes; export streams are read whole and filtered here, with the
    /// same meaning.
    pub fn read(&self, alternatives: &[Matches]) -> Result<Rebuilt, QueryError> {
        let mut rebuilder = Rebuilder::default();
        let mut journal_files = Vec::new();
        match self {
            Self::Local => journalctl(&[], alternatives, &mut rebuilder)?,
            Self::Directory(dir) => {
                let args = ["--directory".into(), dir.as_os_str().to_owned()];
                journalctl(&args, alternatives, &mut rebuilder)?;
            }
            Self::Files(files) => {
                for path in files {
                    if is_journal_file(path)? {
                        journal_files.push(path);
                    } else {
                        read_stream(path, alternatives, &mut rebuilder)?;
                    }
                }
            }
        }
        if !journal_files.is_empty() {
            let args: Vec<std::ffi::OsString> = journal_files
                .iter()
                .flat_map(|p| ["--file".into(), p.as_os_str().to_owned()])
                .collect();
            journalctl(&args, alternatives, &mut rebuilder)?;
        }
        Ok(rebuilder.finish()?)
    }
}

fn is_journal_file(path: &Path) -> Result<bool, QueryError> {
    let file_err = |source| QueryError::File {
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(file_err)?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]).map_err(file_err)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got == head.len() && &head == JOURNAL_FILE_SIGNATURE)
}

/// Whether `entry` satisfies any of `alternatives`: as journalctl takes
/// them, every field a conjunction names must hold one of the values the
/// conjunction gives that field.
fn matches(entry: &ReadEntry, alternatives: &[Matches]) -> bool {
    alternatives.is_empty() || alternatives.iter().any(|all| holds(entry, all))
}

/// Whether `entry` satisfies the conjunction `all`. Each pair is looked up
/// once (a conjunction may give hundreds of values of one field, such as
/// the attachments a replay still lacks), then every field named must be
/// among those that held.
fn holds(entry: &ReadEntry, all: &Matches) -> bool {
    let mut held: Vec<&str> = Vec::new();
    for (name, value) in all {
        if !held.contains(name)
            && entry
                .fields
                .iter()
                .any(|(k, v)| k == name && v.as_slice() == value.as_bytes())
        {
            held.push(name);
        }
    }
    all.iter().all(|(name, _)| held.contains(name))
}

fn read_stream(
    path: &Path,
    alternatives: &[Matches],
    rebuilder: &mut Rebuilder,
) -> Result<(), QueryError> {
    let file = std::fs::File::open(path).map_err(|source| QueryError::File {
        path: path.to_owned(),
        source,
    })?;
    add_matching(BufReader::new(file), alternatives, rebuilder)
}

fn add_matching(
    input: impl BufRead,
    alternatives: &[Matches],
    rebuilder: &mut Rebuilder,
) -> Result<(), QueryError> {
    for entry in read_export(input) {
        let entry = entry.map_err(RebuildError::from)?;
        if matches(&entry, alternatives) {
            rebuilder.add(&entry)?;
        }
    }
    Ok(())
}

/// `journalctl -o export` with `location` arguments and the matches,
/// streamed into `rebuilder`.
fn journalctl(
    location: &[std::ffi::OsString],
    alternatives: &[Matches],
    rebuilder: &mut Rebuilder,
) -> Result<(), QueryError> {
    let mut cmd = Command::new("journalctl");
    cmd.args(["--quiet", "--no-pager", "--output=export"])
        .args(location);
    for (i, all) in alternatives.iter().enumerate() {
        if i > 0 {
            cmd.arg("+");
        }
        for (name, value) in all {
            cmd.arg(format!("{name}={value}"));
        }
    }
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let shown = || args.join(" ");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(QueryError::Spawn)?;
    let stdout = child.stdout.take().ok_or_else(|| QueryError::Journalctl {
        args: shown(),
        message: "no standard output".into(),
    })?;
    // Its standard error is read on the side so a chatty journalctl cannot
    // block on a full pipe while its output is being read here.
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let fed = add_matching(BufReader::new(stdout), &[], rebuilder);
    if fed.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(QueryError::Spawn)?;
    let errors = errors.join().unwrap_or_default();
    fed?;
    if !status.success() {
        let message = errors.trim();
        return Err(QueryError::Journalctl {
            args: shown(),
            message: if message.is_empty() {
                status.to_string()
            } else {
                message.lines().next().unwrap_or_default().to_owned()
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(fields: &[(&str, &str)]) -> ReadEntry {
        ReadEntry {
            ordinal: 1,
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn matches_mean_what_journalctl_makes_of_them() {
        let e = entry(&[("CON_LOG_ID", "a"), ("CON_AGENT", "x"), ("CON_ACTOR", "y")]);
        assert!(matches(&e, &[]));
        assert!(matches(&e, &[vec![]]));
        assert!(matches(&e, &[vec![("CON_LOG_ID", "a".into())]]));
        assert!(!matches(
            &e,
            &[vec![("CON_LOG_ID", "a".into()), ("CON_AGENT", "y".into())]]
        ));
        assert!(matches(
            &e,
            &[
                vec![("CON_LOG_ID", "a".into()), ("CON_AGENT", "y".into())],
                vec![("CON_LOG_ID", "a".into()), ("CON_ACTOR", "y".into())],
            ]
        ));
        assert!(!matches(&e, &[vec![("CON_SESSION", "s".into())]]));
        // Two values of one field: either will do, as with journalctl.
        assert!(matches(
            &e,
            &[vec![
                ("CON_AGENT", "y".into()),
                ("CON_AGENT", "x".into()),
                ("CON_LOG_ID", "a".into()),
            ]]
        ));
        assert!(!matches(
            &e,
            &[vec![
                ("CON_AGENT", "y".into()),
                ("CON_AGENT", "z".into()),
                ("CON_LOG_ID", "a".into()),
            ]]
        ));
    }
}
