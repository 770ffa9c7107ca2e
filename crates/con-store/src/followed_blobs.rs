//! Which blobs a follower has already passed on.
//!
//! A follower that copies attachments elsewhere (the journal mirror) must
//! copy each content once, not once per event that references it: a session
//! refers to the same conversation blobs again and again. The set survives
//! restarts so a back-fill does not repeat contents either.

use con_event::Digest;

use crate::{Store, StoreError, seq_key};

/// A persistent set of blob digests one follower has passed on, each with the
/// seq of the event it was passed on with. Advisory like a marker: written
/// without a flush, so after a crash a blob may be passed on again.
#[derive(Clone)]
pub struct FollowedBlobs {
    store: Store,
    /// Its tree's name. The tree is looked up on every use (a map lookup in
    /// sled), so that a set held across a reopen of the store uses the new
    /// opening and keeps no handle of the old one alive.
    tree: String,
}

impl Store {
    /// The set of blobs the follower `name` has passed on (created empty).
    pub fn followed_blobs(&self, name: &str) -> Result<FollowedBlobs, StoreError> {
        let set = FollowedBlobs {
            store: self.clone(),
            tree: format!("followed_blobs/{name}"),
        };
        set.tree()?;
        Ok(set)
    }
}

impl FollowedBlobs {
    fn tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.store.h()?.db.open_tree(&self.tree)?)
    }

    /// Whether `digest` was passed on already.
    pub fn contains(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.tree()?.contains_key(digest.0)?)
    }

    /// Records that `digest` was passed on with the event at `seq`.
    pub fn insert(&self, digest: &Digest, seq: u64) -> Result<(), StoreError> {
        self.tree()?.insert(digest.0, seq_key(seq).as_slice())?;
        Ok(())
    }

    /// Number of blobs passed on (0 while the store is being reopened).
    pub fn len(&self) -> usize {
        self.tree().map_or(0, |t| t.len())
    }

    /// Whether nothing was passed on yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_followed_blob_is_remembered_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let d = Digest::of(b"content");
        {
            let store = Store::open(&path).unwrap();
            let set = store.followed_blobs("journal").unwrap();
            assert!(set.is_empty());
            assert!(!set.contains(&d).unwrap());
            set.insert(&d, 7).unwrap();
            assert!(store.followed_blobs("other").unwrap().is_empty());
            store.flush().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let set = store.followed_blobs("journal").unwrap();
        assert!(set.contains(&d).unwrap());
        assert_eq!(set.len(), 1);
    }
}
