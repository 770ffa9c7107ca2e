//! A blocking client for the CLI and agent runs.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::{
    AgentOrder, BLOB_CHUNK_BYTES, BlobChunk, BlobRequest, CheckRun, CheckView, ClientEvent,
    EnforcedView, ErrorCode, FrameError, LEN_BYTES, LedgerEntry, LedgerQuery, LlmAnswer, LlmCall,
    Query, Request, Response, RouteView, RunContracts, SetCondition, StatusView, VerifyView,
    check_len, decode_body, encode_frame,
};
use con_event::Digest;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon is not reachable (no daemon: no audit, no action).
    #[error("cannot reach the con daemon at {path}: {cause} (is `con daemon` running?)")]
    Connect {
        /// Socket path.
        path: String,
        /// OS error.
        cause: std::io::Error,
    },
    /// The connection failed mid-call.
    #[error("connection to the con daemon failed: {0}")]
    Io(std::io::Error),
    /// The daemon did not answer (or take the request) within the
    /// connection's timeout.
    #[error("the con daemon at {path} did not answer within {} s", .after.as_secs_f64())]
    NoAnswer {
        /// Socket path.
        path: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// A frame could not be sent or understood.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The daemon refused the request.
    #[error("the con daemon refused: {message}")]
    Refused {
        /// Class.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The daemon answered something that does not fit the request.
    #[error("unexpected answer from the con daemon")]
    Unexpected,
}

/// Blob requests [`Client::blobs`] keeps in flight at once: their frames
/// (about 60 bytes each) fit a socket buffer together, so sending a window
/// never waits for answers that are not read yet.
pub const BLOB_PIPELINE: usize = 64;

/// A connection to the daemon.
pub struct Client {
    stream: UnixStream,
    /// Answers are read through a buffer: a query's answer is many small
    /// frames, two reads each without one.
    reader: BufReader<UnixStream>,
    path: String,
    timeout: Option<std::time::Duration>,
}

impl Client {
    /// Connects to the daemon's socket.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let connect_error = |cause| ClientError::Connect {
            path: path.display().to_string(),
            cause,
        };
        let stream = UnixStream::connect(path).map_err(connect_error)?;
        // The same socket: its timeouts are the stream's.
        let reader = BufReader::new(stream.try_clone().map_err(connect_error)?);
        Ok(Self {
            stream,
            reader,
            path: path.display().to_string(),
            timeout: None,
        })
    }

    /// Connects with `timeout` on every send and every answer: a daemon
    /// that accepts but never answers is reported, not waited on forever.
    pub fn connect_with_timeout(
        path: &Path,
        timeout: std::time::Duration,
    ) -> Result<Self, ClientError> {
        let mut client = Self::connect(path)?;
        client.set_timeout(Some(timeout))?;
        Ok(client)
    }

    /// An IO error, or the timeout it stands for.
    fn io(&self, e: std::io::Error) -> ClientError {
        match (e.kind(), self.timeout) {
            (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut, Some(after)) => {
                ClientError::NoAnswer {
                    path: self.path.clone(),
                    after,
                }
            }
            _ => ClientError::Io(e),
        }
    }

    fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let frame = encode_frame(request)?;
        match self.stream.write_all(&frame) {
            Ok(()) => Ok(()),
            // The daemon may have refused the connection (and closed it)
            // before reading anything: its reason is waiting to be read.
            Err(e) => match self.receive() {
                Err(refused @ ClientError::Refused { .. }) => Err(refused),
                _ => Err(self.io(e)),
            },
        }
    }

    /// Reads one response.
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        let mut prefix = [0u8; LEN_BYTES];
        if let Err(e) = self.reader.read_exact(&mut prefix) {
            return Err(self.io(e));
        }
        let len = check_len(prefix)?;
        let mut rest = vec![0u8; len];
        if let Err(e) = self.reader.read_exact(&mut rest) {
            return Err(self.io(e));
        }
        match decode_body(&rest)? {
            Response::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Ok(other),
        }
    }

    /// Appends an event; returns once it is durable.
    pub fn append(&mut self, event: ClientEvent) -> Result<(u64, Digest), ClientError> {
        self.send(&Request::Append(event))?;
        match self.receive()? {
            Response::Appended { seq, hash } => Ok((seq, hash)),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Asks the daemon to make a model call; returns once the call and its
    /// answer are recorded.
    pub fn llm(&mut self, call: LlmCall) -> Result<LlmAnswer, ClientError> {
        self.send(&Request::Llm(call))?;
        match self.receive()? {
            Response::Llm(answer) => Ok(answer),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Bounds how long any one answer may take (`None`: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<std::time::Duration>) -> Result<(), ClientError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(ClientError::Io)?;
        self.stream
            .set_write_timeout(timeout)
            .map_err(ClientError::Io)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Current status.
    pub fn status(&mut self) -> Result<StatusView, ClientError> {
        self.send(&Request::Status)?;
        match self.receive()? {
            Response::Status(view) => Ok(view),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The whole content of a blob, fetched in chunks; checked against its
    /// digest.
    pub fn blob(&mut self, digest: Digest) -> Result<Vec<u8>, ClientError> {
        let first = self.blob_chunk(digest, 0)?;
        self.rest_of_blob(digest, first)
    }

    /// The whole contents of several blobs, each as [`Client::blob`] gives
    /// it, in the order of `digests`, with up to [`BLOB_PIPELINE`] requests
    /// in flight: one round trip per window of blobs rather than per blob
    /// (a replayed session has hundreds). A refusal (not found, not the
    /// caller's) is that blob's result and the connection goes on; any
    /// other failure ends the call.
    pub fn blobs(
        &mut self,
        digests: &[Digest],
    ) -> Result<Vec<Result<Vec<u8>, ClientError>>, ClientError> {
        let mut out = Vec::with_capacity(digests.len());
        let mut batched = true;
        for window in digests.chunks(BLOB_PIPELINE) {
            let firsts = match batched.then(|| self.first_chunks_batched(window)) {
                Some(Ok(firsts)) => firsts,
                // A daemon older than `Request::Blobs` refuses it as a bad
                // frame and closes the connection: connect again and ask
                // one blob at a time.
                Some(Err(ClientError::Refused {
                    code: ErrorCode::BadFrame,
                    ..
                })) if out.is_empty() => {
                    batched = false;
                    self.reconnect()?;
                    self.first_chunks_pipelined(window)?
                }
                Some(Err(e)) => return Err(e),
                None => self.first_chunks_pipelined(window)?,
            };
            // Answers to the whole window are read: the rest of a large
            // blob is asked for on a quiet connection.
            for (digest, first) in window.iter().zip(firsts) {
                out.push(match first {
                    Ok(chunk) => match self.rest_of_blob(*digest, chunk) {
                        Err(refused @ ClientError::Refused { .. }) => Err(refused),
                        Err(ClientError::Unexpected) => Err(ClientError::Unexpected),
                        Err(e) => return Err(e),
                        Ok(bytes) => Ok(bytes),
                    },
                    Err(refused) => Err(refused),
                });
            }
        }
        Ok(out)
    }

    /// The first chunk of each of `window` (or its refusal), asked for in
    /// one [`Request::Blobs`].
    fn first_chunks_batched(
        &mut self,
        window: &[Digest],
    ) -> Result<Vec<Result<BlobChunk, ClientError>>, ClientError> {
        self.send(&Request::Blobs(
            window
                .iter()
                .map(|digest| BlobRequest {
                    digest: *digest,
                    offset: 0,
                    limit: BLOB_CHUNK_BYTES,
                })
                .collect(),
        ))?;
        self.first_chunks(window.len())
    }

    /// The first chunk of each of `window` (or its refusal), one
    /// [`Request::Blob`] each, all sent before the answers are read.
    fn first_chunks_pipelined(
        &mut self,
        window: &[Digest],
    ) -> Result<Vec<Result<BlobChunk, ClientError>>, ClientError> {
        let mut frames = Vec::new();
        for digest in window {
            frames.extend(encode_frame(&Request::Blob(BlobRequest {
                digest: *digest,
                offset: 0,
                limit: BLOB_CHUNK_BYTES,
            }))?);
        }
        if let Err(e) = self.stream.write_all(&frames) {
            return Err(self.io(e));
        }
        self.first_chunks(window.len())
    }

    /// `n` blob answers: a refusal (not found, not the caller's) is that
    /// blob's result and the connection goes on; anything else unexpected
    /// ends the call.
    fn first_chunks(
        &mut self,
        n: usize,
    ) -> Result<Vec<Result<BlobChunk, ClientError>>, ClientError> {
        let mut firsts = Vec::with_capacity(n);
        for i in 0..n {
            firsts.push(match self.receive() {
                Ok(Response::Blob(chunk)) => Ok(chunk),
                Ok(_) => return Err(ClientError::Unexpected),
                // The whole request refused (an old daemon's bad frame):
                // the caller's to handle.
                Err(
                    refused @ ClientError::Refused {
                        code: ErrorCode::BadFrame,
                        ..
                    },
                ) if i == 0 => return Err(refused),
                Err(refused @ ClientError::Refused { .. }) => Err(refused),
                Err(e) => return Err(e),
            });
        }
        Ok(firsts)
    }

    /// A new connection to the same socket, with the same timeout.
    fn reconnect(&mut self) -> Result<(), ClientError> {
        let timeout = self.timeout;
        *self = Self::connect(Path::new(&self.path))?;
        self.set_timeout(timeout)
    }

    /// One chunk of a blob from `offset`.
    fn blob_chunk(&mut self, digest: Digest, offset: u64) -> Result<BlobChunk, ClientError> {
        self.send(&Request::Blob(BlobRequest {
            digest,
            offset,
            limit: BLOB_CHUNK_BYTES,
        }))?;
        match self.receive()? {
            Response::Blob(chunk) => Ok(chunk),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The whole blob, given its first chunk: the rest fetched chunk by
    /// chunk, the whole checked against its digest.
    fn rest_of_blob(&mut self, digest: Digest, first: BlobChunk) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut chunk = first;
        loop {
            if chunk.offset != out.len() as u64
                || (chunk.bytes.is_empty() && chunk.total_len > chunk.offset)
            {
                return Err(ClientError::Unexpected);
            }
            out.extend_from_slice(&chunk.bytes);
            if out.len() as u64 >= chunk.total_len {
                break;
            }
            chunk = self.blob_chunk(digest, out.len() as u64)?;
        }
        if Digest::of(&out) != digest {
            return Err(ClientError::Unexpected);
        }
        Ok(out)
    }

    /// Has the daemon run its built-in checks now; each result is recorded
    /// before this returns (operators only).
    pub fn run_checks(&mut self) -> Result<Vec<CheckView>, ClientError> {
        self.send(&Request::RunChecks)?;
        match self.receive()? {
            Response::Checks(checks) => Ok(checks),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Hands the daemon a contract file to store in the contracts
    /// directory; its checks will run as the caller.
    pub fn add_contract(
        &mut self,
        contract: crate::AddContract,
    ) -> Result<crate::ContractAddedView, ClientError> {
        self.send(&Request::AddContract(contract))?;
        match self.receive()? {
            Response::ContractAdded(view) => Ok(view),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Has the daemon walk the log's hash chain (operators only): the log
    /// has one owner, so a live log is verified where it is.
    pub fn verify(&mut self) -> Result<VerifyView, ClientError> {
        self.send(&Request::Verify)?;
        match self.receive()? {
            Response::Verified(view) => Ok(view),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Has the daemon evaluate contracts now; each result is recorded
    /// before this returns (operators only).
    pub fn run_contracts(&mut self, which: RunContracts) -> Result<Vec<CheckRun>, ClientError> {
        self.send(&Request::RunContracts(which))?;
        match self.receive()? {
            Response::CheckRuns(runs) => Ok(runs),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Has the daemon copy its live log into the new directory `dir` (root
    /// only); returns the copy's head seq and hash.
    pub fn backup(&mut self, dir: &Path) -> Result<(u64, Digest), ClientError> {
        self.send(&Request::Backup(dir.display().to_string()))?;
        match self.receive()? {
            Response::BackedUp {
                head_seq,
                head_hash,
            } => Ok((head_seq, head_hash)),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Asks the daemon to record an agent's new condition (operators only).
    pub fn set_condition(&mut self, order: SetCondition) -> Result<(u64, Digest), ClientError> {
        self.send(&Request::SetCondition(order))?;
        match self.receive()? {
            Response::Appended { seq, hash } => Ok((seq, hash)),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Orders the daemon to halt, quarantine, kill or resume an agent
    /// (operators only); returns what it did, as recorded.
    pub fn agent_order(&mut self, order: AgentOrder) -> Result<EnforcedView, ClientError> {
        self.send(&Request::Agent(order))?;
        match self.receive()? {
            Response::Enforced(view) => Ok(view),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// Has the daemon route the outer inbox now (operators only); returns
    /// what it moved.
    pub fn route_inbox(&mut self) -> Result<RouteView, ClientError> {
        self.send(&Request::RouteInbox)?;
        match self.receive()? {
            Response::Routed(view) => Ok(view),
            _ => Err(ClientError::Unexpected),
        }
    }

    /// The ledger entries `query` selects, in the order the sessions ended.
    pub fn ledger(&mut self, query: LedgerQuery) -> Result<Vec<LedgerEntry>, ClientError> {
        self.send(&Request::Ledger(query))?;
        let mut out = Vec::new();
        loop {
            match self.receive()? {
                Response::Ledger(part) => out.extend(part),
                Response::End { .. } => return Ok(out),
                _ => return Err(ClientError::Unexpected),
            }
        }
    }

    /// Runs a query, calling `each` with every stored event; returns the head
    /// at the end (never returns while following, unless `each` says stop by
    /// returning `false`).
    pub fn query(
        &mut self,
        query: Query,
        mut each: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, ClientError> {
        self.send(&Request::Query(query))?;
        loop {
            match self.receive()? {
                Response::Event(bytes) => {
                    if !each(bytes) {
                        return Ok(0);
                    }
                }
                Response::End { head_seq } => return Ok(head_seq),
                _ => return Err(ClientError::Unexpected),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::{BlobChunk, decode_body};

    fn read_request(stream: &mut UnixStream) -> Option<Request> {
        let mut prefix = [0u8; LEN_BYTES];
        stream.read_exact(&mut prefix).ok()?;
        let mut rest = vec![0u8; check_len(prefix).unwrap()];
        stream.read_exact(&mut rest).unwrap();
        Some(decode_body(&rest).unwrap_or(Request::Status))
    }

    /// Against a daemon from before `Request::Blobs` (it refuses the
    /// unknown request as a bad frame and closes), `blobs` connects again
    /// and asks one blob at a time.
    #[test]
    fn blobs_fall_back_to_one_request_each_with_an_older_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("con.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let contents: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let digests: Vec<Digest> = contents.iter().map(|c| Digest::of(c)).collect();
        let served = contents.clone();
        let old_daemon = std::thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            assert!(matches!(read_request(&mut first), Some(Request::Blobs(_))));
            first
                .write_all(
                    &encode_frame(&Response::Error {
                        code: ErrorCode::BadFrame,
                        message: "malformed frame".into(),
                    })
                    .unwrap(),
                )
                .unwrap();
            drop(first);
            let (mut second, _) = listener.accept().unwrap();
            let mut asked = 0;
            while let Some(Request::Blob(r)) = read_request(&mut second) {
                asked += 1;
                let content = served.iter().find(|c| Digest::of(c) == r.digest).unwrap();
                let chunk = BlobChunk {
                    total_len: content.len() as u64,
                    offset: 0,
                    bytes: content.clone(),
                };
                second
                    .write_all(&encode_frame(&Response::Blob(chunk)).unwrap())
                    .unwrap();
            }
            asked
        });
        let mut client =
            Client::connect_with_timeout(&socket, std::time::Duration::from_secs(5)).unwrap();
        let answers = client.blobs(&digests).unwrap();
        let answers: Vec<Vec<u8>> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, contents);
        drop(client);
        assert_eq!(old_daemon.join().unwrap(), 3);
    }
}
