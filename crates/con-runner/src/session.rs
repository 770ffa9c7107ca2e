//! One session per task: record, run (tool loop or exec runner), route.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use con_config::{KnownCli, Runner};
use con_event::payloads::{
    Outcome, SessionEnded, SessionStarted, TaskFailed, TaskRouted, ToolCall, ToolResult, Trust,
};
use con_event::{BlobRef, Payload, SessionId};
use con_llm::{ChatRequest, Message, ToolOutcome};
use con_protocol::LlmCall;
use serde_json::json;

use con_process::{ShellCommand, StderrMode};

use crate::inbox::{Claim, pending};
use crate::link::RecordedTrust;
use crate::prompt::{self, PromptContext, Task};
use crate::tools::{self, ToolContext, ToolOutput};
use crate::{AgentRun, DaemonLink, LinkError, RunError, client_event, stops_draining};

/// Bytes of an exec runner's standard output kept as the response.
const RESPONSE_CAP: usize = 1024 * 1024;

/// Bytes of an exec runner's standard error kept for the record.
const RUNNER_STDERR_CAP: usize = 10_000;

/// How one session went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReport {
    /// The session.
    pub session: SessionId,
    /// The task id.
    pub task: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Model calls made (1 for an exec runner).
    pub iterations: u32,
    /// Why, for anything but `ok`.
    pub detail: String,
    /// Where the response was written, when it was.
    pub response: Option<PathBuf>,
    /// Whether the task was moved to `processed/`.
    pub routed: bool,
}

/// What a whole run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// One report per session, in order.
    pub sessions: Vec<SessionReport>,
    /// The outcome that stopped the run before the inbox was empty, if one
    /// did (see [`crate::stops_draining`]).
    pub stopped: Option<Outcome>,
}

/// Works through the agent's inbox, oldest task first by name, until it is
/// empty or a session ends in a way that stops draining. A task claimed by
/// a concurrent run of the same agent is left to it.
pub fn drain(link: &mut dyn DaemonLink, run: &AgentRun) -> Result<Drained, RunError> {
    let inbox = run.inbox();
    let sessions_dir = run.sessions();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut drained = Drained::default();
    loop {
        if stopping(run) {
            drained.stopped = Some(Outcome::Killed);
            return Ok(drained);
        }
        let tasks = pending(&inbox).map_err(|e| RunError::io("list", &inbox, e))?;
        let Some(path) = tasks.into_iter().find(|p| !seen.contains(p)) else {
            return Ok(drained);
        };
        seen.insert(path.clone());
        let id = task_id(&path);
        let Some(claim) =
            Claim::take(&sessions_dir, &id).map_err(|e| RunError::io("lock", &sessions_dir, e))?
        else {
            continue;
        };
        // Whoever held the claim before may have finished the task.
        if fs::symlink_metadata(&path).is_err() {
            claim.release(false);
            continue;
        }
        let report = run_session(link, run, &path)?;
        let Some(report) = report else {
            claim.release(false);
            continue;
        };
        claim.release(report.routed);
        let outcome = report.outcome;
        drained.sessions.push(report);
        if stops_draining(outcome) {
            drained.stopped = Some(outcome);
            return Ok(drained);
        }
    }
}

fn stopping(run: &AgentRun) -> bool {
    run.stop.load(Ordering::SeqCst)
}

const STOPPED: &str = "the run was told to stop (SIGTERM, SIGINT or SIGHUP)";

fn task_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".task").unwrap_or(&name).to_owned()
}

/// How the work part of a session ended.
struct End {
    outcome: Outcome,
    iterations: u32,
    /// The model's (or the CLI's) last text.
    text: Option<String>,
    detail: String,
}

impl End {
    fn new(outcome: Outcome, iterations: u32, text: Option<String>, detail: String) -> Self {
        Self {
            outcome,
            iterations,
            text,
            detail,
        }
    }
}

/// Records events of one session: every one carries the session and task.
struct Recorder<'a> {
    link: &'a mut dyn DaemonLink,
    session: SessionId,
    task: String,
}

impl Recorder<'_> {
    fn append(
        &mut self,
        payload: impl Into<Payload>,
        blobs: Vec<Vec<u8>>,
    ) -> Result<u64, RunError> {
        let payload = payload.into();
        let kind = payload.spec().name;
        let event = client_event(payload, self.session, &self.task, blobs)?;
        self.link
            .append(event)
            .map_err(|source| RunError::Record { kind, source })
    }
}

/// How long a run waits for the daemon to record a task's arrival (under
/// systemd the run can start before the daemon's watcher got to it).
const ARRIVAL_WAIT: Duration = Duration::from_secs(2);

/// A task is verified only if both the kernel (`lstat` and the file's ACL,
/// now) and the daemon's record of its arrival say so: only the daemon knows,
/// from its log, whether this file arrived before (moved back out of
/// `processed/`, or in from another agent's inbox). Not recorded after
/// [`ARRIVAL_WAIT`]: unverified.
fn settle_trust(
    link: &mut dyn DaemonLink,
    run: &AgentRun,
    task: &mut Task,
) -> Result<(), RunError> {
    if task.trust != Trust::Verified {
        return Ok(());
    }
    let waited = Instant::now();
    loop {
        let recorded = link
            .recorded_trust(&run.agent, &task.arrival)
            .map_err(|source| RunError::Record {
                kind: "inbox.arrived (query)",
                source,
            })?;
        match recorded {
            RecordedTrust::Unknown | RecordedTrust::Recorded(Trust::Verified, _) => return Ok(()),
            RecordedTrust::Recorded(Trust::Unverified, reason) => {
                task.trust = Trust::Unverified;
                task.trust_reason = reason;
                return Ok(());
            }
            RecordedTrust::Missing if waited.elapsed() < ARRIVAL_WAIT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            RecordedTrust::Missing => {
                task.trust = Trust::Unverified;
                task.trust_reason = "its arrival is not recorded by the daemon".to_owned();
                return Ok(());
            }
        }
    }
}

/// Runs one session for the task at `path`; `Ok(None)` if the task vanished
/// before it could be read. An `Err` means something could not be recorded
/// (or the task could not be examined): the task stays where it is.
fn run_session(
    link: &mut dyn DaemonLink,
    run: &AgentRun,
    path: &Path,
) -> Result<Option<SessionReport>, RunError> {
    let started = Instant::now();
    let deadline = started + run.session_limit;
    let mut task = match Task::read(path, &run.layout.trusted_group(), run.max_task_bytes) {
        Ok(Some(task)) => task,
        Ok(None) => return Ok(None),
        // Another user's file this agent may not open (mode 000, a private
        // ACL): no run of it can ever succeed.
        Err(e) => {
            let why = format!("it cannot be read: {e}");
            return set_aside(link, run, path, Trust::Unverified, why, 0, started).map(Some);
        }
    };
    settle_trust(link, run, &mut task)?;
    if let Some(why) = task.refused.clone() {
        return set_aside(link, run, path, task.trust, why, 0, started).map(Some);
    }
    // A FIFO, socket or device has no content to run: a model call would
    // only be told so, and a FIFO must never be opened (the open would wait
    // for a writer).
    if task.body == prompt::TaskBody::Special {
        let why = format!("it is {}", task.trust_reason);
        return set_aside(link, run, path, task.trust, why, 0, started).map(Some);
    }
    // A task that keeps failing (a provider that refuses it every time, a
    // runner that cannot do it) would otherwise cost a model call on every
    // retry, forever, and hold up everything behind it.
    let failures = link
        .failed_attempts(&run.agent, &task.id)
        .map_err(|source| RunError::Record {
            kind: "session.ended (query)",
            source,
        })?;
    if failures.len() >= run.max_attempts as usize {
        let last = failures.last().map(String::as_str).unwrap_or_default();
        let why = format!("{} sessions of it failed; the last: {last}", failures.len());
        let attempts = u32::try_from(failures.len()).unwrap_or(u32::MAX);
        return set_aside(link, run, path, task.trust, why, attempts, started).map(Some);
    }
    let session = SessionId(*uuid::Uuid::new_v4().as_bytes());
    let nonce = session.to_hex()[..16].to_owned();
    // A task may reuse an earlier task's name: never overwrite its answer.
    let response_path = free_name(&run.outbox(), &task.id, "response");
    // Made before any model call: a task whose answer cannot be written
    // (a name too long once `.response` is added, an outbox gone) must not
    // cost a model call on every retry.
    let response = match con_fs::StagedFile::begin(&response_path, 0o666) {
        Ok(staged) => staged,
        Err(e) => {
            let why = format!("its response cannot be written: {e}");
            return set_aside(link, run, path, task.trust, why, 0, started).map(Some);
        }
    };
    let workspace = run.workspace();
    let system = prompt::system_prompt(
        &PromptContext {
            agent: &run.agent,
            user: &run.user(),
            agents_md: &run.layout.agents_md(&run.agent),
            workspace: &workspace,
            skills: &run.layout.agent_skills(&run.agent),
            response_path: &response_path,
        },
        &task,
    );
    let mut rec = Recorder {
        link,
        session,
        task: task.id.clone(),
    };
    rec.append(
        SessionStarted {
            agent: run.agent.clone(),
            runner: run.runner.to_string(),
            provider: run.provider.clone(),
            model: run.model.clone(),
            trust: task.trust,
            prompt: BlobRef::of(system.as_bytes()),
        },
        vec![system.clone().into_bytes()],
    )?;
    let end = match &run.runner {
        Runner::Builtin => tool_loop(&mut rec, run, &task, &system, &nonce, deadline)?,
        Runner::Cli(cli) => exec_runner(
            &mut rec,
            run,
            &task,
            &system,
            &nonce,
            cli_command(*cli),
            deadline,
        )?,
        Runner::Exec(cmd) => exec_runner(&mut rec, run, &task, &system, &nonce, cmd, deadline)?,
    };
    finish(&mut rec, run, &task, end, response, &response_path, started).map(Some)
}

/// Moves a task that can never be run to `failed/`, in a session of its own
/// with no model call, recorded like any other (`session.started` with an
/// empty prompt, `task.routed` to `failed`, `task.failed` with the reason
/// and the `attempts` that failed before, `session.ended` as `set_aside`
/// with the reason): the next task runs, and the operator finds this one
/// where it was put, with the reason in the log.
fn set_aside(
    link: &mut dyn DaemonLink,
    run: &AgentRun,
    path: &Path,
    trust: Trust,
    why: String,
    attempts: u32,
    started: Instant,
) -> Result<SessionReport, RunError> {
    let mut rec = Recorder {
        link,
        session: SessionId(*uuid::Uuid::new_v4().as_bytes()),
        task: task_id(path),
    };
    rec.append(
        SessionStarted {
            agent: run.agent.clone(),
            runner: run.runner.to_string(),
            provider: run.provider.clone(),
            model: run.model.clone(),
            trust,
            prompt: BlobRef::of(b""),
        },
        vec![Vec::new()],
    )?;
    // The sender learns why, where it looks for the answer, when the task's
    // name allows a response at all.
    let response_path = free_name(&run.outbox(), &rec.task, "response");
    let notice = format!(
        "[con: this task was set aside in {} without being run: {why}]\n",
        run.failed().display()
    );
    let response = match con_fs::StagedFile::begin(&response_path, 0o666) {
        Err(_) => false,
        Ok(staged) => match answer(&mut rec, run, staged, &notice, &response_path) {
            Ok(()) => true,
            Err(Routing::Record(e)) => return Err(e),
            Err(Routing::Failed(..)) => false,
        },
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let (routed, detail) = match con_fs::move_without_replacing(path, &run.failed(), &file_name) {
        Ok(dest) => {
            let dest = dest.display().to_string();
            rec.append(
                TaskRouted {
                    from: run.agent.clone(),
                    to: TaskRouted::FAILED.into(),
                    path: dest.clone(),
                },
                Vec::new(),
            )?;
            rec.append(
                TaskFailed {
                    agent: run.agent.clone(),
                    path: dest,
                    reason: why.clone(),
                    attempts,
                },
                Vec::new(),
            )?;
            (true, why)
        }
        Err(e) => (false, format!("{why}; and it cannot be set aside: {e}")),
    };
    rec.append(
        SessionEnded {
            agent: run.agent.clone(),
            outcome: Outcome::SetAside,
            iterations: 0,
            duration_ms: millis(started.elapsed()),
            response: response.then(|| BlobRef::of(notice.as_bytes())),
            detail: detail.clone(),
        },
        if response {
            vec![notice.clone().into_bytes()]
        } else {
            Vec::new()
        },
    )?;
    Ok(SessionReport {
        session: rec.session,
        task: rec.task.clone(),
        outcome: Outcome::SetAside,
        iterations: 0,
        detail,
        response: response.then_some(response_path),
        routed,
    })
}

/// The command line of a known agent CLI, reading its prompt on stdin.
fn cli_command(cli: KnownCli) -> &'static str {
    match cli {
        KnownCli::Claude => "claude -p",
        KnownCli::Codex => "codex exec -",
        KnownCli::OpenCode => "opencode run",
    }
}

fn time_left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The built-in tool loop.
fn tool_loop(
    rec: &mut Recorder<'_>,
    run: &AgentRun,
    task: &Task,
    system: &str,
    nonce: &str,
    deadline: Instant,
) -> Result<End, RunError> {
    let mut messages = prompt::history(
        &run.processed(),
        &run.outbox(),
        run.history_tokens,
        &task.id,
        &run.layout.trusted_group(),
        nonce,
    );
    messages.push(Message::User {
        content: prompt::task_message(task, nonce, false),
    });
    let workspace = run.workspace();
    let ctx = ToolContext {
        env: tools::scrubbed_env(&run.home, &run.user(), &workspace),
        workspace,
        stop: run.stop.clone(),
    };
    // One request, grown by each turn: serialized as is for every call.
    let mut request = ChatRequest {
        system: system.to_owned(),
        messages,
        tools: tools::specs(),
        max_tokens: None,
    };
    let mut last_text: Option<String> = None;
    let limit = run.session_limit.as_secs();
    for iteration in 1..=run.max_iterations {
        let done = iteration - 1;
        if stopping(run) {
            return Ok(End::new(Outcome::Killed, done, last_text, STOPPED.into()));
        }
        let left = time_left(deadline);
        if left.is_zero() {
            return Ok(End::new(
                Outcome::Timeout,
                done,
                last_text,
                format!("the session wall clock ({limit} s) ran out"),
            ));
        }
        let encoded = match serde_json::to_vec(&request) {
            Ok(r) => r,
            Err(e) => {
                return Ok(End::new(
                    Outcome::RunnerError,
                    done,
                    last_text,
                    format!("cannot encode the model request: {e}"),
                ));
            }
        };
        let call = LlmCall {
            session: rec.session,
            task: Some(task.id.clone()),
            iteration,
            request: encoded,
        };
        let reply = match rec.link.model_call(call, left) {
            Ok(reply) => reply,
            Err(e) => {
                let (outcome, iterations) = match &e {
                    // Refused before the call was made.
                    LinkError::OverBudget(_) => (Outcome::Budget, done),
                    LinkError::Provider(_) => (Outcome::ProviderError, iteration),
                    LinkError::TimedOut(_) => (Outcome::Timeout, iteration),
                    LinkError::BadReply(_) | LinkError::Daemon(_) => {
                        (Outcome::RunnerError, iteration)
                    }
                };
                let detail = match outcome {
                    Outcome::Timeout => {
                        format!("the session wall clock ({limit} s) ran out waiting for the model")
                    }
                    _ => e.to_string(),
                };
                return Ok(End::new(outcome, iterations, last_text, detail));
            }
        };
        if let Some(text) = reply.content.as_ref().filter(|t| !t.trim().is_empty()) {
            last_text = Some(text.clone());
        }
        if reply.tool_calls.is_empty() {
            return Ok(End::new(
                Outcome::Ok,
                iteration,
                reply.content,
                String::new(),
            ));
        }
        if iteration == run.max_iterations {
            return Ok(End::new(
                Outcome::MaxIterations,
                iteration,
                last_text,
                format!(
                    "max_iterations ({}) reached; the {} tool call(s) of the last reply were not run",
                    run.max_iterations,
                    reply.tool_calls.len()
                ),
            ));
        }
        request.messages.push(Message::Assistant {
            content: reply.content.clone(),
            tool_calls: reply.tool_calls.clone(),
        });
        let mut results = Vec::with_capacity(reply.tool_calls.len());
        for (n, call) in reply.tool_calls.iter().enumerate() {
            if stopping(run) {
                return Ok(End::new(
                    Outcome::Killed,
                    iteration,
                    last_text,
                    STOPPED.into(),
                ));
            }
            let left = time_left(deadline);
            if left.is_zero() {
                return Ok(End::new(
                    Outcome::Timeout,
                    iteration,
                    last_text,
                    format!(
                        "the session wall clock ({limit} s) ran out; {} tool call(s) were not run",
                        reply.tool_calls.len() - n
                    ),
                ));
            }
            let arguments = serde_json::to_vec(&call.arguments).unwrap_or_default();
            rec.append(
                ToolCall {
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    arguments: BlobRef::of(&arguments),
                },
                vec![arguments],
            )?;
            let t0 = Instant::now();
            let out = tools::run(&ctx, &call.name, &call.arguments, left);
            record_result(rec, &call.id, &call.name, &out, t0.elapsed())?;
            results.push(ToolOutcome {
                call_id: call.id.clone(),
                content: out.content,
                is_error: out.is_error,
            });
        }
        request.messages.push(Message::Tool { results });
    }
    // Only reached with max_iterations == 0, which config validation rejects.
    Ok(End::new(
        Outcome::MaxIterations,
        0,
        last_text,
        format!("max_iterations ({}) reached", run.max_iterations),
    ))
}

fn record_result(
    rec: &mut Recorder<'_>,
    call_id: &str,
    tool: &str,
    out: &ToolOutput,
    duration: Duration,
) -> Result<u64, RunError> {
    let output = out.content.as_bytes().to_vec();
    rec.append(
        ToolResult {
            call_id: call_id.to_owned(),
            tool: tool.to_owned(),
            exit_code: out.exit_code,
            duration_ms: millis(duration),
            output: BlobRef::of(&output),
            truncated: out.truncated,
            error: out.error.clone(),
        },
        vec![output],
    )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An external agent CLI: the prompt on stdin, its standard output is the
/// response. Recorded as one tool call named after the runner.
fn exec_runner(
    rec: &mut Recorder<'_>,
    run: &AgentRun,
    task: &Task,
    system: &str,
    nonce: &str,
    command: &str,
    deadline: Instant,
) -> Result<End, RunError> {
    let input = format!("{system}\n\n{}\n", prompt::task_message(task, nonce, false));
    let workspace = run.workspace();
    let tool = run.runner.to_string();
    let call_id = "runner".to_owned();
    let arguments = serde_json::to_vec(&json!({
        "command": command,
        "cwd": workspace,
        "stdin": input,
    }))
    .unwrap_or_default();
    rec.append(
        ToolCall {
            call_id: call_id.clone(),
            tool: tool.clone(),
            arguments: BlobRef::of(&arguments),
        },
        vec![arguments],
    )?;
    let env = tools::scrubbed_env(&run.home, &run.user(), &workspace);
    let timeout = time_left(deadline);
    let t0 = Instant::now();
    let finished = ShellCommand {
        script: command,
        cwd: &workspace,
        env: &env,
        stdin: Some(input.into_bytes()),
        timeout,
        stdout_cap: RESPONSE_CAP,
        stderr: StderrMode::Separate(RUNNER_STDERR_CAP),
        stop: Some(&run.stop),
    }
    .run();
    let finished = match finished {
        Ok(f) => f,
        Err(e) => {
            let message = format!("cannot run {command:?} in {}: {e}", workspace.display());
            record_result(
                rec,
                &call_id,
                &tool,
                &ToolOutput::error(message.clone()),
                t0.elapsed(),
            )?;
            return Ok(End::new(Outcome::RunnerError, 1, None, message));
        }
    };
    let text = String::from_utf8_lossy(&finished.stdout.bytes).into_owned();
    let stderr = String::from_utf8_lossy(&finished.stderr.bytes)
        .trim()
        .to_owned();
    let error = if finished.stopped {
        Some(format!("{STOPPED}; the runner's process group was killed"))
    } else if finished.timed_out {
        Some(format!(
            "the session wall clock ({} s) ran out; the runner's process group was killed",
            run.session_limit.as_secs()
        ))
    } else if finished.exit_code != 0 {
        Some(format!(
            "{command:?} exited with code {}{}",
            finished.exit_code,
            if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            }
        ))
    } else {
        None
    };
    let out = ToolOutput {
        content: text.clone(),
        is_error: error.is_some(),
        exit_code: Some(finished.exit_code),
        truncated: finished.stdout.truncated(),
        error: error.clone(),
    };
    record_result(rec, &call_id, &tool, &out, finished.duration)?;
    let outcome = match (&error, finished.timed_out) {
        _ if finished.stopped => Outcome::Killed,
        (_, true) => Outcome::Timeout,
        (Some(_), false) => Outcome::RunnerError,
        (None, false) => Outcome::Ok,
    };
    Ok(End::new(outcome, 1, Some(text), error.unwrap_or_default()))
}

/// Writes the response and moves the task (for `ok`, `max_iterations` and
/// `timeout`), then closes the session.
fn finish(
    rec: &mut Recorder<'_>,
    run: &AgentRun,
    task: &Task,
    end: End,
    staged: con_fs::StagedFile,
    response_path: &Path,
    started: Instant,
) -> Result<SessionReport, RunError> {
    let End {
        mut outcome,
        iterations,
        text,
        mut detail,
    } = end;
    let mut response = None;
    let mut routed = false;
    if matches!(
        outcome,
        Outcome::Ok | Outcome::MaxIterations | Outcome::Timeout
    ) {
        let body = match outcome {
            Outcome::Ok => text.unwrap_or_default(),
            _ => format!(
                "[con: this session was stopped before the model finished: {detail}. \
                 The model's last text follows.]\n\n{}",
                text.as_deref().unwrap_or("(none)")
            ),
        };
        match route(rec, run, task, &body, staged, response_path) {
            Ok(moved) => {
                response = Some(body);
                routed = moved;
            }
            Err(Routing::Record(e)) => return Err(e),
            Err(Routing::Failed(why, wrote)) => {
                if wrote {
                    response = Some(body);
                }
                outcome = Outcome::RunnerError;
                detail = why;
            }
        }
    }
    let blob = response.as_ref().map(|r| r.as_bytes().to_vec());
    rec.append(
        SessionEnded {
            agent: run.agent.clone(),
            outcome,
            iterations,
            duration_ms: millis(started.elapsed()),
            response: blob.as_deref().map(BlobRef::of),
            detail: detail.clone(),
        },
        blob.into_iter().collect(),
    )?;
    Ok(SessionReport {
        session: rec.session,
        task: task.id.clone(),
        outcome,
        iterations,
        detail,
        response: response.map(|_| response_path.to_owned()),
        routed,
    })
}

enum Routing {
    /// An event could not be recorded.
    Record(RunError),
    /// A file operation failed; whether the response was written.
    Failed(String, bool),
}

/// Response to the outbox, task to `processed/`, each step recorded once
/// done. Returns whether the task moved.
fn route(
    rec: &mut Recorder<'_>,
    run: &AgentRun,
    task: &Task,
    body: &str,
    staged: con_fs::StagedFile,
    response_path: &Path,
) -> Result<bool, Routing> {
    answer(rec, run, staged, body, response_path)?;
    let file_name = task
        .path
        .file_name()
        .map(ToOwned::to_owned)
        .unwrap_or_default();
    let dest =
        con_fs::move_without_replacing(&task.path, &run.processed(), &file_name.to_string_lossy())
            .map_err(|e| {
                Routing::Failed(format!("cannot move {}: {e}", task.path.display()), true)
            })?;
    rec.append(
        TaskRouted {
            from: run.agent.clone(),
            to: TaskRouted::PROCESSED.into(),
            path: dest.display().to_string(),
        },
        Vec::new(),
    )
    .map_err(Routing::Record)?;
    Ok(true)
}

/// Writes `body` as the response through `staged` (made before any model
/// call) and records it routed to the outbox.
fn answer(
    rec: &mut Recorder<'_>,
    run: &AgentRun,
    mut staged: con_fs::StagedFile,
    body: &str,
    response_path: &Path,
) -> Result<(), Routing> {
    staged
        .write_all(body.as_bytes())
        .and_then(|()| staged.commit())
        .map_err(|e| {
            Routing::Failed(
                format!("cannot write the response {}: {e}", response_path.display()),
                false,
            )
        })?;
    rec.append(
        TaskRouted {
            from: run.agent.clone(),
            to: TaskRouted::OUTBOX.into(),
            path: response_path.display().to_string(),
        },
        Vec::new(),
    )
    .map_err(Routing::Record)?;
    Ok(())
}

/// `dir/<stem>.<ext>`, or `dir/<stem>-N.<ext>` for the first N free.
fn free_name(dir: &Path, stem: &str, ext: &str) -> std::path::PathBuf {
    (0..1000)
        .map(|n| {
            if n == 0 {
                dir.join(format!("{stem}.{ext}"))
            } else {
                dir.join(format!("{stem}-{n}.{ext}"))
            }
        })
        .find(|p| fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| dir.join(format!("{stem}-{}.{ext}", uuid::Uuid::new_v4().simple())))
}
