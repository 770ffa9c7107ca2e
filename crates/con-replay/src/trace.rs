//! A task's story across agents, as a tree.
//!
//! A task node holds the task's arrivals (and the daemon's routing between
//! inboxes), the sessions that worked on it and, under each session, the
//! tasks it handed to other inboxes. A session hands on a task by
//! - `write_file`: the later `inbox.arrived` whose content has the digest of
//!   the written content and whose path is the written path;
//! - `task.routed` to an agent: the later arrival at the routed path in that
//!   agent's inbox;
//! - anything else its user wrote (`exec`): a later arrival of a file owned
//!   by the session's uid (the kernel's word, from `lstat`) recorded while
//!   the session ran or within [`ARRIVAL_GRACE_NANOS`] of its end, credited
//!   to the last `exec` before it.

use std::collections::BTreeSet;

use con_event::payloads::{InboxArrived, Outcome, Trust};
use con_event::{Digest, Event, Payload, SessionId};
use serde::Serialize;

use crate::Contents;

/// How long after a session's end an arrival of a file its user owns is
/// still credited to it: the watcher records an arrival shortly after the
/// write, and the session may end in between.
pub const ARRIVAL_GRACE_NANOS: i64 = 2_000_000_000;

/// The tree of one task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trace {
    /// The task asked about.
    pub root: TaskNode,
}

/// A task and what came of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskNode {
    /// Task id (the file name without `.task`), if recorded.
    pub task: Option<String>,
    /// How the parent session handed it on (none for the root).
    pub via: Option<Link>,
    /// Its arrivals and routing, in log order.
    pub hops: Vec<Hop>,
    /// Sessions that worked on it.
    pub sessions: Vec<SessionNode>,
}

/// One arrival of a task in an inbox, or the daemon moving it on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hop {
    /// Seq of the event.
    pub seq: u64,
    /// Its time (ns since the epoch).
    pub at: i64,
    /// What happened.
    pub what: HopKind,
}

/// What a hop was.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HopKind {
    /// `inbox.arrived`.
    Arrived {
        /// Inbox owner.
        inbox: String,
        /// Path.
        path: String,
        /// Owner uid (`lstat`).
        owner_uid: u32,
        /// Trust.
        trust: Trust,
        /// Why.
        trust_reason: String,
        /// Content digest.
        content: Digest,
    },
    /// `task.routed` outside any session (the daemon's routing of the
    /// outer inbox).
    Routed {
        /// From.
        from: String,
        /// To.
        to: String,
    },
}

/// How a session created a task in an inbox.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    /// Seq of the `tool.call` or `task.routed` it is credited to (none for
    /// a file the session's user wrote with no exec before it).
    pub seq: Option<u64>,
    /// How.
    pub how: LinkKind,
}

/// The ways a session hands on a task.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// `write_file` of the same path and content.
    WriteFile,
    /// `task.routed` to the agent.
    Routed,
    /// A file owned by the session's user, after an `exec`.
    Exec,
    /// A file owned by the session's user, with no `exec` before it.
    Owner,
}

impl LinkKind {
    /// Canonical spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkKind::WriteFile => "write_file",
            LinkKind::Routed => "task.routed",
            LinkKind::Exec => "exec",
            LinkKind::Owner => "written by its user",
        }
    }
}

/// A session in a trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionNode {
    /// The session.
    pub session: SessionId,
    /// The agent.
    pub agent: String,
    /// Seq of `session.started`.
    pub start_seq: u64,
    /// When it started (ns since the epoch).
    pub started_at: i64,
    /// Trust it gave its task.
    pub trust: Trust,
    /// Model, if any.
    pub model: Option<String>,
    /// How it ended, if it did.
    pub outcome: Option<Outcome>,
    /// When it ended.
    pub ended_at: Option<i64>,
    /// Model calls.
    pub model_calls: u32,
    /// Their cost, micro-USD.
    pub cost_micro_usd: u64,
    /// Tasks it handed on.
    pub children: Vec<TaskNode>,
}

impl Trace {
    /// Every session in the tree, depth first.
    pub fn sessions(&self) -> Vec<SessionId> {
        fn walk(t: &TaskNode, out: &mut Vec<SessionId>) {
            for s in &t.sessions {
                out.push(s.session);
                for c in &s.children {
                    walk(c, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

struct Builder<'a> {
    events: &'a [Event],
    contents: &'a Contents,
    /// Arrivals already placed in the tree: each belongs to one node.
    claimed: BTreeSet<u64>,
    /// Sessions already placed: a loop of tasks cannot recurse forever.
    visited: BTreeSet<SessionId>,
}

/// The tree of task `task` from `events` in seq order (arrivals, routing,
/// `session.started` of every session that may be in it, and the events of
/// the sessions in it; a session whose events are missing shows without
/// children) and the contents of their tool calls' arguments.
///
/// A caller that fetches lazily calls this again after fetching the events
/// of [`Trace::sessions`] it lacked, until nothing new appears.
pub fn trace(task: &str, events: &[Event], contents: &Contents) -> Trace {
    let mut b = Builder {
        events,
        contents,
        claimed: BTreeSet::new(),
        visited: BTreeSet::new(),
    };
    let anchor = events
        .iter()
        .filter(|e| e.envelope.task.as_deref() == Some(task))
        .find(|e| matches!(e.payload, Payload::InboxArrived(_) | Payload::TaskRouted(_)))
        .map(|e| e.seq());
    let root = match anchor {
        Some(seq) => b.task_node(Some(task.to_owned()), seq, None),
        // Sessions of a task whose arrival is not among the events (an
        // agent does not see the outer inbox, say) are still its story.
        None => b.task_node(Some(task.to_owned()), 0, None),
    };
    Trace { root }
}

impl Builder<'_> {
    /// The node of `task` from `anchor` (its first hop's seq) on.
    fn task_node(&mut self, task: Option<String>, anchor: u64, via: Option<Link>) -> TaskNode {
        let mut hops = Vec::new();
        let mut inboxes = BTreeSet::new();
        for e in self.events.iter().filter(|e| e.seq() >= anchor) {
            if e.envelope.task != task || task.is_none() {
                continue;
            }
            match &e.payload {
                Payload::InboxArrived(a)
                    if !self.claimed.contains(&e.seq()) || e.seq() == anchor =>
                {
                    self.claimed.insert(e.seq());
                    inboxes.insert(a.inbox.clone());
                    hops.push(Hop {
                        seq: e.seq(),
                        at: e.envelope.ts_unix_nanos,
                        what: arrived(a),
                    });
                }
                Payload::TaskRouted(r) if e.envelope.session.is_none() => hops.push(Hop {
                    seq: e.seq(),
                    at: e.envelope.ts_unix_nanos,
                    what: HopKind::Routed {
                        from: r.from.clone(),
                        to: r.to.clone(),
                    },
                }),
                _ => {}
            }
        }
        let starts: Vec<(&Event, String)> = self
            .events
            .iter()
            .filter(|e| e.seq() > anchor && e.envelope.task == task && task.is_some())
            .filter_map(|e| match &e.payload {
                Payload::SessionStarted(p) if inboxes.is_empty() || inboxes.contains(&p.agent) => {
                    Some((e, p.agent.clone()))
                }
                _ => None,
            })
            .collect();
        let mut sessions = Vec::new();
        for (start, _) in starts {
            let Some(id) = start.envelope.session else {
                continue;
            };
            if self.visited.insert(id) {
                sessions.push(self.session_node(id, start));
            }
        }
        TaskNode {
            task,
            via,
            hops,
            sessions,
        }
    }

    fn session_node(&mut self, id: SessionId, start: &Event) -> SessionNode {
        let (agent, trust, model) = match &start.payload {
            Payload::SessionStarted(p) => (p.agent.clone(), p.trust, p.model.clone()),
            _ => (String::new(), Trust::Unverified, None),
        };
        let uid = start.envelope.actor.uid;
        let own: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| e.envelope.session == Some(id))
            .collect();
        let mut node = SessionNode {
            session: id,
            agent,
            start_seq: start.seq(),
            started_at: start.envelope.ts_unix_nanos,
            trust,
            model,
            outcome: None,
            ended_at: None,
            model_calls: 0,
            cost_micro_usd: 0,
            children: Vec::new(),
        };
        let mut end_seq = None;
        for e in &own {
            match &e.payload {
                Payload::LlmResponse(r) => {
                    node.model_calls += 1;
                    node.cost_micro_usd += r.cost_micro_usd;
                }
                Payload::SessionEnded(p) => {
                    node.outcome = Some(p.outcome);
                    node.ended_at = Some(e.envelope.ts_unix_nanos);
                    end_seq = Some(e.seq());
                }
                _ => {}
            }
        }
        // Links, strongest first: an arrival is credited once.
        let mut links: Vec<(u64, Link)> = Vec::new();
        for e in &own {
            match &e.payload {
                Payload::ToolCall(c) if c.tool == "write_file" => {
                    let Some((path, digest)) = self.written(c.arguments.digest) else {
                        continue;
                    };
                    if let Some(seq) = self.arrival_after(e.seq(), |a| {
                        a.content.digest == digest && same_path(&a.path, &path)
                    }) {
                        self.claimed.insert(seq);
                        links.push((
                            seq,
                            Link {
                                seq: Some(e.seq()),
                                how: LinkKind::WriteFile,
                            },
                        ));
                    }
                }
                Payload::TaskRouted(r) if !is_terminal(&r.to) => {
                    if let Some(seq) =
                        self.arrival_after(e.seq(), |a| a.inbox == r.to && a.path == r.path)
                    {
                        self.claimed.insert(seq);
                        links.push((
                            seq,
                            Link {
                                seq: Some(e.seq()),
                                how: LinkKind::Routed,
                            },
                        ));
                    }
                }
                _ => {}
            }
        }
        // Files its user wrote by other means, while it ran.
        let horizon = node.ended_at.map(|t| t + ARRIVAL_GRACE_NANOS);
        let execs: Vec<u64> = own
            .iter()
            .filter(|e| matches!(&e.payload, Payload::ToolCall(c) if c.tool == "exec"))
            .map(|e| e.seq())
            .collect();
        let owned: Vec<u64> = self
            .events
            .iter()
            .filter(|e| {
                e.seq() > node.start_seq
                    && !self.claimed.contains(&e.seq())
                    && (end_seq.is_none_or(|end| e.seq() < end)
                        || horizon.is_none_or(|h| e.envelope.ts_unix_nanos <= h))
                    && matches!(&e.payload, Payload::InboxArrived(a) if a.owner_uid == uid && uid != 0)
            })
            .map(|e| e.seq())
            .collect();
        for seq in owned {
            self.claimed.insert(seq);
            let exec = execs.iter().rev().find(|x| **x < seq).copied();
            links.push((
                seq,
                Link {
                    seq: exec,
                    how: if exec.is_some() {
                        LinkKind::Exec
                    } else {
                        LinkKind::Owner
                    },
                },
            ));
        }
        links.sort_by_key(|(seq, _)| *seq);
        for (seq, link) in links {
            let task = self
                .events
                .iter()
                .find(|e| e.seq() == seq)
                .and_then(|e| e.envelope.task.clone());
            node.children.push(self.task_node(task, seq, Some(link)));
        }
        node
    }

    /// Path and content digest of a `write_file` call, from its arguments.
    fn written(&self, arguments: Digest) -> Option<(String, Digest)> {
        let bytes = self.contents.get(&arguments)?;
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let path = value.get("path")?.as_str()?.to_owned();
        let content = value.get("content")?.as_str()?;
        Some((path, Digest::of(content.as_bytes())))
    }

    /// The first unclaimed arrival after `seq` that `fits`.
    fn arrival_after(&self, seq: u64, fits: impl Fn(&InboxArrived) -> bool) -> Option<u64> {
        self.events
            .iter()
            .filter(|e| e.seq() > seq && !self.claimed.contains(&e.seq()))
            .find(|e| matches!(&e.payload, Payload::InboxArrived(a) if fits(a)))
            .map(|e| e.seq())
    }
}

fn arrived(a: &InboxArrived) -> HopKind {
    HopKind::Arrived {
        inbox: a.inbox.clone(),
        path: a.path.clone(),
        owner_uid: a.owner_uid,
        trust: a.trust,
        trust_reason: a.trust_reason.clone(),
        content: a.content.digest,
    }
}

/// Whether a routing destination is not another agent.
fn is_terminal(to: &str) -> bool {
    use con_event::payloads::TaskRouted;
    [
        TaskRouted::PROCESSED,
        TaskRouted::FAILED,
        TaskRouted::OUTBOX,
    ]
    .contains(&to)
}

/// Whether an arrival's (absolute) path is the path a tool wrote: the same,
/// or, for a path relative to the agent's working directory, ending in it.
fn same_path(arrived: &str, written: &str) -> bool {
    if written.starts_with('/') {
        arrived == written
    } else {
        arrived
            .strip_suffix(written)
            .is_some_and(|head| head.ends_with('/'))
    }
}
