//! The run's link to the daemon: recording events and asking for model calls.
//!
//! Sessions talk to a [`DaemonLink`], so the tool loop can be driven by an
//! in-memory fake in tests; [`ClientLink`] is the real one, over the
//! daemon's socket.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use con_llm::ChatReply;
use con_protocol::{Client, ClientError, ClientEvent, ErrorCode, LlmCall};

/// How long an append may take. Appends are bounded separately from the
/// session's wall clock: the events that close a timed-out session must
/// still be recorded.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run needs from the daemon.
pub trait DaemonLink {
    /// Appends one event; returns its seq once it is durable.
    fn append(&mut self, event: ClientEvent) -> Result<u64, LinkError>;

    /// Has the daemon make one model call (which it records as
    /// `llm.request`/`llm.response`); waits at most `timeout`.
    fn model_call(&mut self, call: LlmCall, timeout: Duration) -> Result<ChatReply, LinkError>;

    /// The trust the daemon recorded for `arrival` (path, device, inode and
    /// ctime, so this very arrival and not an earlier one of the same file)
    /// in `agent`'s inbox. The daemon sees what a run cannot: a file that
    /// arrived before (moved back out of `processed/`, or in from another
    /// agent's inbox). Links that cannot ask (test fakes) say
    /// [`RecordedTrust::Unknown`].
    fn recorded_trust(
        &mut self,
        _agent: &str,
        _arrival: &con_inbox::ArrivalKey,
    ) -> Result<RecordedTrust, LinkError> {
        Ok(RecordedTrust::Unknown)
    }

    /// How `agent`'s latest sessions of task `task` failed: the details of
    /// the failures (provider or runner errors) since the last session of it
    /// that ended any other way, oldest first. Links that cannot ask say
    /// none.
    fn failed_attempts(&mut self, _agent: &str, _task: &str) -> Result<Vec<String>, LinkError> {
        Ok(Vec::new())
    }
}

/// What the daemon's log says about a task's arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedTrust {
    /// Recorded, with this trust and reason.
    Recorded(con_event::payloads::Trust, String),
    /// Not recorded (yet).
    Missing,
    /// This link cannot tell.
    Unknown,
}

/// Why a link call failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The daemon refused the model call: the daily budget is spent.
    #[error("daily budget exhausted: {0}")]
    OverBudget(String),
    /// The model provider failed (after the daemon's retries).
    #[error("model provider failed: {0}")]
    Provider(String),
    /// No answer within the allotted time.
    #[error("the daemon did not answer within {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    /// The daemon's answer was not a `ChatReply`.
    #[error("the model reply is not a valid ChatReply: {0}")]
    BadReply(String),
    /// Anything else between the run and the daemon.
    #[error(transparent)]
    Daemon(ClientError),
}

/// [`DaemonLink`] over the daemon's Unix socket.
///
/// After a call times out the connection may still deliver the late
/// answer, which would then be taken for the answer to the next request;
/// the link therefore drops such a connection and reconnects on next use
/// (sessions belong to the agent, not to a connection).
pub struct ClientLink {
    socket: PathBuf,
    client: Option<Client>,
    arrivals: Arrivals,
}

/// The `inbox.arrived` records of one agent's tasks read so far, and the
/// seq to read on from, so settling a task's trust does not re-read the
/// agent's whole history each time (per task, and every poll while the
/// arrival is not yet recorded).
#[derive(Default)]
struct Arrivals {
    agent: String,
    from_seq: u64,
    /// Arrival → the trust and reason of its record.
    trust: HashMap<con_inbox::ArrivalKey, (con_event::payloads::Trust, String)>,
}

impl ClientLink {
    /// Connects to the daemon at `socket`. Failing here is what makes a run
    /// with no daemon do nothing ("no audit, no action").
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        let mut client = Client::connect(socket)?;
        client.set_timeout(Some(APPEND_TIMEOUT))?;
        Ok(Self {
            socket: socket.to_owned(),
            client: Some(client),
            arrivals: Arrivals::default(),
        })
    }

    fn client(&mut self) -> Result<&mut Client, LinkError> {
        if self.client.is_none() {
            let mut client = Client::connect(&self.socket).map_err(LinkError::Daemon)?;
            client
                .set_timeout(Some(APPEND_TIMEOUT))
                .map_err(LinkError::Daemon)?;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or(LinkError::Daemon(ClientError::Unexpected))
    }

    /// Maps a client error, dropping the connection when its state is
    /// unknown (an IO failure or timeout mid-call).
    fn failed(&mut self, error: ClientError, timeout: Duration) -> LinkError {
        match error {
            ClientError::Refused {
                code: ErrorCode::OverBudget,
                message,
            } => LinkError::OverBudget(message),
            ClientError::Refused {
                code: ErrorCode::Provider,
                message,
            } => LinkError::Provider(message),
            refused @ ClientError::Refused { .. } => LinkError::Daemon(refused),
            ClientError::NoAnswer { .. } => {
                self.client = None;
                LinkError::TimedOut(timeout)
            }
            ClientError::Io(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                self.client = None;
                LinkError::TimedOut(timeout)
            }
            other => {
                self.client = None;
                LinkError::Daemon(other)
            }
        }
    }
}

impl DaemonLink for ClientLink {
    fn failed_attempts(&mut self, agent: &str, task: &str) -> Result<Vec<String>, LinkError> {
        use con_event::payloads::{Kind, Outcome, SessionEnded};
        use con_event::{Event, Payload};
        let query = con_protocol::Query {
            from_seq: 1,
            agent: Some(agent.to_owned()),
            kind: Some(SessionEnded::SPEC.id),
            task: Some(task.to_owned()),
            ..Default::default()
        };
        let mut failures = Vec::new();
        let result = self.client()?.query(query, |bytes| {
            if let Ok(Event {
                payload: Payload::SessionEnded(ended),
                ..
            }) = Event::from_stored(&bytes)
            {
                match ended.outcome {
                    Outcome::ProviderError | Outcome::RunnerError => failures.push(ended.detail),
                    // Neither is the task's doing: the budget and enforcement.
                    Outcome::Budget | Outcome::Killed | Outcome::KilledByEnforcement => {}
                    _ => failures.clear(),
                }
            }
            true
        });
        match result {
            Ok(_) => Ok(failures),
            Err(e) => Err(self.failed(e, APPEND_TIMEOUT)),
        }
    }

    fn recorded_trust(
        &mut self,
        agent: &str,
        arrival: &con_inbox::ArrivalKey,
    ) -> Result<RecordedTrust, LinkError> {
        use con_event::payloads::{InboxArrived, Kind};
        use con_event::{Event, Payload};
        if self.arrivals.agent != agent {
            self.arrivals = Arrivals {
                agent: agent.to_owned(),
                ..Arrivals::default()
            };
        }
        // Only what was recorded since the last call: the log is read in
        // seq order, so every arrival before the last one seen was seen.
        let query = con_protocol::Query {
            from_seq: self.arrivals.from_seq.max(1),
            agent: Some(agent.to_owned()),
            kind: Some(InboxArrived::SPEC.id),
            ..Default::default()
        };
        self.client()?;
        let (Some(client), arrivals) = (self.client.as_mut(), &mut self.arrivals) else {
            return Err(LinkError::Daemon(ClientError::Unexpected));
        };
        let result = client.query(query, |bytes| {
            if let Ok(Event {
                envelope,
                payload: Payload::InboxArrived(a),
                ..
            }) = Event::from_stored(&bytes)
            {
                arrivals.from_seq = arrivals.from_seq.max(envelope.seq + 1);
                // The last record of an arrival wins.
                let key = con_inbox::arrival_key(&a);
                arrivals.trust.insert(key, (a.trust, a.trust_reason));
            }
            true
        });
        if let Err(e) = result {
            return Err(self.failed(e, APPEND_TIMEOUT));
        }
        Ok(match self.arrivals.trust.get(arrival) {
            Some((trust, reason)) => RecordedTrust::Recorded(*trust, reason.clone()),
            None => RecordedTrust::Missing,
        })
    }

    fn append(&mut self, event: ClientEvent) -> Result<u64, LinkError> {
        let result = self.client()?.append(event);
        match result {
            Ok((seq, _)) => Ok(seq),
            Err(e) => Err(self.failed(e, APPEND_TIMEOUT)),
        }
    }

    fn model_call(&mut self, call: LlmCall, timeout: Duration) -> Result<ChatReply, LinkError> {
        if timeout.is_zero() {
            return Err(LinkError::TimedOut(timeout));
        }
        let client = self.client()?;
        let result = client
            .set_timeout(Some(timeout))
            .and_then(|()| client.llm(call));
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => return Err(self.failed(e, timeout)),
        };
        if let Err(e) = self.client()?.set_timeout(Some(APPEND_TIMEOUT)) {
            return Err(self.failed(e, APPEND_TIMEOUT));
        }
        serde_json::from_slice(&answer.reply).map_err(|e| LinkError::BadReply(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    use con_event::payloads::{InboxArrived, Kind, Trust};
    use con_event::{
        Actor, BlobRef, Digest, Envelope, EventId, Payload, SessionId, chain_hash, encode_stored,
    };
    use con_protocol::{LlmAnswer, Request, Response, decode_frame, encode_frame};

    use super::*;

    fn read_request(stream: &mut UnixStream) -> Request {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((request, _)) = decode_frame::<Request>(&buf).unwrap() {
                return request;
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "client hung up");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn answer(stream: &mut UnixStream, response: &Response) {
        stream.write_all(&encode_frame(response).unwrap()).unwrap();
    }

    fn call() -> LlmCall {
        LlmCall {
            session: SessionId([1; 16]),
            task: Some("t".into()),
            iteration: 1,
            request: b"{}".to_vec(),
        }
    }

    #[test]
    fn refusals_map_to_outcomes_and_a_timed_out_connection_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("con.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let daemon = std::thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            assert!(matches!(read_request(&mut first), Request::Llm(_)));
            answer(
                &mut first,
                &Response::Error {
                    code: ErrorCode::OverBudget,
                    message: "spent".into(),
                },
            );
            assert!(matches!(read_request(&mut first), Request::Llm(_)));
            // Too late: the link has given up on this connection. The late
            // answer must not be taken for the next request's.
            std::thread::sleep(Duration::from_millis(400));
            let _ = first.write_all(
                &encode_frame(&Response::Llm(LlmAnswer {
                    request_seq: 1,
                    response_seq: 2,
                    reply: b"late".to_vec(),
                }))
                .unwrap(),
            );
            let (mut second, _) = listener.accept().unwrap();
            assert!(matches!(read_request(&mut second), Request::Append(_)));
            answer(
                &mut second,
                &Response::Appended {
                    seq: 7,
                    hash: Digest::default(),
                },
            );
        });

        let mut link = ClientLink::connect(&socket).unwrap();
        let refused = link.model_call(call(), Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(refused, LinkError::OverBudget(ref m) if m == "spent"),
            "{refused:?}"
        );
        let late = link
            .model_call(call(), Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(late, LinkError::TimedOut(_)), "{late:?}");
        let event = ClientEvent {
            session: None,
            task: None,
            causation: None,
            kind: 1,
            kind_version: 1,
            payload: vec![],
            attachments: vec![],
        };
        assert_eq!(link.append(event).unwrap(), 7);
        daemon.join().unwrap();
    }

    /// `inbox.arrived` at `seq` for `path` (inode 1/2), as stored.
    fn arrived(seq: u64, path: &str, trust: Trust, reason: &str) -> Vec<u8> {
        let payload = Payload::from(InboxArrived {
            inbox: "a".into(),
            path: path.into(),
            owner_uid: 0,
            owner_gid: 0,
            mode: 0o644,
            nlink: 1,
            dev: 1,
            inode: 2,
            ctime_unix_nanos: 0,
            symlink: false,
            trust,
            trust_reason: reason.into(),
            content: BlobRef::of(b""),
        });
        let envelope = Envelope {
            seq,
            id: EventId::default(),
            ts_unix_nanos: 0,
            actor: Actor::system(),
            session: None,
            task: None,
            causation: None,
            kind: InboxArrived::SPEC.id,
            kind_version: InboxArrived::SPEC.version,
            payload: payload.encode().unwrap(),
            prev_hash: Digest::default(),
        };
        let record = envelope.encode_record().unwrap();
        encode_stored(&record, &chain_hash(&Digest::default(), &record))
    }

    #[test]
    fn recorded_trust_reads_on_from_the_last_arrival_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("con.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let daemon = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut serve = |from_seq: u64, events: Vec<Vec<u8>>| {
                let Request::Query(q) = read_request(&mut conn) else {
                    panic!("not a query");
                };
                assert_eq!(q.from_seq, from_seq);
                assert_eq!(q.agent.as_deref(), Some("a"));
                assert_eq!(q.kind, Some(InboxArrived::SPEC.id));
                for e in events {
                    answer(&mut conn, &Response::Event(e));
                }
                answer(&mut conn, &Response::End { head_seq: 20 });
            };
            serve(
                1,
                vec![
                    arrived(5, "/i/x.task", Trust::Verified, "owner uid 0"),
                    arrived(9, "/i/x.task", Trust::Unverified, "moved in"),
                ],
            );
            serve(10, vec![]);
            serve(
                10,
                vec![arrived(12, "/i/y.task", Trust::Verified, "owner uid 0")],
            );
            serve(13, vec![]);
        });

        let mut link = ClientLink::connect(&socket).unwrap();
        let mut ask = |path: &str| {
            let arrival = con_inbox::ArrivalKey {
                path: path.into(),
                dev: 1,
                inode: 2,
                ctime_unix_nanos: 0,
            };
            link.recorded_trust("a", &arrival).unwrap()
        };
        assert_eq!(
            ask("/i/x.task"),
            RecordedTrust::Recorded(Trust::Unverified, "moved in".into())
        );
        assert_eq!(ask("/i/y.task"), RecordedTrust::Missing);
        assert_eq!(
            ask("/i/y.task"),
            RecordedTrust::Recorded(Trust::Verified, "owner uid 0".into())
        );
        // Earlier records are remembered, not re-read.
        assert_eq!(
            ask("/i/x.task"),
            RecordedTrust::Recorded(Trust::Unverified, "moved in".into())
        );
        daemon.join().unwrap();
    }

    #[test]
    fn no_daemon_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClientLink::connect(&dir.path().join("absent.sock"))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("cannot reach the con daemon"),
            "{err}"
        );
    }
}
