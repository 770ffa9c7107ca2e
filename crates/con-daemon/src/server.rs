//! One connection: identify the peer, then answer requests until EOF.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use con_event::payloads::{AgentCondition, AgentState, CheckStatus, Outcome, Trust};
use con_event::{Actor, Event, NewEvent, Payload, SessionId};
use con_protocol::{
    AgentView, BLOB_CHUNK_BYTES, BlobChunk, BlobRequest, Caller, CallerRole, CheckView,
    ClientEvent, ErrorCode, FrameError, LEN_BYTES, LogPosition, MirrorState, MirrorView,
    ProblemKind, ProblemView, Query, RecordingState, RecordingView, Request, Response,
    STATUS_VIEW_VERSION, SetCondition, StatusView, VerifyView, check_len, decode_body,
    encode_frame,
};
use con_store::AppendError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::Shared;
use crate::identity::{Identity, identify, may_append};

/// Events sent per read of the log while answering a query.
const QUERY_CHUNK: usize = 256;

/// The connection is over (peer gone, or a reply could not be sent).
struct Closed;

async fn send(wr: &mut OwnedWriteHalf, response: &Response) -> Result<(), Closed> {
    let frame = match encode_frame(response) {
        Ok(f) => f,
        // Only an event over the frame limit can fail here; say so instead.
        Err(e) => encode_frame(&Response::Error {
            code: ErrorCode::Unavailable,
            message: e.to_string(),
        })
        .map_err(|_| Closed)?,
    };
    wr.write_all(&frame).await.map_err(|_| Closed)
}

async fn refuse(wr: &mut OwnedWriteHalf, code: ErrorCode, message: String) -> Result<(), Closed> {
    send(wr, &Response::Error { code, message }).await
}

/// Once a frame has started, the rest must follow within this time.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections one non-root uid may hold open at once.
const MAX_CONNECTIONS_PER_UID: usize = 64;

/// Largest frame an agent may send. An agent's frames carry its run's
/// events and model calls (a whole conversation: well under a megabyte for
/// today's context windows); operators keep the protocol's limit.
pub(crate) const AGENT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Frame bytes all connections together may hold at once, in KiB (the unit
/// of the budget's permits). Beyond it, reading a frame waits until others
/// are handled, so the daemon's memory stays bounded whatever the number of
/// connections and callers.
pub(crate) const FRAME_BUDGET_KIB: usize = 128 * 1024;

/// A request and its share of the frame budget, held until it is handled.
type Budgeted = (Request, tokio::sync::OwnedSemaphorePermit);

/// Reads one request: `Ok(None)` on a clean end of stream. The declared
/// length must be within `max`; the body is read only once its bytes are
/// granted from the daemon-wide `budget`, as it arrives (no buffer of the
/// declared size up front), and must arrive within `FRAME_TIMEOUT`.
async fn read_request(
    rd: &mut OwnedReadHalf,
    max: usize,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<Option<Budgeted>, FrameError> {
    let mut prefix = [0u8; LEN_BYTES];
    match rd.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    }
    let len = check_len(prefix)?;
    if len > max {
        return Err(FrameError::BadLength(
            u32::try_from(len).unwrap_or(u32::MAX),
        ));
    }
    let kib = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX);
    let permit = budget
        .clone()
        .acquire_many_owned(kib)
        .await
        .map_err(|_| FrameError::Malformed("the daemon is shutting down".into()))?;
    let mut rest = Vec::with_capacity(len.min(64 * 1024));
    let read = tokio::time::timeout(
        FRAME_TIMEOUT,
        (&mut *rd).take(len as u64).read_to_end(&mut rest),
    )
    .await
    .map_err(|_| FrameError::Malformed("frame not completed in time".into()))?
    .map_err(|e| FrameError::Malformed(format!("truncated frame: {e}")))?;
    if read != len {
        return Err(FrameError::Malformed(format!(
            "truncated frame: {read} of {len} bytes"
        )));
    }
    decode_body(&rest).map(|request| Some((request, permit)))
}

/// Waits until the client has sent a byte of its next request, or closed
/// the connection (either way the next read will not wait), without
/// consuming anything. Readiness alone may be stale: it is confirmed by
/// peeking, and cleared if there is nothing.
async fn request_begun(rd: &OwnedReadHalf) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let stream: &tokio::net::UnixStream = rd.as_ref();
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = [0u8; 1];
            nix::sys::socket::recv(
                stream.as_raw_fd(),
                &mut byte,
                nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)
        });
        match peeked {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Holds one of a uid's connection slots; frees it when dropped.
struct Slot {
    shared: Arc<Shared>,
    uid: u32,
}

impl Slot {
    fn take(shared: &Arc<Shared>, uid: u32) -> Option<Slot> {
        let mut counts = shared
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(uid).or_default();
        if uid != 0 && *count >= MAX_CONNECTIONS_PER_UID {
            return None;
        }
        *count += 1;
        Some(Slot {
            shared: shared.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = counts.get_mut(&self.uid) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

pub(crate) async fn serve(shared: Arc<Shared>, stream: UnixStream) {
    let cred = stream.peer_cred();
    let (mut rd, mut wr) = stream.into_split();
    let uid = match cred {
        Ok(cred) => cred.uid(),
        Err(e) => {
            let _ = refuse(
                &mut wr,
                ErrorCode::Forbidden,
                format!("cannot read peer credentials: {e}"),
            )
            .await;
            return;
        }
    };
    let Some(_slot) = Slot::take(&shared, uid) else {
        let _ = refuse(
            &mut wr,
            ErrorCode::Unavailable,
            format!("uid {uid} has {MAX_CONNECTIONS_PER_UID} connections open already"),
        )
        .await;
        return;
    };
    // User database lookups may block (NSS): off the async workers.
    let lookup = shared.clone();
    let identity =
        tokio::task::spawn_blocking(move || identify(uid, &lookup.config.layout, &lookup.agents()))
            .await
            .unwrap_or_else(|e| Err(format!("identity lookup failed: {e}")));
    let identity = match identity {
        Ok(identity) => identity,
        Err(reason) => {
            let _ = refuse(&mut wr, ErrorCode::Forbidden, reason).await;
            return;
        }
    };
    let mut stopping = shared.stopping.clone();
    let max = match identity {
        Identity::Agent { .. } => AGENT_MAX_FRAME_BYTES,
        Identity::Operator { .. } => con_protocol::MAX_FRAME_BYTES as usize,
    };
    // Sessions this connection recorded events for that are still open.
    let mut live: HashSet<SessionId> = HashSet::new();
    loop {
        // Idle: no request begun within the limit, and no open session of
        // a run behind it. Closed without a word: an answer nobody asked
        // for would be read as the answer to the client's next request.
        if live.is_empty() {
            tokio::select! {
                ready = tokio::time::timeout(shared.config.client_idle_timeout, request_begun(&rd)) => {
                    if ready.is_err() {
                        return;
                    }
                }
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
        let request = tokio::select! {
            r = read_request(&mut rd, max, &shared.frame_budget) => r,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let result = match request {
            Ok(None) => return,
            // The permit is held until the request is handled.
            Ok(Some((request, _permit))) => {
                // A reload may have removed the agent since it connected:
                // from then on its uid is nobody here, on open connections
                // too.
                if let Some(name) = identity.agent()
                    && !shared.agents().iter().any(|a| a == name)
                {
                    let _ = refuse(
                        &mut wr,
                        ErrorCode::Forbidden,
                        format!("{identity}: no longer a configured agent"),
                    )
                    .await;
                    return;
                }
                handle(&shared, &identity, request, &mut wr, &mut live).await
            }
            Err(e) => {
                // A bad frame leaves the stream position unknown: answer, close.
                let code = match e {
                    FrameError::BadLength(_) => ErrorCode::TooLarge,
                    _ => ErrorCode::BadFrame,
                };
                let _ = refuse(&mut wr, code, e.to_string()).await;
                return;
            }
        };
        if result.is_err() {
            return;
        }
    }
}

async fn handle(
    shared: &Arc<Shared>,
    identity: &Identity,
    request: Request,
    wr: &mut OwnedWriteHalf,
    live: &mut HashSet<SessionId>,
) -> Result<(), Closed> {
    match request {
        Request::Append(event) => append(shared, identity, event, wr, live).await,
        Request::Query(query) => self::query(shared, identity, query, wr).await,
        Request::Status => status(shared, identity, wr).await,
        Request::Llm(call) => llm(shared, identity, call, wr).await,
        Request::Blob(request) => blob(shared, identity, request, wr).await,
        Request::Blobs(requests) => blobs(shared, identity, requests, wr).await,
        Request::SetCondition(order) => set_condition(shared, identity, order, wr).await,
        Request::RunChecks => run_checks(shared, identity, wr).await,
        Request::Verify => verify(shared, identity, wr).await,
        Request::RunContracts(which) => run_contracts(shared, identity, which, wr).await,
        Request::Backup(dir) => backup(shared, identity, dir, wr).await,
        Request::Agent(order) => agent_order(shared, identity, order, wr).await,
        Request::Ledger(query) => ledger(shared, identity, query, wr).await,
        Request::RouteInbox => route_inbox(shared, identity, wr).await,
        Request::AddContract(contract) => add_contract(shared, identity, contract, wr).await,
    }
}

/// A contract file to store (see [`crate::contract_add`]).
async fn add_contract(
    shared: &Arc<Shared>,
    identity: &Identity,
    contract: con_protocol::AddContract,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    match crate::contract_add::add(shared, identity, contract).await {
        Ok(view) => send(wr, &Response::ContractAdded(view)).await,
        Err((code, message)) => refuse(wr, code, message).await,
    }
}

/// How long a routing pass asked for waits for the arrivals of the tasks
/// in the outer inbox to be recorded (nothing is routed before it is).
const ROUTE_ARRIVAL_WAIT: Duration = Duration::from_secs(2);

/// `.task` entries of the outer inbox whose arrival is not recorded yet.
fn unrecorded_outer_tasks(shared: &Shared) -> Vec<std::path::PathBuf> {
    crate::supervisor::task_entries(&shared.config.layout.outer_inbox(), |p| {
        !shared.recorded.contains(p)
    })
}

/// A routing pass of the outer inbox now, by the supervisor (which also
/// routes on every arrival): operators only. Tasks whose arrival is not
/// recorded yet get a moment; what is still unrecorded after it is named,
/// not routed.
async fn route_inbox(
    shared: &Arc<Shared>,
    identity: &Identity,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if let Some(reason) = operators_only(identity, "route the outer inbox") {
        return refuse(wr, ErrorCode::Forbidden, reason).await;
    }
    let Some(requests) = shared.route_requests.clone() else {
        return refuse(
            wr,
            ErrorCode::Unavailable,
            "this daemon does not route the outer inbox".to_owned(),
        )
        .await;
    };
    let waited = std::time::Instant::now();
    while waited.elapsed() < ROUTE_ARRIVAL_WAIT && !unrecorded_outer_tasks(shared).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let answer = if requests.send(tx).await.is_ok() {
        rx.await.ok()
    } else {
        None
    };
    let Some(mut view) = answer else {
        return refuse(
            wr,
            ErrorCode::Unavailable,
            "the daemon is stopping: nothing was routed".to_owned(),
        )
        .await;
    };
    view.waiting = unrecorded_outer_tasks(shared)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    send(wr, &Response::Routed(view)).await
}

/// A consistent copy of the live log into a new directory, made here because
/// the daemon owns the log. Root only: a member of `trusted` must not be able
/// to make root write a database wherever it names.
async fn backup(
    shared: &Arc<Shared>,
    identity: &Identity,
    dir: String,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if identity.uid() != 0 {
        return refuse(
            wr,
            ErrorCode::Forbidden,
            format!("{identity}: only root backs up the event log"),
        )
        .await;
    }
    let dest = std::path::PathBuf::from(&dir);
    if !dest.is_absolute() {
        return refuse(
            wr,
            ErrorCode::Rejected,
            format!("backup: {dir:?} is not an absolute path"),
        )
        .await;
    }
    let store = shared.store.clone();
    match tokio::task::spawn_blocking(move || store.backup(&dest)).await {
        Ok(Ok(head)) => {
            send(
                wr,
                &Response::BackedUp {
                    head_seq: head.seq,
                    head_hash: head.hash,
                },
            )
            .await
        }
        Ok(Err(e)) => refuse(wr, ErrorCode::Rejected, e.to_string()).await,
        Err(e) => refuse(wr, ErrorCode::Unavailable, e.to_string()).await,
    }
}

async fn append(
    shared: &Arc<Shared>,
    identity: &Identity,
    event: ClientEvent,
    wr: &mut OwnedWriteHalf,
    live: &mut HashSet<SessionId>,
) -> Result<(), Closed> {
    let payload = match Payload::decode(event.kind, event.kind_version, &event.payload) {
        Ok(p) => p,
        Err(e) => return refuse(wr, ErrorCode::Rejected, format!("payload: {e}")).await,
    };
    if let Err(reason) = may_append(identity, &payload) {
        return refuse(wr, ErrorCode::Forbidden, format!("{identity}: {reason}")).await;
    }
    if let Some(me) = identity.agent() {
        // Everything an agent records belongs to a session it opened: an
        // event with no session would be a claim nobody can tie to a run.
        let Some(session) = event.session else {
            return refuse(
                wr,
                ErrorCode::Forbidden,
                format!(
                    "{identity}: {} events must belong to a session the agent opened",
                    payload.spec().name
                ),
            )
            .await;
        };
        let opens = matches!(payload, Payload::SessionStarted(_));
        if let Err((code, reason)) = own_session(shared, identity, me, session, opens).await {
            return refuse(wr, code, reason).await;
        }
        if let Payload::SessionStarted(started) = &payload
            && started.trust == Trust::Verified
            && let Err((code, reason)) = verified_arrival(shared, me, event.task.as_deref()).await
        {
            return refuse(wr, code, format!("{identity}: {reason}")).await;
        }
    }
    if let Err(reason) = attachments_match(&payload, &event.attachments) {
        return refuse(wr, ErrorCode::Rejected, reason).await;
    }
    // Checked last, so that only an event that would be stored is charged.
    let sizes: Vec<u64> = event.attachments.iter().map(|a| a.len() as u64).collect();
    let admitted = match identity.agent() {
        Some(me) => crate::quota::admit_agent(shared, me, event.payload.len(), &sizes).await,
        None => crate::quota::admit_operator(
            shared,
            crate::quota::event_bytes(event.payload.len(), &sizes),
        ),
    };
    if let Err((code, reason)) = admitted {
        return refuse(wr, code, reason).await;
    }
    let new = NewEvent {
        // The kernel's word, not the client's.
        actor: Actor {
            uid: identity.uid(),
            agent: identity.agent().map(str::to_owned),
        },
        session: event.session,
        task: event.task,
        causation: event.causation,
        payload,
        attachments: event.attachments,
    };
    let session = new.session;
    let ends = matches!(new.payload, Payload::SessionEnded(_));
    let appended = append_and_answer(shared, new, wr).await?;
    // The sessions this connection records for: while one is open, the
    // connection is a live run's link and is never closed as idle (the run
    // may be waiting on a long tool).
    if appended
        && identity.agent().is_some()
        && let Some(session) = session
    {
        if ends {
            live.remove(&session);
        } else {
            live.insert(session);
        }
    }
    Ok(())
}

/// Appends `new` and answers with its durable position, or the refusal;
/// whether it was appended.
async fn append_and_answer(
    shared: &Arc<Shared>,
    new: NewEvent,
    wr: &mut OwnedWriteHalf,
) -> Result<bool, Closed> {
    match shared.appender.submit(new).wait_async().await {
        Ok(a) => send(
            wr,
            &Response::Appended {
                seq: a.seq,
                hash: a.hash,
            },
        )
        .await
        .map(|()| true),
        Err(AppendError::Rejected(reason)) => refuse(wr, ErrorCode::Rejected, reason)
            .await
            .map(|()| false),
        Err(e) => refuse(wr, ErrorCode::Unavailable, e.to_string())
            .await
            .map(|()| false),
    }
}

/// A model call through the gateway: agents only, in their own sessions.
async fn llm(
    shared: &Arc<Shared>,
    identity: &Identity,
    call: con_protocol::LlmCall,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    let Some(me) = identity.agent() else {
        return refuse(
            wr,
            ErrorCode::Forbidden,
            format!("{identity}: model calls are made for agent sessions only"),
        )
        .await;
    };
    if let Err((code, reason)) = own_session(shared, identity, me, call.session, false).await {
        return refuse(wr, code, reason).await;
    }
    match crate::gateway::call(shared, me, call).await {
        Ok(answer) => send(wr, &Response::Llm(answer)).await,
        Err(r) => refuse(wr, r.code, r.message).await,
    }
}

/// Up to `QUERY_CHUNK` matching durable events from `from`, as stored
/// bytes, and the last seq examined (matching or not), so the next chunk
/// resumes after it instead of re-scanning.
#[allow(clippy::type_complexity)]
fn next_chunk(
    shared: &Shared,
    query: &Query,
    from: u64,
) -> Result<(Vec<(u64, Vec<u8>)>, Option<u64>), String> {
    let store = &shared.store;
    let records: Box<dyn Iterator<Item = Result<con_store::Record, con_store::StoreError>>> =
        match (&query.session, &query.agent) {
            (Some(s), _) => Box::new(store.session_records(s, from).map_err(|e| e.to_string())?),
            (None, Some(a)) => Box::new(store.agent_records(a, from).map_err(|e| e.to_string())?),
            (None, None) => Box::new(store.records_from(from)),
        };
    let mut out = Vec::new();
    let mut examined = None;
    for (scanned, record) in records.enumerate() {
        let (seq, raw) = record.map_err(|e| e.to_string())?;
        // Decoded only to filter; the stored bytes are what is sent.
        let event = Event::from_stored(&raw).map_err(|e| format!("event log seq {seq}: {e}"))?;
        examined = Some(seq);
        let about_agent = query.agent.as_deref().is_none_or(|a| {
            event.envelope.actor.agent.as_deref() == Some(a)
                || event.payload.subject_agent() == Some(a)
        });
        let of_task = query
            .task
            .as_deref()
            .is_none_or(|t| event.envelope.task.as_deref() == Some(t));
        if about_agent && of_task && query.kind.is_none_or(|k| event.envelope.kind == k) {
            out.push((seq, raw));
        }
        if out.len() >= QUERY_CHUNK || scanned >= QUERY_CHUNK * 16 {
            break;
        }
    }
    Ok((out, examined))
}

async fn query(
    shared: &Arc<Shared>,
    identity: &Identity,
    mut query: Query,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    // An agent sees the events by or about itself, nothing else: other
    // agents' tasks and tool output are theirs.
    if let Some(me) = identity.agent() {
        match query.agent.as_deref() {
            None => query.agent = Some(me.to_owned()),
            Some(a) if a == me => {}
            Some(a) => {
                return refuse(
                    wr,
                    ErrorCode::Forbidden,
                    format!("{identity}: may not read the events of agent {a}"),
                )
                .await;
            }
        }
    }
    let query = Arc::new(query);
    let mut from = query.from_seq.max(1);
    let mut remaining = query.limit.unwrap_or(u64::MAX);
    let mut head = shared.head.clone();
    let stop = crate::until_stopping(shared.stopping.clone());
    tokio::pin!(stop);
    loop {
        if remaining == 0 {
            break;
        }
        // Log reads may block: off the async workers.
        let (lookup, q) = (shared.clone(), query.clone());
        let chunk = tokio::task::spawn_blocking(move || next_chunk(&lookup, &q, from))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let (events, examined) = match chunk {
            Ok(c) => c,
            Err(e) => return refuse(wr, ErrorCode::Unavailable, e).await,
        };
        for (_, raw) in events
            .into_iter()
            .take(usize::try_from(remaining).unwrap_or(usize::MAX))
        {
            send(wr, &Response::Event(raw)).await?;
            remaining -= 1;
        }
        match examined {
            Some(seq) => from = seq + 1,
            None if query.follow => {
                // Caught up: wait for the next commit (or shutdown).
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return Ok(()) },
                    () = &mut stop => return Ok(()),
                }
            }
            None => break,
        }
    }
    send(
        wr,
        &Response::End {
            head_seq: shared.store.head().seq,
        },
    )
    .await
}

/// Newest events of an agent searched for the arrival of a task a session
/// claims is verified; an honest run starts its session right after the
/// arrival is recorded, so it is among them.
const ARRIVAL_SEARCH_DEPTH: usize = 10_000;

/// A session may call its task verified only if the daemon recorded the
/// task's latest arrival in the agent's own inbox as verified: the trust
/// of a session is the log's word, not the run's.
async fn verified_arrival(
    shared: &Arc<Shared>,
    me: &str,
    task: Option<&str>,
) -> Result<(), (ErrorCode, String)> {
    let Some(task) = task.map(str::to_owned) else {
        return Err((
            ErrorCode::Forbidden,
            "a session of a verified task must name its task".to_owned(),
        ));
    };
    let lookup = shared.clone();
    let agent = me.to_owned();
    let wanted = task.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Option<Trust>, String> {
        let task = wanted;
        let records = lookup
            .store
            .agent_records_newest_first(&agent)
            .map_err(|e| e.to_string())?;
        for record in records.take(ARRIVAL_SEARCH_DEPTH) {
            let (seq, raw) = record.map_err(|e| e.to_string())?;
            let event =
                Event::from_stored(&raw).map_err(|e| format!("event log seq {seq}: {e}"))?;
            if let Payload::InboxArrived(a) = &event.payload
                && a.inbox == agent
                && event.envelope.task.as_deref() == Some(task.as_str())
            {
                return Ok(Some(a.trust));
            }
        }
        Ok(None)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match found {
        Ok(Some(Trust::Verified)) => Ok(()),
        Ok(Some(Trust::Unverified)) => Err((
            ErrorCode::Forbidden,
            format!("task {task:?} was recorded unverified; its session cannot be verified"),
        )),
        Ok(None) => Err((
            ErrorCode::Forbidden,
            format!(
                "no recorded arrival of task {task:?} in this agent's inbox; its session cannot be verified"
            ),
        )),
        Err(e) => Err((ErrorCode::Unavailable, e)),
    }
}

/// Whether agent `me` may act in `session`: it started it, or the event is
/// the `session.started` that `opens` it. The error to answer otherwise.
async fn own_session(
    shared: &Arc<Shared>,
    identity: &Identity,
    me: &str,
    session: SessionId,
    opens: bool,
) -> Result<(), (ErrorCode, String)> {
    match session_owner(shared, session).await {
        Err(e) => Err((ErrorCode::Unavailable, e)),
        Ok(None) if opens => Ok(()),
        Ok(None) => Err((
            ErrorCode::Forbidden,
            format!("session {session} was not started (session.started comes first)"),
        )),
        Ok(Some(owner)) if owner == me => Ok(()),
        Ok(Some(owner)) => Err((
            ErrorCode::Forbidden,
            format!("{identity}: session {session} belongs to agent {owner}"),
        )),
    }
}

/// Session owners remembered at most; beyond that they are forgotten
/// wholesale and read from the log again.
const SESSION_OWNERS_CAPACITY: usize = 100_000;

/// The agent that started `session`, if it was started. A session's first
/// event never changes once durable, so a known owner is remembered and
/// every later append in the session is checked without reading the log.
async fn session_owner(shared: &Arc<Shared>, session: SessionId) -> Result<Option<String>, String> {
    let owners = || {
        shared
            .session_owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(owner) = owners().get(&session) {
        return Ok(Some(owner.clone()));
    }
    // Index reads may block: off the async workers.
    let lookup = shared.clone();
    let owner = tokio::task::spawn_blocking(move || {
        let mut events = lookup
            .store
            .session_events(&session, 1)
            .map_err(|e| e.to_string())?;
        match events.next() {
            None => Ok(None),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(first)) => Ok(Some(first.envelope.actor.agent.unwrap_or_default())),
        }
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))?;
    if let Some(owner) = &owner {
        let mut owners = owners();
        if owners.len() >= SESSION_OWNERS_CAPACITY {
            owners.clear();
        }
        owners.insert(session, owner.clone());
    }
    Ok(owner)
}

/// Attachments must be exactly the contents the payload references: nothing
/// unreferenced is stored, and nothing referenced is missing (an event whose
/// content is not in the log would be a claim nobody can check).
fn attachments_match(payload: &Payload, attachments: &[Vec<u8>]) -> Result<(), String> {
    let referenced = payload.blob_refs();
    let attached: Vec<con_event::BlobRef> = attachments
        .iter()
        .map(|a| con_event::BlobRef::of(a))
        .collect();
    if let Some(r) = attached.iter().find(|r| !referenced.contains(r)) {
        return Err(format!(
            "attachment sha256:{} ({} bytes) is not referenced by the {} payload",
            r.digest,
            r.len,
            payload.spec().name
        ));
    }
    if let Some(r) = referenced.iter().find(|r| !attached.contains(r)) {
        return Err(format!(
            "the {} payload references sha256:{} ({} bytes) but it is not attached",
            payload.spec().name,
            r.digest,
            r.len
        ));
    }
    Ok(())
}

/// Whether an event is by or about `agent`: what an agent may read.
fn by_or_about(event: &Event, agent: &str) -> bool {
    event.envelope.actor.agent.as_deref() == Some(agent)
        || event.payload.subject_agent() == Some(agent)
}

/// Part of a blob. An agent gets a blob only if an event it may read
/// references it; otherwise it learns nothing, not even that the blob exists.
async fn blob(
    shared: &Arc<Shared>,
    identity: &Identity,
    request: BlobRequest,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    blobs(shared, identity, vec![request], wr).await
}

/// Answers each of `requests` in order, as [`blob_answer`] says: looked up
/// on blocking threads in groups of at most [`BLOBS_ANSWER_BYTES`] of
/// answer (so a batch of large blobs is never all in memory at once), each
/// group written at once.
async fn blobs(
    shared: &Arc<Shared>,
    identity: &Identity,
    requests: Vec<BlobRequest>,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if requests.len() > con_protocol::MAX_BLOBS_PER_REQUEST {
        return refuse(
            wr,
            ErrorCode::TooLarge,
            format!(
                "{} blobs asked for at once; at most {}",
                requests.len(),
                con_protocol::MAX_BLOBS_PER_REQUEST
            ),
        )
        .await;
    }
    let mut pending: Vec<BlobRequest> = requests;
    while !pending.is_empty() {
        let lookup = shared.clone();
        let who = identity.clone();
        let group =
            tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, Vec<BlobRequest>), String> {
                let mut frames = Vec::new();
                let mut requests = pending.into_iter();
                while frames.len() < BLOBS_ANSWER_BYTES
                    && let Some(request) = requests.next()
                {
                    let frame = encode_frame(&blob_answer(&lookup.store, &who, &request))
                        .or_else(|e| {
                            encode_frame(&Response::Error {
                                code: ErrorCode::Unavailable,
                                message: e.to_string(),
                            })
                        })
                        .map_err(|e| e.to_string())?;
                    frames.extend(frame);
                }
                Ok((frames, requests.collect()))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let (frames, rest) = match group {
            Ok(group) => group,
            // Answers owed would never come: say why and close.
            Err(e) => {
                let _ = refuse(wr, ErrorCode::Unavailable, e).await;
                return Err(Closed);
            }
        };
        wr.write_all(&frames).await.map_err(|_| Closed)?;
        pending = rest;
    }
    Ok(())
}

/// Answer bytes one group of [`blobs`] looks up before writing them.
const BLOBS_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The answer to one blob request: the chunk asked for, or why not.
/// Operators may read any blob; an agent only those referenced by events it
/// may read (not found and not its own read the same to it).
fn blob_answer(store: &con_store::Store, identity: &Identity, request: &BlobRequest) -> Response {
    let found = (|| -> Result<Option<Vec<u8>>, String> {
        if let Some(me) = identity.agent() {
            let mut readable = false;
            for record in store
                .blob_referrers(&request.digest)
                .map_err(|e| e.to_string())?
            {
                let (seq, raw) = record.map_err(|e| e.to_string())?;
                let event =
                    Event::from_stored(&raw).map_err(|e| format!("event log seq {seq}: {e}"))?;
                if by_or_about(&event, me) {
                    readable = true;
                    break;
                }
            }
            if !readable {
                return Ok(None);
            }
        }
        store.blob(&request.digest).map_err(|e| e.to_string())
    })();
    let bytes = match found {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let (code, message) = match identity {
                Identity::Agent { .. } => (
                    ErrorCode::Forbidden,
                    format!(
                        "{identity}: no blob sha256:{} among the events this agent may read",
                        request.digest
                    ),
                ),
                Identity::Operator { .. } => (
                    ErrorCode::NotFound,
                    format!("no blob sha256:{} in the event log", request.digest),
                ),
            };
            return Response::Error { code, message };
        }
        Err(message) => {
            return Response::Error {
                code: ErrorCode::Unavailable,
                message,
            };
        }
    };
    let total_len = bytes.len() as u64;
    let start = usize::try_from(request.offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let limit = request.limit.min(BLOB_CHUNK_BYTES) as usize;
    let end = start.saturating_add(limit).min(bytes.len());
    Response::Blob(BlobChunk {
        total_len,
        offset: start as u64,
        bytes: bytes[start..end].to_vec(),
    })
}

/// The refusal for an agent asking what only operators may `what`.
fn operators_only(identity: &Identity, what: &str) -> Option<String> {
    match identity {
        Identity::Agent { .. } => Some(format!("{identity}: only operators {what}")),
        Identity::Operator { .. } => None,
    }
}

/// An operator's order about an agent's condition, recorded as
/// `agent.state` with the operator as actor.
async fn set_condition(
    shared: &Arc<Shared>,
    identity: &Identity,
    order: SetCondition,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if let Some(refusal) = operators_only(identity, "change an agent's condition") {
        return refuse(wr, ErrorCode::Forbidden, refusal).await;
    }
    if let Err(m) = con_config::validate_agent_name(&order.agent) {
        return refuse(
            wr,
            ErrorCode::Rejected,
            format!("agent name {:?}: {m}", order.agent),
        )
        .await;
    }
    let new = NewEvent {
        actor: Actor {
            uid: identity.uid(),
            agent: None,
        },
        session: None,
        task: None,
        causation: None,
        payload: AgentState {
            agent: order.agent,
            condition: order.condition,
            reason: order.reason,
        }
        .into(),
        attachments: Vec::new(),
    };
    append_and_answer(shared, new, wr).await.map(drop)
}

/// An operator's halt, quarantine, kill or resume of a configured agent:
/// an enforcement with the operator as actor (see [`crate::enforce`]),
/// answered once done and recorded.
async fn agent_order(
    shared: &Arc<Shared>,
    identity: &Identity,
    order: con_protocol::AgentOrder,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if let Some(refusal) = operators_only(identity, "halt, quarantine, kill or resume agents") {
        return refuse(wr, ErrorCode::Forbidden, refusal).await;
    }
    if let Err(m) = con_config::validate_agent_name(&order.agent) {
        return refuse(
            wr,
            ErrorCode::Rejected,
            format!("agent name {:?}: {m}", order.agent),
        )
        .await;
    }
    if !shared.agents().contains(&order.agent) {
        return refuse(
            wr,
            ErrorCode::NotFound,
            format!("no agent {:?} is configured", order.agent),
        )
        .await;
    }
    let action = order.action.as_str();
    let cause = crate::enforce::Cause {
        actor: Actor {
            uid: identity.uid(),
            agent: None,
        },
        contract: crate::enforce::OPERATOR.to_owned(),
        causation: None,
        reason: format!("con agent {action} by uid {}", identity.uid()),
        escalation: None,
    };
    match crate::enforce::enforce(shared, &cause, action, Some(order.agent)).await {
        Ok(view) => send(wr, &Response::Enforced(view)).await,
        Err(e) => refuse(wr, ErrorCode::Unavailable, e).await,
    }
}

/// con's built-in checks, run now and recorded through the one path every
/// evaluation takes (`contracts::record`: recorded, folded into the check
/// states, decided and enforced), so a built-in check failing here alerts
/// and escalates as it would on the scheduler's tick.
async fn run_checks(
    shared: &Arc<Shared>,
    identity: &Identity,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if let Some(refusal) = operators_only(identity, "run the checks") {
        return refuse(wr, ErrorCode::Forbidden, refusal).await;
    }
    match crate::contracts::evaluate_builtins(shared).await {
        Ok(runs) => {
            let checks = runs
                .into_iter()
                .map(|r| CheckView {
                    contract: r.contract,
                    check: r.check,
                    status: r.status,
                    scope_agent: r.scope_agent,
                    detail: r.detail,
                    seq: r.seq,
                })
                .collect();
            send(wr, &Response::Checks(checks)).await
        }
        Err(e) => refuse(wr, ErrorCode::Unavailable, e).await,
    }
}

/// The log's hash chain, walked here because the daemon owns the log.
/// Every record physically present is checked, the ones past the durable
/// head included: they are chained like any other.
async fn verify(
    shared: &Arc<Shared>,
    identity: &Identity,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if let Some(refusal) = operators_only(identity, "verify the event log") {
        return refuse(wr, ErrorCode::Forbidden, refusal).await;
    }
    let walked = shared.clone();
    let result = match tokio::task::spawn_blocking(move || walked.store.verify()).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => return refuse(wr, ErrorCode::Unavailable, e.to_string()).await,
        Err(e) => return refuse(wr, ErrorCode::Unavailable, e.to_string()).await,
    };
    let view = match result {
        Ok(report) => VerifyView {
            events: report.events,
            head_seq: report.head.seq,
            head_hash: report.head.hash,
            first_bad_seq: None,
            reason: None,
        },
        Err(broken) => VerifyView {
            events: broken.last_good.seq,
            head_seq: broken.last_good.seq,
            head_hash: broken.last_good.hash,
            first_bad_seq: Some(broken.seq),
            reason: Some(broken.reason),
        },
    };
    send(wr, &Response::Verified(view)).await
}

/// Contracts evaluated now (`con contracts check`, `con healthcheck`);
/// each result is recorded before it is answered.
async fn run_contracts(
    shared: &Arc<Shared>,
    identity: &Identity,
    which: con_protocol::RunContracts,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if let Some(refusal) = operators_only(identity, "run contracts") {
        return refuse(wr, ErrorCode::Forbidden, refusal).await;
    }
    match crate::contracts::evaluate(shared, which).await {
        Ok(runs) => send(wr, &Response::CheckRuns(runs)).await,
        Err(Ok(unknown)) => {
            refuse(
                wr,
                ErrorCode::NotFound,
                format!(
                    "no contract {:?} in {}",
                    unknown.0,
                    shared.config.layout.contracts_dir().display()
                ),
            )
            .await
        }
        Err(Err(e)) => refuse(wr, ErrorCode::Unavailable, e).await,
    }
}

/// Whether `identity` sees the whole fleet: operators, and the agents the
/// running config names fleet viewers. Never anything the caller says.
fn sees_fleet(shared: &Shared, identity: &Identity) -> bool {
    match identity {
        Identity::Operator { .. } => true,
        Identity::Agent { name, .. } => shared.fleet_viewers().iter().any(|v| v == name),
    }
}

/// Ledger entries sent per frame.
const LEDGER_CHUNK: usize = 1024;

/// The ledger of finished sessions, for those who see the fleet. It holds
/// no content and leads to none: a session id opens nothing an agent could
/// not open before (queries and blobs stay its own).
async fn ledger(
    shared: &Arc<Shared>,
    identity: &Identity,
    query: con_protocol::LedgerQuery,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    if !sees_fleet(shared, identity) {
        return refuse(
            wr,
            ErrorCode::Forbidden,
            format!(
                "{identity}: the ledger is for operators, officers and the operators [fleet_view] names; this agent sees only its own sessions (con replay --agent <itself>)"
            ),
        )
        .await;
    }
    let lookup = shared.clone();
    let selected = tokio::task::spawn_blocking(move || {
        lookup.with_ledger(|l| {
            l.select(query.since_unix_nanos, query.agent.as_deref())
                .map(crate::ledger::entry)
                .collect::<Vec<_>>()
        })
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let entries = match selected {
        Ok(entries) => entries,
        Err(e) => return refuse(wr, ErrorCode::Unavailable, e).await,
    };
    for part in entries.chunks(LEDGER_CHUNK) {
        send(wr, &Response::Ledger(part.to_vec())).await?;
    }
    send(
        wr,
        &Response::End {
            head_seq: shared.store.head().seq,
        },
    )
    .await
}

/// Current UTC day, as [`con_projection::utc_day`] counts them.
pub(crate) fn today() -> i64 {
    con_projection::utc_day(crate::gateway::now_unix_nanos())
}

fn agent_view(name: &str, configured: bool, a: Option<&con_projection::AgentStatus>) -> AgentView {
    let default = con_projection::AgentStatus::default();
    let a = a.unwrap_or(&default);
    AgentView {
        name: name.to_owned(),
        configured,
        condition: a.condition,
        inbox_depth: a.inbox_depth,
        running_sessions: a.running_sessions,
        sessions_total: a.sessions_total,
        last_outcome: a.last_outcome,
        spent_today_micro_usd: a.spend_micro_usd_by_day.get(&today()).copied().unwrap_or(0),
        last_seq: a.last_seq,
    }
}

/// The log's state as the status view shows it.
fn recording_view(state: &con_store::LogState) -> RecordingView {
    match state {
        con_store::LogState::Recording => RecordingView {
            state: RecordingState::Recording,
            since_unix_nanos: None,
            reason: None,
        },
        con_store::LogState::NotRecording(not) => RecordingView {
            state: RecordingState::NotRecording,
            since_unix_nanos: Some(not.since_unix_nanos),
            reason: Some(not.reason.clone()),
        },
        con_store::LogState::Failed(reason) => RecordingView {
            state: RecordingState::Failed,
            since_unix_nanos: None,
            reason: Some(reason.clone()),
        },
    }
}

/// The status view for `identity`: everything for operators; for an agent
/// that sees the fleet, every agent's row, the outer inbox and the checks
/// failing (without their output); for any other agent, who it is and
/// its own row (not the fleet, not the log's head).
async fn status(
    shared: &Arc<Shared>,
    identity: &Identity,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    let fleet = match shared.fleet_status().await {
        Ok(f) => f,
        // After a failed write sled refuses most reads until the log is
        // reopened; what the log cannot say, the view leaves out, but it
        // still says that the log does not record.
        Err(_) if !shared.recording() => con_projection::FleetStatus::default(),
        Err(e) => return refuse(wr, ErrorCode::Unavailable, e).await,
    };
    let sees_fleet = sees_fleet(shared, identity);
    let recording = recording_view(&shared.log_state.borrow());
    let caller = Caller {
        role: match identity {
            Identity::Operator { .. } => CallerRole::Operator,
            Identity::Agent { .. } => CallerRole::Agent,
        },
        uid: identity.uid(),
        agent: identity.agent().map(str::to_owned),
        sees_fleet,
    };
    let fleet_rows = || {
        let configured = shared.agents();
        let mut agents: Vec<AgentView> = configured
            .iter()
            .map(|name| agent_view(name, true, fleet.agents.get(name)))
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents.extend(
            fleet
                .agents
                .iter()
                .filter(|(name, _)| {
                    name.as_str() != con_inbox::OUTER_INBOX && !configured.contains(name)
                })
                .map(|(name, a)| agent_view(name, false, Some(a))),
        );
        agents
    };
    let outer_inbox_depth = || {
        fleet
            .agents
            .get(con_inbox::OUTER_INBOX)
            .map_or(0, |a| a.inbox_depth)
    };
    let check_view = |c: &con_projection::CheckState| CheckView {
        contract: c.contract.clone(),
        check: c.check.clone(),
        status: c.status,
        scope_agent: c.scope_agent.clone(),
        detail: c.detail.clone(),
        seq: c.seq,
    };
    let alert_views = || -> Vec<con_protocol::AlertView> {
        fleet
            .alerts
            .values()
            .map(|a| con_protocol::AlertView {
                contract: a.contract.clone(),
                check: a.check.clone(),
                scope_agent: a.scope_agent.clone(),
                message: a.message.clone(),
                since_seq: a.since_seq,
                seq: a.seq,
            })
            .collect()
    };
    let problems = problems(shared, identity, sees_fleet, &fleet);
    let view = match identity {
        Identity::Agent { .. } if sees_fleet => StatusView {
            view_version: STATUS_VIEW_VERSION,
            caller,
            log: None,
            recording: recording.clone(),
            journal_mirror: None,
            outer_inbox_depth: Some(outer_inbox_depth()),
            agents: fleet_rows(),
            checks: fleet
                .checks
                .values()
                .filter(|c| {
                    !matches!(
                        c.status,
                        con_event::payloads::CheckStatus::Pass
                            | con_event::payloads::CheckStatus::Skipped
                    )
                })
                .map(|c| CheckView {
                    // A check's output may quote what it read, an agent's
                    // files included: which check fails is the fleet's
                    // business, what it saw is not.
                    detail: String::new(),
                    ..check_view(c)
                })
                .collect(),
            alerts: alert_views(),
            problems,
        },
        Identity::Agent { name, .. } => StatusView {
            view_version: STATUS_VIEW_VERSION,
            caller,
            log: None,
            recording: recording.clone(),
            journal_mirror: None,
            outer_inbox_depth: None,
            agents: vec![agent_view(name, true, fleet.agents.get(name))],
            checks: Vec::new(),
            alerts: Vec::new(),
            problems,
        },
        Identity::Operator { .. } => {
            let head = shared.store.head();
            StatusView {
                view_version: STATUS_VIEW_VERSION,
                caller,
                log: Some(LogPosition {
                    log_id: shared.store.log_id().unwrap_or_default(),
                    head_seq: head.seq,
                    head_hash: head.hash,
                }),
                recording,
                journal_mirror: Some(match shared.mirror.health() {
                    con_journal::MirrorHealth::Healthy => MirrorView {
                        state: MirrorState::Healthy,
                        first_unmirrored_seq: None,
                        reason: None,
                        dropped: 0,
                    },
                    con_journal::MirrorHealth::Degraded {
                        first_unmirrored_seq,
                        reason,
                        dropped,
                    } => MirrorView {
                        state: MirrorState::Degraded,
                        first_unmirrored_seq: Some(first_unmirrored_seq),
                        reason: Some(reason),
                        dropped,
                    },
                }),
                outer_inbox_depth: Some(outer_inbox_depth()),
                agents: fleet_rows(),
                checks: fleet.checks.values().map(check_view).collect(),
                alerts: alert_views(),
                problems,
            }
        }
    };
    // A view too large for one frame is an error the operator sees, never
    // a silently emptied fleet.
    send(wr, &Response::Status(view)).await
}

/// The `.task` files directly in `inbox` and when the oldest of them last
/// changed (its ctime: a rename into the inbox sets it), if there are any.
fn waiting_tasks(inbox: &std::path::Path) -> Option<(usize, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut count = 0;
    let mut oldest: Option<std::time::SystemTime> = None;
    for entry in std::fs::read_dir(inbox).ok()?.flatten() {
        if !con_inbox::is_task_name(std::path::Path::new(&entry.file_name())) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
        count += 1;
        oldest = Some(oldest.map_or(changed, |o| o.min(changed)));
    }
    oldest.map(|o| (count, o))
}

/// What is wrong now, as `identity` may see it (see
/// [`con_protocol::StatusView::problems`]): from the gateway's
/// configuration (no model calls, budget spent) and the fleet status (the
/// last session of each agent, failing checks, failed tasks still in
/// `failed/`). Details (what a run, a provider or a check wrote) go to
/// operators, and to an agent about itself.
fn problems(
    shared: &Shared,
    identity: &Identity,
    sees_fleet: bool,
    fleet: &con_projection::FleetStatus,
) -> Vec<ProblemView> {
    let me = identity.agent();
    let operator = me.is_none();
    let visible = |agent: Option<&str>| sees_fleet || (agent.is_some() && agent == me);
    let detail = |agent: Option<&str>, text: &str| {
        if operator || (agent.is_some() && agent == me) {
            text.to_owned()
        } else {
            String::new()
        }
    };
    let mut out = Vec::new();
    let configured = shared.agents();
    if let Some(gateway) = &shared.gateway {
        let config = gateway.config();
        for (agent, route) in &config.routes {
            if !configured.contains(agent) || !visible(Some(agent)) {
                continue;
            }
            let (kind, why) = match (&route.unusable, gateway.budget_spent(fleet, agent)) {
                (Some(why), _) => (ProblemKind::NoModelCalls, why.clone()),
                (None, Some(why)) => (
                    ProblemKind::BudgetSpent,
                    format!("{why}: no model calls until the next UTC day or a reload raises it"),
                ),
                (None, None) => continue,
            };
            out.push(ProblemView {
                kind,
                agent: Some(agent.clone()),
                message: format!("agent {agent} cannot make model calls: {why}"),
                detail: String::new(),
                seq: None,
                task: None,
                session: None,
            });
        }
    }
    for (agent, status) in &fleet.agents {
        let Some(end) = &status.last_end else {
            continue;
        };
        if matches!(end.outcome, Outcome::Ok | Outcome::SetAside) || !visible(Some(agent)) {
            continue;
        }
        out.push(ProblemView {
            kind: ProblemKind::SessionEndedEarly,
            agent: Some(agent.clone()),
            message: format!(
                "agent {agent}'s last session ended early: {}",
                end.outcome.as_str()
            ),
            detail: detail(Some(agent), &end.detail),
            seq: Some(end.seq),
            task: end.task.clone(),
            session: end.session,
        });
    }
    for check in fleet.checks.values() {
        let failing = !matches!(check.status, CheckStatus::Pass | CheckStatus::Skipped);
        if !failing || !(operator || sees_fleet) {
            continue;
        }
        out.push(ProblemView {
            kind: ProblemKind::CheckFailing,
            agent: check.scope_agent.clone(),
            message: format!(
                "contract {} check {}: {}",
                check.contract,
                check.check,
                check.status.as_str()
            ),
            // A check's output may quote what it read: operators only.
            detail: if operator {
                check.detail.clone()
            } else {
                String::new()
            },
            seq: Some(check.seq),
            task: None,
            session: None,
        });
    }
    for (agent, status) in &fleet.agents {
        if !configured.contains(agent)
            || !visible(Some(agent))
            || status.condition != AgentCondition::Active
            || status.running_sessions > 0
            || status.inbox_depth == 0
        {
            continue;
        }
        let Some((waiting, oldest)) = waiting_tasks(&shared.config.layout.agent_inbox(agent))
        else {
            continue;
        };
        let Ok(waited) = oldest.elapsed() else {
            continue;
        };
        if waited < shared.config.stalled_after {
            continue;
        }
        let hint = match &shared.config.supervisor {
            Some(s) if s.start_runs => "the daemon starts its runs: see its log",
            _ => "its runs are started by systemd: `systemctl status con-agent@<agent>.path`",
        };
        out.push(ProblemView {
            kind: ProblemKind::TasksStalled,
            agent: Some(agent.clone()),
            message: format!(
                "agent {agent} has {waiting} task(s) waiting, the oldest for {} min, and no run \
                 is taking them ({})",
                waited.as_secs() / 60,
                hint.replace("<agent>", agent)
            ),
            detail: String::new(),
            seq: None,
            task: None,
            session: None,
        });
    }
    for (seq, failed) in &fleet.failed_tasks {
        if !visible(Some(&failed.agent)) {
            continue;
        }
        // Still where it was put: nobody has dealt with it yet. (Only a
        // path in the agent's own failed/ is looked at: the path is the
        // run's word.)
        if !crate::failed::in_failed_dir(&shared.config.layout, failed)
            || std::fs::symlink_metadata(&failed.path).is_err()
        {
            continue;
        }
        out.push(ProblemView {
            kind: ProblemKind::TaskFailed,
            agent: Some(failed.agent.clone()),
            message: format!(
                "a task of agent {} was set aside in {} ({})",
                failed.agent,
                failed.path,
                match failed.escalated {
                    Some(s) => format!("escalated, seq {s}"),
                    None => "not escalated".to_owned(),
                }
            ),
            detail: detail(Some(&failed.agent), &failed.reason),
            seq: Some(*seq),
            task: failed.task.clone(),
            session: failed.session,
        });
    }
    out
}
