//! Sessions whose run is gone without recording an end.
//!
//! A run records its own `session.ended`. It cannot when it dies first:
//! the daemon was killed under it and its appends failed, the kernel's OOM
//! killer took it, a unit was stopped hard. Such a session would stay open
//! in the record for ever (counted as running in `con status`, missing
//! from the ledger). At start (before it is ready and any run can start)
//! and then periodically the daemon looks for
//! open sessions of agents with **no process left at all**, and records
//! their end with the outcome `abandoned`. An agent with any live process
//! is left alone: a run that survived a daemon restart reconnects and ends
//! its session itself.

use std::sync::Arc;
use std::time::Duration;

use con_event::payloads::{Outcome, SessionEnded};
use con_event::{Actor, NewEvent, SessionId};
use nix::unistd::User;

use crate::Shared;

/// How often open sessions are checked against the live processes.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The sweep at start: awaited before the daemon starts runs or reports
/// itself ready, so that no run of the agent exists yet. Once one does (a
/// systemd path unit fires as soon as the daemon is ready, and may take the
/// very task whose session died), the agent is busy and its dead session
/// would stay open until it is idle again.
pub(crate) async fn sweep_at_start(shared: &Arc<Shared>) {
    match sweep(shared).await {
        Ok(0) => {}
        Ok(n) => log::info!("recorded {n} session(s) whose run ended without an end as abandoned"),
        Err(e) => log::error!("closing abandoned sessions: {e}"),
    }
}

/// Sweeps every [`SWEEP_EVERY`] until the daemon stops (the first sweep is
/// [`sweep_at_start`]'s).
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stopping.changed() => return,
        }
        if let Err(e) = sweep(&shared).await {
            log::error!("closing abandoned sessions: {e}");
        }
    }
}

/// Records `session.ended` (abandoned) for every open session whose agent
/// has no live process. Returns how many it closed.
pub(crate) async fn sweep(shared: &Arc<Shared>) -> Result<usize, String> {
    // Enforcement ends the sessions its kills end; whichever reads the open
    // sessions first records their end, and the other sees them closed.
    let _ending = shared.ending_sessions.lock().await;
    let orphans = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || orphaned(&shared))
            .await
            .map_err(|e| e.to_string())??
    };
    let mut closed = 0;
    for (session, agent, duration_ms) in orphans {
        let event = NewEvent {
            actor: Actor::system(),
            session: Some(session),
            task: None,
            causation: None,
            payload: SessionEnded {
                agent,
                outcome: Outcome::Abandoned,
                iterations: 0,
                duration_ms,
                response: None,
                detail: "its run ended without recording an end (no process of the agent is left)"
                    .to_owned(),
            }
            .into(),
            attachments: Vec::new(),
        };
        shared
            .appender
            .submit(event)
            .wait_async()
            .await
            .map_err(|e| format!("recording session.ended: {e}"))?;
        closed += 1;
    }
    Ok(closed)
}

/// Open sessions of agents without a live process: (session, agent,
/// milliseconds since it started).
fn orphaned(shared: &Shared) -> Result<Vec<(SessionId, String, u64)>, String> {
    let open = |shared: &Shared| {
        shared.with_ledger(|l| {
            l.open
                .iter()
                .map(|(id, s)| (*id, s.agent.clone()))
                .collect::<Vec<_>>()
        })
    };
    let open_now = open(shared)?;
    let agents: std::collections::BTreeSet<&str> =
        open_now.iter().map(|(_, agent)| agent.as_str()).collect();
    // One /proc scan per sweep, however many agents have open sessions.
    let live = if agents.is_empty() {
        std::collections::HashSet::new()
    } else {
        crate::enforce::users_with_processes()
    };
    let idle: std::collections::BTreeSet<&str> = agents
        .into_iter()
        .filter(|agent| !has_processes(shared, agent, &live))
        .collect();
    let candidates: Vec<(SessionId, String)> = open_now
        .iter()
        .filter(|(_, agent)| idle.contains(agent.as_str()))
        .cloned()
        .collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // A run appends its end and then exits: read the open set again after
    // finding the agent without processes, so an end recorded in between
    // is seen and not doubled.
    let still_open = open(shared)?;
    let now = crate::gateway::now_unix_nanos();
    Ok(candidates
        .into_iter()
        .filter(|c| still_open.contains(c))
        .map(|(id, agent)| {
            let started = shared
                .store
                .session_events(&id, 0)
                .ok()
                .and_then(|mut events| events.next())
                .and_then(Result::ok)
                .map_or(now, |e| e.envelope.ts_unix_nanos);
            let ms = u64::try_from(now.saturating_sub(started) / 1_000_000).unwrap_or(0);
            (id, agent, ms)
        })
        .collect())
}

/// Whether any process of `agent`'s user is alive. A failed lookup counts
/// as alive (nothing is closed on a guess); a user that no longer exists
/// (decommissioned) has none. `live`: the users with a live process
/// ([`crate::enforce::users_with_processes`]).
fn has_processes(shared: &Shared, agent: &str, live: &std::collections::HashSet<u32>) -> bool {
    match User::from_name(&shared.config.layout.user(agent)) {
        Ok(Some(user)) if !user.uid.is_root() => live.contains(&user.uid.as_raw()),
        Ok(None) => false,
        _ => true,
    }
}
