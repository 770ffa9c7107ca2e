//! A consistent copy of a live log, made by the process that owns it.

use std::path::Path;

use crate::{Head, META_LOG_ID, Store, StoreError};

impl Store {
    /// Copies the log as of its durable head into a new database at `dest`
    /// (which must not exist), while appends go on: every record up to the
    /// head, every blob (a blob is durable no later than the event that
    /// references it, so those of the copied records are all there), and
    /// the log id, so the copy is the same log. The copy's indexes are
    /// derived afresh. Returns the copy's head.
    pub fn backup(&self, dest: &Path) -> Result<Head, StoreError> {
        if dest.exists() {
            return Err(StoreError::Backup(format!(
                "{} exists already: a backup goes into a new directory",
                dest.display()
            )));
        }
        let head = self.head();
        let copy = Store::open_sled(dest)?;
        let (from, to) = (self.h()?, copy.h()?);
        if let Some(id) = from.meta.get(META_LOG_ID)? {
            to.meta.insert(META_LOG_ID, id)?;
        }
        for blob in from.blobs.iter() {
            let (digest, bytes) = blob?;
            to.blobs.insert(digest, bytes)?;
        }
        for record in self.records_from(1) {
            let (seq, bytes) = record?;
            if seq > head.seq {
                break;
            }
            to.log.insert(crate::seq_key(seq), bytes)?;
        }
        to.db.flush()?;
        copy.set_durable(copy.last_record()?);
        copy.catch_up_indexes()?;
        to.db.flush()?;
        Ok(copy.head())
    }
}
