//! One connection: identify the peer, then answer requests until EOF.

use std::sync::Arc;

use con_event::{Actor, Event, NewEvent, Payload};
use con_projection::FleetStatus;
use con_protocol::{
    ClientEvent, ErrorCode, FrameError, LEN_BYTES, Query, Request, Response, StatusReport,
    check_len, decode_body, encode_frame,
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

/// Reads one request: `Ok(None)` on a clean end of stream.
async fn read_request(rd: &mut OwnedReadHalf) -> Result<Option<Request>, FrameError> {
    let mut prefix = [0u8; LEN_BYTES];
    match rd.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Malformed(e.to_string())),
    }
    let len = check_len(prefix)?;
    let mut rest = vec![0u8; len];
    rd.read_exact(&mut rest)
        .await
        .map_err(|e| FrameError::Malformed(format!("truncated frame: {e}")))?;
    decode_body(&rest).map(Some)
}

pub(crate) async fn serve(shared: Arc<Shared>, stream: UnixStream) {
    let identity = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))
        .and_then(|cred| {
            identify(
                cred.uid(),
                &shared.config.user_prefix,
                &shared.config.trusted_group,
            )
        });
    let (mut rd, mut wr) = stream.into_split();
    let identity = match identity {
        Ok(identity) => identity,
        Err(reason) => {
            let _ = refuse(&mut wr, ErrorCode::Forbidden, reason).await;
            return;
        }
    };
    let mut stopping = shared.stopping.clone();
    loop {
        let request = tokio::select! {
            r = read_request(&mut rd) => r,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let result = match request {
            Ok(None) => return,
            Ok(Some(request)) => handle(&shared, &identity, request, &mut wr).await,
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
    shared: &Shared,
    identity: &Identity,
    request: Request,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    match request {
        Request::Append(event) => append(shared, identity, event, wr).await,
        Request::Query(query) => self::query(shared, identity, query, wr).await,
        Request::Status => status(shared, identity, wr).await,
    }
}

async fn append(
    shared: &Shared,
    identity: &Identity,
    event: ClientEvent,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    let payload = match Payload::decode(event.kind, event.kind_version, &event.payload) {
        Ok(p) => p,
        Err(e) => return refuse(wr, ErrorCode::Rejected, format!("payload: {e}")).await,
    };
    if let Err(reason) = may_append(identity, &payload) {
        return refuse(wr, ErrorCode::Forbidden, format!("{identity}: {reason}")).await;
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
    match shared.appender.submit(new).wait_async().await {
        Ok(a) => {
            send(
                wr,
                &Response::Appended {
                    seq: a.seq,
                    hash: a.hash,
                },
            )
            .await
        }
        Err(AppendError::Rejected(reason)) => refuse(wr, ErrorCode::Rejected, reason).await,
        Err(e) => refuse(wr, ErrorCode::Unavailable, e.to_string()).await,
    }
}

/// Up to `QUERY_CHUNK` matching durable events from `from`, as stored bytes.
fn next_chunk(shared: &Shared, query: &Query, from: u64) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let store = &shared.store;
    let matches = |e: &Event| query.kind.is_none_or(|k| e.envelope.kind == k);
    let events: Box<dyn Iterator<Item = Result<Event, con_store::StoreError>>> =
        match (&query.session, &query.agent) {
            (Some(s), _) => Box::new(store.session_events(s, from).map_err(|e| e.to_string())?),
            (None, Some(a)) => Box::new(store.agent_events(a, from).map_err(|e| e.to_string())?),
            (None, None) => Box::new(store.events_from(from)),
        };
    let mut out = Vec::new();
    for event in events {
        let event = event.map_err(|e| e.to_string())?;
        if query.agent.as_deref().is_some_and(|a| {
            event.envelope.actor.agent.as_deref() != Some(a)
                && event.payload.subject_agent() != Some(a)
        }) {
            continue;
        }
        if matches(&event) {
            let seq = event.seq();
            if let Some(raw) = store.raw(seq).map_err(|e| e.to_string())? {
                out.push((seq, raw));
            }
            if out.len() >= QUERY_CHUNK {
                break;
            }
        }
    }
    Ok(out)
}

async fn query(
    shared: &Shared,
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
    let mut from = query.from_seq.max(1);
    let mut remaining = query.limit.unwrap_or(u64::MAX);
    let mut head = shared.head.clone();
    let mut stopping = shared.stopping.clone();
    loop {
        let chunk = match next_chunk(shared, &query, from) {
            Ok(c) => c,
            Err(e) => return refuse(wr, ErrorCode::Unavailable, e).await,
        };
        if chunk.is_empty() {
            if !query.follow || remaining == 0 {
                return send(
                    wr,
                    &Response::End {
                        head_seq: shared.store.head().seq,
                    },
                )
                .await;
            }
            // Wait for the next commit (or shutdown).
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                _ = stopping.wait_for(|s| *s) => return Ok(()),
            }
            continue;
        }
        for (seq, raw) in chunk {
            if remaining == 0 {
                break;
            }
            send(wr, &Response::Event(raw)).await?;
            remaining -= 1;
            from = seq + 1;
        }
    }
}

async fn status(
    shared: &Shared,
    identity: &Identity,
    wr: &mut OwnedWriteHalf,
) -> Result<(), Closed> {
    let head = shared.store.head();
    // The fleet view is for operators; an agent learns only who it is.
    let fleet = match identity {
        Identity::Operator { .. } => match shared.store.project::<FleetStatus>() {
            Ok(f) => con_event::codec::encode_with_limit(
                &f,
                u64::from(con_protocol::MAX_FRAME_BYTES) / 2,
            )
            .unwrap_or_default(),
            Err(e) => return refuse(wr, ErrorCode::Unavailable, e.to_string()).await,
        },
        Identity::Agent { .. } => Vec::new(),
    };
    let report = StatusReport {
        identity: identity.to_string(),
        head_seq: head.seq,
        head_hash: head.hash,
        log_id: shared.store.log_id().unwrap_or_default(),
        fleet,
        journal_mirror: match shared.mirror.health() {
            con_journal::MirrorHealth::Healthy => "healthy".into(),
            con_journal::MirrorHealth::Degraded {
                first_unmirrored_seq,
                reason,
                dropped,
            } => format!(
                "degraded since seq {first_unmirrored_seq} ({dropped} entries lost): {reason}"
            ),
        },
    };
    send(wr, &Response::Status(report)).await
}
