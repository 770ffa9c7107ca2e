//! The replay folds on hand-made events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use con_event::payloads::{
    CheckStatus, ContractResult, InboxArrived, LlmRequest, LlmResponse, Outcome, SessionEnded,
    SessionStarted, ToolCall, ToolResult, Trust,
};
use con_event::{Actor, BlobRef, Digest, Envelope, Event, EventId, Payload, SessionId};
use con_replay::{Contents, Step, text, timeline, trace};

struct Log {
    events: Vec<Event>,
    contents: Contents,
}

impl Log {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            contents: Contents::new(),
        }
    }

    fn blob(&mut self, text: &str) -> BlobRef {
        self.contents
            .insert(Digest::of(text.as_bytes()), text.as_bytes().to_vec());
        BlobRef::of(text.as_bytes())
    }

    fn push(
        &mut self,
        uid: u32,
        session: Option<SessionId>,
        task: &str,
        payload: impl Into<Payload>,
    ) {
        let payload = payload.into();
        let seq = self.events.len() as u64 + 1;
        let envelope = Envelope {
            seq,
            id: EventId::default(),
            ts_unix_nanos: 1_700_000_000_000_000_000 + seq as i64 * 100_000_000,
            actor: Actor { uid, agent: None },
            session,
            task: Some(task.to_owned()),
            causation: None,
            kind: payload.spec().id,
            kind_version: payload.spec().version,
            payload: payload.encode().unwrap(),
            prev_hash: Digest::default(),
        };
        self.events.push(Event {
            envelope,
            payload,
            hash: Digest::default(),
        });
    }

    fn arrival(&mut self, inbox: &str, path: &str, uid: u32, text: &str) {
        let content = self.blob(text);
        let task = path
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".task")
            .to_owned();
        self.push(
            0,
            None,
            &task,
            InboxArrived {
                inbox: inbox.into(),
                path: path.into(),
                owner_uid: uid,
                owner_gid: uid,
                mode: 0o644,
                nlink: 1,
                dev: 1,
                inode: 1,
                ctime_unix_nanos: 0,
                symlink: false,
                trust: if uid == 0 {
                    Trust::Verified
                } else {
                    Trust::Unverified
                },
                trust_reason: format!("owner uid {uid}"),
                content,
            },
        );
    }

    /// A session of `agent` (uid) on `task` that calls `tool` with `args`.
    fn session(&mut self, agent: &str, uid: u32, task: &str, tool: &str, args: &str) -> SessionId {
        let s = SessionId([uid as u8; 16]);
        let prompt = self.blob("You are an agent.");
        self.push(
            uid,
            Some(s),
            task,
            SessionStarted {
                agent: agent.into(),
                runner: "builtin".into(),
                provider: Some("p".into()),
                model: Some("m".into()),
                trust: Trust::Verified,
                prompt,
            },
        );
        let frame = self.blob("{\"messages\":}");
        let m1 = self.blob("{\"role\":\"user\",\"content\":\"do it\"}");
        self.push(
            0,
            Some(s),
            task,
            LlmRequest {
                agent: agent.into(),
                provider: "p".into(),
                model: "m".into(),
                iteration: 1,
                frame,
                messages_at: 12,
                continues: None,
                repeated: 0,
                messages: vec![m1],
            },
        );
        let reply = self.blob(&format!(
            "{{\"content\":null,\"tool_calls\":[{{\"id\":\"c1\",\"name\":\"{tool}\",\"arguments\":{args}}}],\"stop\":\"tool_use\",\"usage\":{{\"input_tokens\":10,\"output_tokens\":5}}}}"
        ));
        self.push(
            0,
            Some(s),
            task,
            LlmResponse {
                agent: agent.into(),
                provider: "p".into(),
                model: "m".into(),
                status: Some(200),
                attempts: 1,
                latency_ms: 40,
                input_tokens: 10,
                output_tokens: 5,
                cost_micro_usd: 20,
                response: Some(reply),
                error: None,
            },
        );
        let arguments = self.blob(args);
        self.push(
            uid,
            Some(s),
            task,
            ToolCall {
                call_id: "c1".into(),
                tool: tool.into(),
                arguments,
            },
        );
        let output = self.blob("done\nline two\u{1b}[2J");
        self.push(
            uid,
            Some(s),
            task,
            ToolResult {
                call_id: "c1".into(),
                tool: tool.into(),
                exit_code: Some(0),
                duration_ms: 3,
                output,
                truncated: false,
                error: None,
            },
        );
        s
    }

    fn end(&mut self, s: SessionId, agent: &str, uid: u32, task: &str) {
        self.push(
            uid,
            Some(s),
            task,
            SessionEnded {
                agent: agent.into(),
                outcome: Outcome::Ok,
                iterations: 2,
                duration_ms: 500,
                response: None,
                detail: String::new(),
            },
        );
    }

    fn check(&mut self, agent: &str) {
        self.push(
            0,
            None,
            "-",
            ContractResult {
                contract: "CON-X-1".into(),
                check: "c".into(),
                scope_agent: Some(agent.into()),
                status: CheckStatus::Fail,
                detail: String::new(),
                duration_ms: 1,
            },
        );
    }
}

#[test]
fn a_session_timeline_has_its_arrival_steps_totals_and_checks_in_its_span() {
    let mut log = Log::new();
    log.check("concierge"); // before: not in the session's span
    log.arrival("concierge", "/in/t-1.task", 0, "Ask the sysadmin.");
    let s = log.session(
        "concierge",
        1001,
        "t-1",
        "exec",
        "{\"command\":\"echo hi\"}",
    );
    log.check("concierge"); // during
    log.check("sysadmin"); // another agent
    log.end(s, "concierge", 1001, "t-1");
    log.check("concierge"); // after

    let t = timeline(s, &log.events, &log.contents).unwrap();
    let kinds: Vec<&str> = t
        .entries
        .iter()
        .map(|e| match e.step {
            Step::Arrived { .. } => "arrived",
            Step::Started { .. } => "started",
            Step::Request { .. } => "request",
            Step::Response { .. } => "response",
            Step::ToolCall { .. } => "call",
            Step::ToolResult { .. } => "result",
            Step::Contract { .. } => "contract",
            Step::Ended { .. } => "ended",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "arrived", "started", "request", "response", "call", "result", "contract", "ended"
        ]
    );
    assert_eq!(
        (t.model_calls, t.cost_micro_usd, t.outcome),
        (1, 20, Some(Outcome::Ok))
    );
    assert!(t.entries[0].offset_nanos < 0);
    let Step::Response { tool_calls, .. } = &t.entries[3].step else {
        panic!()
    };
    assert_eq!(tool_calls[0].name, "exec");
    let Step::Request { messages, .. } = &t.entries[2].step else {
        panic!()
    };
    assert_eq!(*messages, Some(1));

    let view = text::timeline(&t, text::TextOptions::default());
    // Tool output cannot forge lines or move the cursor.
    assert!(view.contains("| line two\\u{1b}[2J"), "{view}");
    assert!(!view.contains('\u{1b}'));
    assert!(
        !view.contains("You are an agent."),
        "prompt only with --full"
    );
    let full = text::timeline(&t, text::TextOptions { full: true });
    assert!(full.contains("| You are an agent."), "{full}");
}

#[test]
fn a_write_file_into_another_inbox_links_the_later_arrival() {
    let mut log = Log::new();
    log.arrival("concierge", "/in/c/t-1.task", 0, "Ask the sysadmin.");
    let args = "{\"path\":\"/in/s/job-1.task\",\"content\":\"How full?\"}";
    let c = log.session("concierge", 1001, "t-1", "write_file", args);
    log.end(c, "concierge", 1001, "t-1");
    // A task with the same path but other content is not the one written.
    log.arrival("sysadmin", "/in/s/job-1.task", 1001, "How full?");
    let s = log.session("sysadmin", 1002, "job-1", "exec", "{\"command\":\"df\"}");
    log.end(s, "sysadmin", 1002, "job-1");

    let t = trace("t-1", &log.events, &log.contents);
    assert_eq!(t.sessions(), vec![c, s]);
    let child = &t.root.sessions[0].children[0];
    assert_eq!(child.task.as_deref(), Some("job-1"));
    assert_eq!(
        child.via.as_ref().unwrap().how,
        con_replay::trace::LinkKind::WriteFile
    );
    let view = text::trace(&t);
    assert!(view.contains("task job-1 (by write_file #"), "{view}");
    assert!(view.contains("unverified (owner uid 1001)"), "{view}");
}
