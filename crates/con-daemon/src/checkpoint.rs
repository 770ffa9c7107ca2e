//! `chain.checkpoint`: the daemon writes the chain's head (a seq and its
//! hash) into the log every [`CheckpointSettings::every`] events, at least
//! every [`CheckpointSettings::interval`] while the log moves, and at clean
//! shutdown. The mirror copies each one to the journal, where it outlives
//! the database: `con verify --journal` compares the log against them, so a
//! tail rewritten with recomputed hashes, a truncated tail or a replaced
//! database shows. A checkpoint at seq N vouches for every seq up to N (the
//! chain links them), so one every few thousand events is enough.
//!
//! With each one the daemon also saves the checkpoints of the projections
//! it folds at start (the contract history, the arrival history, the fleet
//! status and the ledger), so that a start after months of running folds
//! the events since the last chain checkpoint (or since the last clean
//! stop), not the whole log.

use std::sync::Arc;
use std::time::Duration;

use con_event::NewEvent;
use con_event::payloads::ChainCheckpoint;

use con_projection::{FleetStatus, Ledger};
use con_store::ProjectionError;

use crate::Shared;
use crate::arrivals::ArrivalHistory;
use crate::contracts::ContractHistory;

/// When checkpoints are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// Events after which the next checkpoint is due.
    pub every: u64,
    /// Longest time a moved log goes without one.
    pub interval: Duration,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        Self {
            every: 10_000,
            interval: Duration::from_secs(300),
        }
    }
}

/// Where the last checkpoint is, and when the next one is due.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    every: u64,
    /// Seq of the last checkpoint this daemon wrote, or the head it started
    /// at: everything up to it is vouched for, or was before this run.
    last: u64,
}

impl Plan {
    pub(crate) fn new(settings: CheckpointSettings, head: u64) -> Self {
        Self {
            every: settings.every.max(1),
            last: head,
        }
    }

    /// Enough events since the last checkpoint.
    pub(crate) fn due_by_count(&self, head: u64) -> bool {
        head >= self.last.saturating_add(self.every)
    }

    /// Anything since the last checkpoint.
    pub(crate) fn moved(&self, head: u64) -> bool {
        head > self.last
    }
}

/// Appends a checkpoint of the durable head if the log moved since the last
/// one; a failure is reported and the next one is tried as planned. Whether
/// one was written.
pub(crate) async fn write(shared: &Shared, plan: &mut Plan) -> bool {
    let head = shared.store.head();
    if !plan.moved(head.seq) {
        return false;
    }
    let event = NewEvent::system(ChainCheckpoint {
        through_seq: head.seq,
        head: head.hash,
    });
    match shared.appender.submit(event).wait_async().await {
        Ok(appended) => {
            plan.last = appended.seq;
            true
        }
        Err(e) => {
            log::error!("chain checkpoint at seq {}: {e}", head.seq);
            false
        }
    }
}

/// Saves the checkpoints of the projections the daemon folds at start
/// (off the async workers: folding reads the log). A failure is reported;
/// the next start then folds from the checkpoint before.
pub(crate) async fn save_projections(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let saved = tokio::task::spawn_blocking(move || {
        let store = &shared.store;
        store.project::<ContractHistory>()?;
        store.project::<ArrivalHistory>()?;
        store.project::<FleetStatus>()?;
        store.project::<Ledger>()?;
        Ok::<(), ProjectionError>(())
    })
    .await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("saving the projections' checkpoints: {e}"),
        Err(e) => log::error!("saving the projections' checkpoints: {e}"),
    }
}

/// Writes checkpoints as planned until the daemon stops; returns the plan
/// for the one written at shutdown.
pub(crate) async fn run(shared: Arc<Shared>, settings: CheckpointSettings) -> Plan {
    let mut plan = Plan::new(settings, shared.store.head().seq);
    let mut head = shared.head.clone();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.interval,
        settings.interval.max(Duration::from_millis(10)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = crate::until_stopping(shared.stopping.clone());
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut stopping => break,
            changed = head.changed() => {
                if changed.is_err() {
                    break;
                }
                let seq = *head.borrow_and_update();
                if plan.due_by_count(seq) && write(&shared, &mut plan).await {
                    save_projections(&shared).await;
                }
            }
            _ = tick.tick() => if write(&shared, &mut plan).await {
                save_projections(&shared).await;
            },
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_every_n_events_and_only_when_the_log_moved() {
        let settings = CheckpointSettings {
            every: 100,
            interval: Duration::from_secs(60),
        };
        let mut plan = Plan::new(settings, 40);
        assert!(!plan.moved(40));
        assert!(plan.moved(41));
        assert!(!plan.due_by_count(139));
        assert!(plan.due_by_count(140));
        // The checkpoint itself is the new base: it alone does not move
        // the log.
        plan.last = 141;
        assert!(!plan.moved(141));
        assert!(!plan.due_by_count(240));
        assert!(plan.due_by_count(241));
        let zero = Plan::new(
            CheckpointSettings {
                every: 0,
                interval: Duration::from_secs(1),
            },
            0,
        );
        assert!(!zero.due_by_count(0) && zero.due_by_count(1));
    }
}
