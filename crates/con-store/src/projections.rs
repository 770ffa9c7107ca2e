//! Projection checkpoints: resume a fold where it last stopped.

use con_projection::Projection;
use serde::{Deserialize, Serialize};

use crate::{Head, Store, StoreError};

/// Projection state can outgrow an event record by far.
const MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

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
    /// Hash of the record at `through_seq`: ties the state to this exact log.
    through_hash: [u8; 32],
    state: Vec<u8>,
}

impl Store {
    /// The projection's current state: the stored checkpoint plus every
    /// durable event after it. Saves a new checkpoint when it advanced.
    pub fn project<P: Projection>(&self) -> Result<P, ProjectionError> {
        let (mut state, through) = self.load_checkpoint::<P>()?.unwrap_or_default();
        let head = self.fold(&mut state, through)?;
        if head != through {
            self.save_checkpoint(&state, head)?;
        }
        Ok(state)
    }

    /// Recomputes the projection from seq 1, ignoring any checkpoint, and
    /// stores the result as the new checkpoint.
    pub fn rebuild<P: Projection>(&self) -> Result<P, ProjectionError> {
        let mut state = P::default();
        let head = self.fold(&mut state, Head::default())?;
        self.save_checkpoint(&state, head)?;
        Ok(state)
    }

    /// Applies the durable events after `through`; returns the position reached
    /// (`through` itself when nothing is new).
    fn fold<P: Projection>(&self, state: &mut P, through: Head) -> Result<Head, ProjectionError> {
        let mut reached = through;
        for event in self.events_from(through.seq + 1) {
            let event = event?;
            state.apply(&event);
            reached = Head {
                seq: event.seq(),
                hash: event.hash,
            };
        }
        Ok(reached)
    }

    fn load_checkpoint<P: Projection>(&self) -> Result<Option<(P, Head)>, ProjectionError> {
        let Some(bytes) = self
            .h()?
            .checkpoints
            .get(P::NAME)
            .map_err(StoreError::from)?
        else {
            return Ok(None);
        };
        // An undecodable, outdated or foreign checkpoint is only a cache miss.
        let Ok(cp) = con_event::codec::decode_with_limit::<Checkpoint>(
            "checkpoint",
            &bytes,
            MAX_STATE_BYTES,
        ) else {
            return Ok(None);
        };
        let through = Head {
            seq: cp.through_seq,
            hash: con_event::Digest(cp.through_hash),
        };
        if cp.version != P::VERSION || !self.still_matches(through)? {
            return Ok(None);
        }
        Ok(
            con_event::codec::decode_with_limit::<P>(
                "projection state",
                &cp.state,
                MAX_STATE_BYTES,
            )
            .ok()
            .map(|s| (s, through)),
        )
    }

    fn save_checkpoint<P: Projection>(
        &self,
        state: &P,
        through: Head,
    ) -> Result<(), ProjectionError> {
        let encode_error = |e: con_event::EncodeError| ProjectionError::State {
            name: P::NAME,
            reason: e.to_string(),
        };
        let cp = Checkpoint {
            version: P::VERSION,
            through_seq: through.seq,
            through_hash: through.hash.0,
            state: con_event::codec::encode_with_limit(state, MAX_STATE_BYTES)
                .map_err(encode_error)?,
        };
        let bytes = con_event::codec::encode_with_limit(&cp, MAX_STATE_BYTES + 1024)
            .map_err(encode_error)?;
        self.h()?
            .checkpoints
            .insert(P::NAME, bytes)
            .map_err(StoreError::from)?;
        Ok(())
    }
}
