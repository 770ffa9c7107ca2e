//! Projection checkpoints: resume a fold where it last stopped.

use con_projection::Projection;
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// Why a projection could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The projection state could not be encoded.
    #[error("projection {name}: {reason}")]
    State {
        /// Projection name.
        name: &'static str,
        /// Codec error.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    through_seq: u64,
    state: Vec<u8>,
}

impl Store {
    /// The projection's current state: the stored checkpoint plus every
    /// event after it. Saves a new checkpoint when it advanced.
    pub fn project<P: Projection>(&self) -> Result<P, ProjectionError> {
        let head = self.head()?.seq;
        let (mut state, through) = match self.load_checkpoint::<P>()? {
            // A checkpoint beyond the head belongs to another log (a copied
            // checkpoint tree, a restored backup): it cannot be trusted.
            Some((state, through)) if through <= head => (state, through),
            _ => (P::default(), 0),
        };
        self.fold_from(&mut state, through, head).map(|()| state)
    }

    /// Recomputes the projection from seq 1, ignoring any checkpoint, and
    /// stores the result as the new checkpoint.
    pub fn rebuild<P: Projection>(&self) -> Result<P, ProjectionError> {
        let head = self.head()?.seq;
        let mut state = P::default();
        self.fold_from(&mut state, 0, head)?;
        Ok(state)
    }

    fn fold_from<P: Projection>(
        &self,
        state: &mut P,
        through: u64,
        head: u64,
    ) -> Result<(), ProjectionError> {
        if through >= head {
            return Ok(());
        }
        let mut last = through;
        for event in self.events_from(through + 1) {
            let event = event?;
            if event.seq() > head {
                break;
            }
            state.apply(&event);
            last = event.seq();
        }
        self.save_checkpoint(state, last)
    }

    fn load_checkpoint<P: Projection>(&self) -> Result<Option<(P, u64)>, ProjectionError> {
        let Some(bytes) = self.checkpoints.get(P::NAME).map_err(StoreError::from)? else {
            return Ok(None);
        };
        // An undecodable or outdated checkpoint is only a cache miss.
        let Ok(cp) = con_event::codec::decode::<Checkpoint>("checkpoint", &bytes) else {
            return Ok(None);
        };
        if cp.version != P::VERSION {
            return Ok(None);
        }
        Ok(con_event::codec::decode::<P>("projection state", &cp.state)
            .ok()
            .map(|s| (s, cp.through_seq)))
    }

    fn save_checkpoint<P: Projection>(
        &self,
        state: &P,
        through_seq: u64,
    ) -> Result<(), ProjectionError> {
        let cp = Checkpoint {
            version: P::VERSION,
            through_seq,
            state: con_event::codec::encode(state),
        };
        self.checkpoints
            .insert(P::NAME, con_event::codec::encode(&cp))
            .map_err(StoreError::from)?;
        Ok(())
    }
}
