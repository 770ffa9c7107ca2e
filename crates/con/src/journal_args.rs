//! `--journal` and where the journal is, for `con replay` and `con verify`.

use std::path::PathBuf;

use clap::Args;
use con_journal::JournalLocation;
use con_layout::Layout;
use con_protocol::Client;

/// Reading journald instead of (or beside) the event log.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Read the journald mirror: this host's journal, or the one --directory
    /// or --file name.
    #[arg(long)]
    pub journal: bool,
    /// With --journal: a directory of journal files instead of this host's
    /// journal (a copy, or a central server's `systemd-journal-remote`
    /// directory holding several hosts).
    #[arg(
        long,
        value_name = "DIR",
        requires = "journal",
        conflicts_with = "file"
    )]
    pub directory: Option<PathBuf>,
    /// With --journal: journal files, or export streams (`journalctl -o
    /// export` saved to a file); repeat for several.
    #[arg(long, value_name = "FILE", requires = "journal")]
    pub file: Vec<PathBuf>,
    /// With --journal: the log whose entries to read (`CON_LOG_ID`, as `con
    /// status --json` shows it). By default this host's daemon's log when
    /// reading this host's journal, otherwise the only log the entries
    /// asked for belong to.
    #[arg(long, value_name = "ID", requires = "journal")]
    pub log_id: Option<String>,
}

impl JournalArgs {
    /// Where the journal is.
    pub fn location(&self) -> JournalLocation {
        match (&self.directory, self.file.is_empty()) {
            (Some(dir), _) => JournalLocation::Directory(dir.clone()),
            (None, false) => JournalLocation::Files(self.file.clone()),
            (None, true) => JournalLocation::Local,
        }
    }

    /// Whether this is the host's own journal.
    pub fn is_local(&self) -> bool {
        matches!(self.location(), JournalLocation::Local)
    }

    /// The log to read: `--log-id`, or in this host's journal the running
    /// daemon's log (the journal holds every log this host ever ran, test
    /// runs included); `None` leaves it to the entries found.
    pub fn log_id(&self, layout: &Layout) -> Option<String> {
        if let Some(id) = &self.log_id {
            return Some(id.clone());
        }
        if !self.is_local() {
            return None;
        }
        let status = Client::connect(&layout.socket()).ok()?.status().ok()?;
        status.log.map(|l| l.log_id).filter(|id| !id.is_empty())
    }
}
