//! Pure folds of the event log into current state.
//!
//! A [`Projection`] is a value that events are applied to in seq order. The
//! store persists a projection's state with the seq it covers (a checkpoint)
//! and applies only newer events on the next read; because `apply` is a pure
//! function of (state, event), resuming from a checkpoint gives exactly the
//! state a rebuild from seq 1 gives. This crate does no IO.

mod fleet;
mod ledger;

pub use fleet::{
    AgentStatus, Alert, CheckState, FailedTask, FleetStatus, MAX_FAILED_TASKS, RunningSession,
    SessionEnd, utc_day,
};
pub use ledger::{Ledger, LedgerRow, OpenSession, rfc3339_utc, utc_date};

use con_event::Event;
use serde::{Serialize, de::DeserializeOwned};

/// A fold over the event log.
pub trait Projection: Default + Clone + PartialEq + Serialize + DeserializeOwned {
    /// Checkpoint key; unique per projection.
    const NAME: &'static str;
    /// Bump when `apply` or the state layout changes: stored checkpoints of
    /// another version are discarded and the projection is rebuilt.
    const VERSION: u32;
    /// Applies one event. Must be deterministic and depend only on `self` and
    /// `event`.
    fn apply(&mut self, event: &Event);
}
