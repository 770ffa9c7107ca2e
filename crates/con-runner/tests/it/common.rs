//! Fixtures: an agent tree in a temp dir, and an in-memory daemon link that
//! checks what the real daemon checks.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use con_config::Runner;
use con_event::{BlobRef, Payload, SessionId};
use con_layout::Layout;
use con_llm::{ChatReply, ChatRequest, StopReason, ToolCallRequest, Usage};
use con_protocol::{ClientEvent, LlmCall};
use con_runner::{AgentRun, DaemonLink, LinkError};

/// An agent's tree (`inbox`, `outbox`, `processed`, `workspace/skills`,
/// `sessions`) and home (with AGENTS.md) under one temp dir.
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub run: AgentRun,
}

impl Tree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "a-", "").unwrap();
        let agent = "worker1";
        for sub in [
            layout.agent_inbox(agent),
            layout.agent_outbox(agent),
            layout.agent_processed(agent),
            layout.agent_failed(agent),
            layout.agent_skills(agent),
            layout.agent_sessions(agent),
            layout.home(agent),
        ] {
            fs::create_dir_all(sub).unwrap();
        }
        fs::write(
            layout.agents_md(agent),
            "# worker1\nYou write tidy files.\n",
        )
        .unwrap();
        fs::write(
            layout.agent_skills(agent).join("files.md"),
            "Prefer edit_file.\n",
        )
        .unwrap();
        let run = AgentRun {
            agent: agent.into(),
            home: layout.home(agent),
            layout,
            runner: Runner::Builtin,
            provider: Some("openrouter".into()),
            model: Some("test/model".into()),
            max_iterations: 10,
            session_limit: Duration::from_secs(60),
            history_tokens: 4000,
            max_task_bytes: 64 * 1024,
            max_attempts: 3,
            stop: Default::default(),
        };
        Self { dir, run }
    }

    /// Writes `inbox/<id>.task` (owned by root: verified).
    pub fn task(&self, id: &str, content: &str) -> PathBuf {
        let path = self.run.inbox().join(format!("{id}.task"));
        fs::write(&path, content).unwrap();
        path
    }

    pub fn inbox_names(&self) -> Vec<String> {
        names(&self.run.inbox())
    }

    pub fn processed_names(&self) -> Vec<String> {
        names(&self.run.processed())
    }

    pub fn response(&self, id: &str) -> Option<String> {
        fs::read_to_string(self.run.outbox().join(format!("{id}.response"))).ok()
    }
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A reply with text only.
pub fn text(t: &str) -> Result<ChatReply, LinkError> {
    Ok(ChatReply {
        content: Some(t.into()),
        tool_calls: vec![],
        stop: StopReason::EndTurn,
        usage: Usage::default(),
    })
}

/// A reply asking for tools: (id, name, arguments).
pub fn tools(
    t: Option<&str>,
    calls: &[(&str, &str, serde_json::Value)],
) -> Result<ChatReply, LinkError> {
    Ok(ChatReply {
        content: t.map(Into::into),
        tool_calls: calls
            .iter()
            .map(|(id, name, args)| ToolCallRequest {
                id: (*id).into(),
                name: (*name).into(),
                arguments: args.clone(),
            })
            .collect(),
        stop: StopReason::ToolUse,
        usage: Usage::default(),
    })
}

/// One recorded event, decoded.
#[derive(Debug)]
pub struct Recorded {
    pub session: SessionId,
    pub task: String,
    pub payload: Payload,
    pub attachments: Vec<Vec<u8>>,
}

impl Recorded {
    pub fn kind(&self) -> &'static str {
        self.payload.spec().name
    }

    /// The attachment `r` points to.
    pub fn blob(&self, r: &BlobRef) -> String {
        let bytes = self
            .attachments
            .iter()
            .find(|a| BlobRef::of(a) == *r)
            .expect("referenced blob attached");
        String::from_utf8(bytes.clone()).unwrap()
    }
}

/// An in-memory daemon: scripted model replies, recorded events and
/// requests. It enforces what the daemon does (sessions opened by
/// `session.started`, model calls only in open sessions, attachments
/// exactly the referenced blobs), so a runner bug fails here too.
#[derive(Default)]
pub struct FakeLink {
    pub replies: VecDeque<Result<ChatReply, LinkError>>,
    pub events: Vec<Recorded>,
    pub requests: Vec<(LlmCall, ChatRequest)>,
    /// Fail appends of this kind.
    pub refuse_kind: Option<&'static str>,
}

impl FakeLink {
    pub fn new(replies: Vec<Result<ChatReply, LinkError>>) -> Self {
        Self {
            replies: replies.into(),
            ..Self::default()
        }
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.events.iter().map(Recorded::kind).collect()
    }

    fn opened(&self, session: &SessionId) -> bool {
        self.events
            .iter()
            .any(|e| e.session == *session && matches!(e.payload, Payload::SessionStarted(_)))
    }
}

impl DaemonLink for FakeLink {
    fn append(&mut self, event: ClientEvent) -> Result<u64, LinkError> {
        let payload = Payload::decode(event.kind, event.kind_version, &event.payload).unwrap();
        if self.refuse_kind == Some(payload.spec().name) {
            return Err(LinkError::Daemon(con_protocol::ClientError::Refused {
                code: con_protocol::ErrorCode::Unavailable,
                message: "refused by the test".into(),
            }));
        }
        let session = event.session.expect("every event carries its session");
        let task = event.task.expect("every event carries its task");
        let opens = matches!(payload, Payload::SessionStarted(_));
        assert!(
            opens != self.opened(&session),
            "session.started must come first, once: {payload:?}"
        );
        let mut refs = payload.blob_refs();
        let mut sent: Vec<BlobRef> = event.attachments.iter().map(|a| BlobRef::of(a)).collect();
        refs.sort();
        sent.sort();
        assert_eq!(
            refs, sent,
            "attachments must be exactly the referenced blobs"
        );
        self.events.push(Recorded {
            session,
            task,
            payload,
            attachments: event.attachments,
        });
        Ok(self.events.len() as u64)
    }

    fn model_call(&mut self, call: LlmCall, _timeout: Duration) -> Result<ChatReply, LinkError> {
        assert!(
            self.opened(&call.session),
            "model call in a session not started"
        );
        let request: ChatRequest = serde_json::from_slice(&call.request).unwrap();
        self.requests.push((call, request));
        self.replies
            .pop_front()
            .expect("a scripted reply for every call")
    }
}
