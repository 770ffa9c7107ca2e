//! The protocol spoken on the daemon's Unix socket.
//!
//! A frame is `len: u32 (big-endian) ‖ version: u8 ‖ body`, where `len`
//! counts the version byte and the body, and the body is a [`Request`] or
//! [`Response`] in con's frozen codec. A frame whose declared length is over
//! [`MAX_FRAME_BYTES`] is refused before its body is read; one of another
//! version is refused before its body is decoded. Nothing in a request names its sender: the daemon takes identity
//! from the kernel (`SO_PEERCRED`).

mod client;
mod ledger;
mod status;

use con_event::{Digest, SessionId};
use serde::{Deserialize, Serialize};

pub use client::{BLOB_PIPELINE, Client, ClientError};
pub use ledger::{LEDGER_TSV_HEADER, LedgerEntry, LedgerQuery};
pub use status::{
    AgentView, AlertView, Caller, CallerRole, CheckView, LogPosition, MirrorState, MirrorView,
    ProblemKind, ProblemView, RecordingState, RecordingView, STATUS_VIEW_VERSION, StatusView,
};

/// Protocol version carried by every frame. Version 2 added blob requests,
/// task filters, agent-condition commands and the typed status view; a
/// version-1 client gets a clear "protocol version 1 is not supported" error.
pub const PROTOCOL_VERSION: u8 = 2;

/// Largest frame accepted (task contents and tool outputs travel as
/// attachments, so this bounds them too).
pub const MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

/// An event as a client submits it. The daemon adds the actor (from the
/// kernel), seq, id, time and chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEvent {
    /// Session, if any.
    pub session: Option<SessionId>,
    /// Task, if any.
    pub task: Option<String>,
    /// Causing event's seq, if any.
    pub causation: Option<u64>,
    /// Kind id.
    pub kind: u16,
    /// Kind version the payload is encoded at.
    pub kind_version: u16,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Contents referenced by the payload's blob references.
    pub attachments: Vec<Vec<u8>>,
}

impl ClientEvent {
    /// `payload` encoded at its kind's current version, outside any session
    /// or task, with the contents its blob references point to; callers set
    /// `session`, `task` and `causation` where they have them.
    pub fn new(
        payload: &con_event::Payload,
        attachments: Vec<Vec<u8>>,
    ) -> Result<Self, con_event::EncodeError> {
        let spec = payload.spec();
        Ok(Self {
            session: None,
            task: None,
            causation: None,
            kind: spec.id,
            kind_version: spec.version,
            payload: payload.encode()?,
            attachments,
        })
    }
}

/// Which events a query returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// First seq (1 for everything).
    pub from_seq: u64,
    /// Only events by or about this agent.
    pub agent: Option<String>,
    /// Only this kind id.
    pub kind: Option<u16>,
    /// Only this session.
    pub session: Option<SessionId>,
    /// Only events of this task.
    pub task: Option<String>,
    /// At most this many events.
    pub limit: Option<u64>,
    /// Keep the stream open and send new events as they are committed.
    pub follow: bool,
}

/// A model call an agent asks the daemon (the LLM gateway) to make. The
/// daemon picks provider, model and key from config: the agent cannot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmCall {
    /// The agent's open session (one it started).
    pub session: SessionId,
    /// The task being worked on, if any.
    pub task: Option<String>,
    /// Tool-loop iteration (1 for the first call).
    pub iteration: u32,
    /// `con_llm::ChatRequest` as JSON; recorded verbatim in `llm.request`.
    pub request: Vec<u8>,
}

/// The daemon's answer to an [`LlmCall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmAnswer {
    /// Seq of the recorded `llm.request`.
    pub request_seq: u64,
    /// Seq of the recorded `llm.response`.
    pub response_seq: u64,
    /// `con_llm::ChatReply` as JSON; recorded verbatim in `llm.response`.
    pub reply: Vec<u8>,
}

/// Part of a blob, by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// SHA-256 of the content.
    pub digest: Digest,
    /// First byte wanted.
    pub offset: u64,
    /// At most this many bytes (the daemon caps it at [`BLOB_CHUNK_BYTES`]).
    pub limit: u32,
}

/// Largest blob chunk in one answer: well inside a frame.
pub const BLOB_CHUNK_BYTES: u32 = 4 * 1024 * 1024;

/// Part of a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChunk {
    /// Length of the whole blob.
    pub total_len: u64,
    /// Offset of `bytes` in it.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// An operator's order about one agent's administrative condition; the
/// daemon records it as `agent.state` (a kind no client may append itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetCondition {
    /// The agent.
    pub agent: String,
    /// The new condition.
    pub condition: con_event::payloads::AgentCondition,
    /// Why (recorded).
    pub reason: String,
}

/// What an operator orders about one agent ([`Request::Agent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentAction {
    /// Stop it (every process of its user) and mark it halted.
    Halt,
    /// Stop it, take every other agent's write access to its inbox away
    /// and mark it quarantined.
    Quarantine,
    /// End its running sessions and every process of its user; its
    /// condition stays.
    Kill,
    /// Restore exactly what a halt or quarantine removed and mark it active.
    Resume,
}

impl AgentAction {
    /// The `enforcement.action` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAction::Halt => "halt",
            AgentAction::Quarantine => "quarantine",
            AgentAction::Kill => "kill_session",
            AgentAction::Resume => "resume",
        }
    }
}

/// An operator's order about one agent: recorded as `enforcement.action`
/// (the operator as actor) before the daemon acts, `enforcement.done`
/// after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOrder {
    /// The agent.
    pub agent: String,
    /// What to do.
    pub action: AgentAction,
}

/// What an enforcement did ([`Response::Enforced`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcedView {
    /// Seq of its `enforcement.action`.
    pub action_seq: u64,
    /// Seq of its `enforcement.done`.
    pub done_seq: u64,
    /// The `enforcement.done` as recorded.
    pub done: con_event::payloads::EnforcementDone,
}

/// The result of walking the log's hash chain ([`Request::Verify`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyView {
    /// Events that verified.
    pub events: u64,
    /// The last seq that verified (0 if none).
    pub head_seq: u64,
    /// Its chain hash.
    pub head_hash: Digest,
    /// The first seq that does not, if the chain is broken.
    pub first_bad_seq: Option<u64>,
    /// What is wrong with it.
    pub reason: Option<String>,
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Append one event; answered with [`Response::Appended`] once durable.
    Append(ClientEvent),
    /// Stream events; answered with [`Response::Event`]s then
    /// [`Response::End`] (never ends when following).
    Query(Query),
    /// Current state; answered with [`Response::Status`].
    Status,
    /// A model call through the daemon; answered with [`Response::Llm`]
    /// (or an error: [`ErrorCode::OverBudget`], [`ErrorCode::Provider`]).
    /// Agents only.
    Llm(LlmCall),
    /// Part of a blob; answered with [`Response::Blob`]. Operators may read
    /// any blob; an agent only blobs referenced by events it may read.
    Blob(BlobRequest),
    /// Record an agent's new condition; answered with
    /// [`Response::Appended`]. Operators only.
    SetCondition(SetCondition),
    /// Run con's built-in checks of itself now and record each result;
    /// answered with [`Response::Checks`]. Operators only.
    RunChecks,
    /// Walk the whole log's hash chain in the daemon (which owns the log);
    /// answered with [`Response::Verified`]. Operators only.
    Verify,
    /// Evaluate contracts now (the contracts directory's and the built-in
    /// checks) and record each result; answered with
    /// [`Response::CheckRuns`] (or [`ErrorCode::NotFound`] naming an
    /// unknown id). Operators only.
    RunContracts(RunContracts),
    /// Copy the live log, as of its durable head, into a new database
    /// directory (an absolute path that must not exist); answered with
    /// [`Response::BackedUp`]. Root only: the daemon writes where it is told.
    Backup(String),
    /// Halt, quarantine, kill or resume an agent; answered with
    /// [`Response::Enforced`] once done and recorded. Operators only.
    Agent(AgentOrder),
    /// The ledger of finished sessions; answered with
    /// [`Response::Ledger`] chunks, then [`Response::End`]. Operators, and
    /// agents the config lets see the fleet (officers; operators where
    /// `[fleet_view]` says so); refused for any other agent.
    Ledger(LedgerQuery),
    /// Route the outer inbox now (the daemon also does on every arrival and
    /// every second); answered with [`Response::Routed`]. Operators only.
    RouteInbox,
    /// Store a contract file in the contracts directory (parsed first, the
    /// same way it is evaluated); answered with [`Response::ContractAdded`]
    /// once stored and recorded (`contract.added`). Root and `trusted`
    /// operators, and agents the config lets add contracts (the sysadmin
    /// role, tier operator or above); refused for any other agent.
    AddContract(AddContract),
    /// Several blob parts at once (at most [`MAX_BLOBS_PER_REQUEST`]);
    /// answered with one [`Response::Blob`] or [`Response::Error`] per
    /// request, in order, each as [`Request::Blob`] would be. One request
    /// and one lookup on the daemon's side for a replayed session's
    /// hundreds of contents, instead of one each.
    Blobs(Vec<BlobRequest>),
}

/// Most blob parts one [`Request::Blobs`] may ask for.
pub const MAX_BLOBS_PER_REQUEST: usize = 64;

/// What one routing pass of the outer inbox did ([`Request::RouteInbox`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// The agent outer-inbox tasks go to (the concierge); `None`: none is
    /// configured, and nothing is routed.
    pub router: Option<String>,
    /// The tasks moved, in name order.
    pub routed: Vec<RoutedTask>,
    /// Tasks that could not be moved, one line each (the task stays).
    pub failed: Vec<String>,
    /// Tasks in the outer inbox whose arrival is not recorded yet: they are
    /// routed once it is (nothing is acted on before it is in the log).
    pub waiting: Vec<String>,
}

/// One task a routing pass moved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedTask {
    /// The task's file name.
    pub name: String,
    /// The agent it went to.
    pub to: String,
    /// Where it is now.
    pub path: String,
    /// Seq of its `task.routed`.
    pub seq: u64,
}

/// A contract file for [`Request::AddContract`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddContract {
    /// The file's name as the caller gave it: errors name it. Where it is
    /// stored comes from the contract's `id`, never from this.
    pub file: String,
    /// The file's content.
    pub content: Vec<u8>,
}

/// What [`Request::AddContract`] stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractAddedView {
    /// The contract's id.
    pub contract: String,
    /// Where it is stored.
    pub path: String,
    /// Whose it is: its checks run as this uid.
    pub author_uid: u32,
    /// Whether it replaced a file of the same name.
    pub replaced: bool,
    /// Seq of its `contract.added`.
    pub seq: u64,
}

/// Which contracts [`Request::RunContracts`] evaluates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunContracts {
    /// Contract ids; empty: all of them.
    pub ids: Vec<String>,
    /// Only detective contracts (what the healthcheck runs); preventive
    /// ones are records of what the OS enforces.
    pub detective_only: bool,
}

/// One check evaluated on request, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    /// Contract id (a file's name if the file could not be read far enough
    /// to give one).
    pub contract: String,
    /// Check name (`load` for a contract file that cannot be used).
    pub check: String,
    /// Agent the contract is scoped to.
    pub scope_agent: Option<String>,
    /// Outcome.
    pub status: con_event::payloads::CheckStatus,
    /// Output or reason, as recorded.
    pub detail: String,
    /// How long it ran.
    pub duration_ms: u64,
    /// Seq of its `contract.result`.
    pub seq: u64,
}

/// Error classes, so clients can react without parsing messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame could not be decoded; the connection is closed.
    BadFrame,
    /// The frame exceeds [`MAX_FRAME_BYTES`]; the connection is closed.
    TooLarge,
    /// The caller's identity may not do this.
    Forbidden,
    /// The request was understood but refused (bad payload, unknown kind…).
    Rejected,
    /// The daemon cannot serve it now (shutting down, log failed).
    Unavailable,
    /// A model call was refused before it was made: the agent's or its
    /// tier's daily budget is spent.
    OverBudget,
    /// The model provider failed (after retries); the failure is recorded.
    Provider,
    /// What was asked for does not exist (e.g. an unknown blob).
    NotFound,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The event is durable at this position.
    Appended {
        /// Its seq.
        seq: u64,
        /// Its chain hash.
        hash: Digest,
    },
    /// One stored event (`record ‖ hash`; decode with `Event::from_stored`).
    Event(Vec<u8>),
    /// End of a query's results.
    End {
        /// The durable head when the query finished.
        head_seq: u64,
    },
    /// Answer to [`Request::Status`].
    Status(StatusView),
    /// The request failed.
    Error {
        /// Class.
        code: ErrorCode,
        /// One-line explanation.
        message: String,
    },
    /// Answer to [`Request::Llm`] (after `Error`: variant indexes of a
    /// protocol version never move).
    Llm(LlmAnswer),
    /// Answer to [`Request::Blob`] (and to each of [`Request::Blobs`]).
    Blob(BlobChunk),
    /// Answer to [`Request::RunChecks`]: each result as recorded.
    Checks(Vec<CheckView>),
    /// Answer to [`Request::Verify`].
    Verified(VerifyView),
    /// Answer to [`Request::RunContracts`]: each result as recorded.
    CheckRuns(Vec<CheckRun>),
    /// Answer to [`Request::Backup`]: the copy's head.
    BackedUp {
        /// Its last seq.
        head_seq: u64,
        /// That record's chain hash.
        head_hash: Digest,
    },
    /// Answer to [`Request::Agent`]: what was done, as recorded.
    Enforced(EnforcedView),
    /// Part of the answer to [`Request::Ledger`], in the order the
    /// sessions ended; [`Response::End`] follows the last part.
    Ledger(Vec<LedgerEntry>),
    /// Answer to [`Request::RouteInbox`].
    Routed(RouteView),
    /// Answer to [`Request::AddContract`].
    ContractAdded(ContractAddedView),
}

/// A frame that cannot be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Declared length over [`MAX_FRAME_BYTES`] (or zero).
    #[error("frame length {0} is outside 1..={MAX_FRAME_BYTES}")]
    BadLength(u32),
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this is {PROTOCOL_VERSION})")]
    BadVersion(u8),
    /// The body does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message is too large to send.
    #[error("message too large to send: {0}")]
    TooLarge(String),
}

/// Encodes one message as a complete frame.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = con_event::codec::encode_with_limit(message, u64::from(MAX_FRAME_BYTES) - 1)
        .map_err(|e| FrameError::TooLarge(e.to_string()))?;
    let len = u32::try_from(body.len() + 1).map_err(|e| FrameError::TooLarge(e.to_string()))?;
    let mut frame = Vec::with_capacity(LEN_BYTES + 1 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Validates a length prefix; returns the number of bytes that follow it.
pub fn check_len(prefix: [u8; LEN_BYTES]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(FrameError::BadLength(len));
    }
    usize::try_from(len).map_err(|_| FrameError::BadLength(len))
}

/// Decodes what follows a valid length prefix: version byte and body.
pub fn decode_body<T: serde::de::DeserializeOwned>(rest: &[u8]) -> Result<T, FrameError> {
    match rest.split_first() {
        Some((&PROTOCOL_VERSION, body)) => {
            con_event::codec::decode_with_limit("frame", body, u64::from(MAX_FRAME_BYTES))
                .map_err(|e| FrameError::Malformed(e.to_string()))
        }
        Some((&v, _)) => Err(FrameError::BadVersion(v)),
        None => Err(FrameError::Malformed("empty frame".into())),
    }
}

/// Decodes the first complete frame in `buf`: `Ok(None)` if more bytes are
/// needed, else the message and the bytes it used.
pub fn decode_frame<T: serde::de::DeserializeOwned>(
    buf: &[u8],
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let mut p = [0u8; LEN_BYTES];
    p.copy_from_slice(prefix);
    let len = check_len(p)?;
    let Some(rest) = buf.get(LEN_BYTES..LEN_BYTES + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(rest)?, LEN_BYTES + len)))
}
