//! The daemon, black-box: the real `con daemon` in a temp root, real Linux
//! users connecting to its socket, kills and restarts.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use con_event::payloads::*;
use con_event::{Event, Payload, SessionId};
use con_protocol::{Client, ClientError, ErrorCode, Query};
use con_test_support::{Daemon, Root, TestGroup, TestUser, client_event, unique_prefix};

use crate::CON;

const CLIENT_ENV: &str = "CON_TEST_CLIENT";

fn tool_call(id: &str) -> Payload {
    ToolCall {
        call_id: id.into(),
        tool: "exec".into(),
        arguments: con_event::BlobRef::of(b"{}"),
    }
    .into()
}

/// `answer` (a client action's result line) is a refusal of class `code`
/// whose reason contains `why`.
fn expect_refused(answer: &str, code: &str, why: &str) {
    assert!(
        answer.starts_with(&format!("REFUSED {code} ")) && answer.contains(why),
        "wanted a {code} refusal saying {why:?}, got: {answer}"
    );
}

/// An operator's event carrying `marker`, with its (empty) steps attached.
fn marked_event(marker: &str) -> con_protocol::ClientEvent {
    let mut event = client_event(marked(marker), None);
    event.attachments = vec![Vec::new()];
    event
}

/// An operator's event carrying `marker` (as its command).
fn marked(marker: &str) -> Payload {
    ProvisionApplied {
        command: marker.into(),
        changes: 0,
        failed: vec![],
        disabled_agents: vec![],
        steps: con_event::BlobRef::of(b""),
    }
    .into()
}

/// The test binary re-run as another user: performs one client action and
/// prints its outcome on stdout.
#[test]
#[ignore = "client half of the identity tests; run as another user"]
fn client_as_other_user() {
    let action = std::env::var(CLIENT_ENV).unwrap();
    let socket = PathBuf::from(std::env::var("CON_TEST_SOCKET").unwrap());
    let outcome = |r: Result<(u64, con_event::Digest), ClientError>| match r {
        Ok((seq, _)) => format!("OK {seq}"),
        Err(ClientError::Refused { code, message }) => format!("REFUSED {code:?} {message}"),
        Err(e) => format!("ERROR {e}"),
    };
    let line = match action.as_str() {
        "tool-call" => outcome(
            Client::connect(&socket)
                .and_then(|mut c| c.append(client_event(tool_call("spoof"), None))),
        ),
        "backup" => outcome(
            Client::connect(&socket)
                .and_then(|mut c| c.backup(Path::new(&std::env::var("CON_TEST_DIR").unwrap()))),
        ),
        "session-for-other" => outcome(Client::connect(&socket).and_then(|mut c| {
            c.append(client_event(
                SessionStarted {
                    agent: "someone-else".into(),
                    runner: "builtin".into(),
                    provider: None,
                    model: None,
                    trust: Trust::Verified,
                    prompt: con_event::BlobRef::of(b""),
                }
                .into(),
                Some(SessionId([1; 16])),
            ))
        })),
        "inbox-arrived" => outcome(Client::connect(&socket).and_then(|mut c| {
            c.append(client_event(
                InboxArrived {
                    inbox: "x".into(),
                    path: "/x.task".into(),
                    owner_uid: 0,
                    owner_gid: 0,
                    mode: 0,
                    nlink: 1,
                    dev: 0,
                    inode: 0,
                    ctime_unix_nanos: 0,
                    symlink: false,
                    trust: Trust::Verified,
                    trust_reason: "forged".into(),
                    content: con_event::BlobRef::of(b""),
                }
                .into(),
                None,
            ))
        })),
        "start-session" => outcome(Client::connect(&socket).and_then(|mut c| {
            let me = std::env::var("CON_TEST_AGENT").unwrap();
            let prompt = format!("the prompt of {me}").into_bytes();
            let mut event = client_event(
                SessionStarted {
                    agent: me,
                    runner: "builtin".into(),
                    provider: None,
                    model: None,
                    trust: Trust::Unverified,
                    prompt: con_event::BlobRef::of(&prompt),
                }
                .into(),
                Some(SessionId([7; 16])),
            );
            event.attachments.push(prompt);
            c.append(event)
        })),
        "claim-verified" => outcome(Client::connect(&socket).and_then(|mut c| {
            let me = std::env::var("CON_TEST_AGENT").unwrap();
            let task = std::env::var("CON_TEST_TASK").unwrap();
            let mut event = client_event(
                SessionStarted {
                    agent: me,
                    runner: "builtin".into(),
                    provider: None,
                    model: None,
                    trust: Trust::Verified,
                    prompt: con_event::BlobRef::of(b""),
                }
                .into(),
                Some(SessionId(
                    *con_event::Digest::of(task.as_bytes())
                        .0
                        .first_chunk()
                        .unwrap(),
                )),
            );
            event.attachments.push(Vec::new());
            event.task = Some(task);
            c.append(event)
        })),
        "tool-in-session" => outcome(Client::connect(&socket).and_then(|mut c| {
            let mut event = client_event(tool_call("in-session"), Some(SessionId([7; 16])));
            event.attachments.push(b"{}".to_vec());
            c.append(event)
        })),
        "tool-in-unstarted-session" => outcome(Client::connect(&socket).and_then(|mut c| {
            c.append(client_event(tool_call("nowhere"), Some(SessionId([9; 16]))))
        })),
        "unreferenced-attachment" => outcome(Client::connect(&socket).and_then(|mut c| {
            let mut e = client_event(tool_call("stuffed"), Some(SessionId([7; 16])));
            e.attachments.push(b"{}".to_vec());
            e.attachments.push(vec![0u8; 4096]);
            c.append(e)
        })),
        "missing-attachment" => {
            outcome(Client::connect(&socket).and_then(|mut c| {
                c.append(client_event(tool_call("bare"), Some(SessionId([7; 16]))))
            }))
        }
        "read-other-agent" => match Client::connect(&socket).and_then(|mut c| {
            c.query(
                Query {
                    from_seq: 1,
                    agent: Some("concierge".into()),
                    ..Query::default()
                },
                |_| true,
            )
        }) {
            Err(ClientError::Refused { code, message }) => format!("REFUSED {code:?} {message}"),
            other => format!("UNEXPECTED {other:?}"),
        },
        "read-own" => {
            let mut kinds = Vec::new();
            let r = Client::connect(&socket).and_then(|mut c| {
                c.query(
                    Query {
                        from_seq: 1,
                        ..Query::default()
                    },
                    |b| {
                        kinds.push(
                            Event::from_stored(&b)
                                .unwrap()
                                .envelope
                                .actor
                                .agent
                                .unwrap_or_default(),
                        );
                        true
                    },
                )
            });
            format!("{r:?} {}", kinds.join(","))
        }
        "every-kind" => every_kind(&socket, std::env::var("CON_TEST_AGENT").ok()),
        "blob" => {
            let digest =
                con_event::Digest::from_hex(&std::env::var("CON_TEST_BLOB").unwrap()).unwrap();
            match Client::connect(&socket).and_then(|mut c| c.blob(digest)) {
                Ok(bytes) => format!("BLOB {}", bytes.len()),
                Err(ClientError::Refused { code, message }) => {
                    format!("REFUSED {code:?} {message}")
                }
                Err(e) => format!("ERROR {e}"),
            }
        }
        "blobs" => {
            let digests: Vec<con_event::Digest> = std::env::var("CON_TEST_BLOB")
                .unwrap()
                .split(',')
                .map(|d| con_event::Digest::from_hex(d).unwrap())
                .collect();
            match Client::connect(&socket).and_then(|mut c| c.blobs(&digests)) {
                Ok(answers) => answers
                    .into_iter()
                    .map(|a| match a {
                        Ok(bytes) => format!("BLOB {}", bytes.len()),
                        Err(ClientError::Refused { code, .. }) => format!("REFUSED {code:?}"),
                        Err(e) => format!("ERROR {e}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(e) => format!("ERROR {e}"),
            }
        }
        "frame-flood" => {
            let len: usize = std::env::var("CON_TEST_FRAME").unwrap().parse().unwrap();
            let threads: Vec<_> = (0..64)
                .map(|_| {
                    let socket = socket.clone();
                    std::thread::spawn(move || {
                        let Ok(mut s) = UnixStream::connect(&socket) else {
                            return "unreachable".to_owned();
                        };
                        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                        // A refused frame is not read: the rest of it stalls.
                        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut frame = u32::try_from(len).unwrap().to_be_bytes().to_vec();
                        frame.push(con_protocol::PROTOCOL_VERSION);
                        frame.resize(4 + len, 0xff);
                        // The daemon may answer and close before taking it all.
                        let _ = s.write_all(&frame);
                        let mut reply = Vec::new();
                        let _ = s.read_to_end(&mut reply);
                        match con_protocol::decode_frame::<con_protocol::Response>(&reply) {
                            Ok(Some((con_protocol::Response::Error { code, .. }, _))) => {
                                format!("{code:?}")
                            }
                            other => format!("{other:?}"),
                        }
                    })
                })
                .collect();
            let mut answers: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            answers.sort();
            answers.dedup();
            format!("ANSWERS {}", answers.join(","))
        }
        "appends" => appends(&socket),
        other => panic!("unknown action {other}"),
    };
    println!("RESULT {line}");
}

/// The content of attachment `i` of connection `conn` in [`appends`]:
/// distinct per event (blobs are content-addressed, so equal ones would be
/// stored once), `size` bytes.
fn attachment(tag: &str, conn: usize, i: usize, size: usize) -> Vec<u8> {
    let mut bytes = format!("{tag}-{conn}-{i}-").into_bytes();
    bytes.resize(size, 0xab);
    bytes
}

/// `CON_TEST_CONNS` connections (default 1) each append `CON_TEST_COUNT`
/// `tool.call`s with an attachment of `CON_TEST_SIZE` bytes and a call id
/// of `CON_TEST_CALL_ID_LEN` bytes (default 8), all in one session this
/// agent opened first; every refusal is counted, none stops the others.
/// Reports `OK n REFUSED m CODES c1,c2 FIRST <first refusal>`.
fn appends(socket: &Path) -> String {
    let var =
        |name: &str, default: usize| std::env::var(name).map_or(default, |v| v.parse().unwrap());
    let (conns, count, size) = (
        var("CON_TEST_CONNS", 1),
        var("CON_TEST_COUNT", 1),
        var("CON_TEST_SIZE", 1024),
    );
    let id_len = var("CON_TEST_CALL_ID_LEN", 8);
    let tag = std::env::var("CON_TEST_TAG").unwrap_or_default();
    let me = std::env::var("CON_TEST_AGENT").unwrap();
    let session = SessionId(
        *con_event::Digest::of(tag.as_bytes())
            .0
            .first_chunk()
            .unwrap(),
    );
    let mut opening = client_event(
        SessionStarted {
            agent: me,
            runner: "builtin".into(),
            provider: None,
            model: None,
            trust: Trust::Unverified,
            prompt: con_event::BlobRef::of(b"flood"),
        }
        .into(),
        Some(session),
    );
    opening.attachments.push(b"flood".to_vec());
    let opened = Client::connect(socket).and_then(|mut c| c.append(opening));
    assert!(opened.is_ok(), "{opened:?}");
    let outcomes: Vec<Vec<Result<u64, (ErrorCode, String)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..conns)
            .map(|conn| {
                let tag = &tag;
                scope.spawn(move || {
                    let mut client = Client::connect(socket).unwrap();
                    (0..count)
                        .map(|i| {
                            let bytes = attachment(tag, conn, i, size);
                            let mut call_id = format!("{conn}-{i}-");
                            call_id.extend(std::iter::repeat_n(
                                'x',
                                id_len.saturating_sub(call_id.len()),
                            ));
                            let mut event = client_event(
                                ToolCall {
                                    call_id,
                                    tool: "exec".into(),
                                    arguments: con_event::BlobRef::of(&bytes),
                                }
                                .into(),
                                Some(session),
                            );
                            event.attachments.push(bytes);
                            match client.append(event) {
                                Ok((seq, _)) => Ok(seq),
                                Err(ClientError::Refused { code, message }) => Err((code, message)),
                                Err(e) => panic!("append: {e}"),
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<_> = outcomes.into_iter().flatten().collect();
    let ok = all.iter().filter(|o| o.is_ok()).count();
    let mut codes: Vec<String> = all
        .iter()
        .filter_map(|o| o.as_ref().err().map(|(c, _)| format!("{c:?}")))
        .collect();
    codes.sort();
    codes.dedup();
    let first = all
        .iter()
        .find_map(|o| o.as_ref().err().map(|(_, m)| m.clone()))
        .unwrap_or_default();
    format!(
        "OK {ok} REFUSED {} CODES {} FIRST {first}",
        all.len() - ok,
        codes.join(",")
    )
}

/// Appends a sample of every kind (an agent: in a session it opened, with
/// itself as subject where the kind has one) and reports, sorted, the kinds
/// the daemon accepted: `ACCEPTED k1,k2 REFUSED k3:Forbidden,…`.
fn every_kind(socket: &Path, agent: Option<String>) -> String {
    let mut client = Client::connect(socket).unwrap();
    let mut session = None;
    let mut payloads = con_test_support::current_samples();
    if let Some(me) = agent.as_deref().filter(|a| !a.is_empty()) {
        session = Some(SessionId([0x5e; 16]));
        // Its own session first, so that run kinds have somewhere to go.
        let mut opening = client_event(
            SessionStarted {
                agent: me.into(),
                runner: "builtin".into(),
                provider: None,
                model: None,
                trust: Trust::Unverified,
                prompt: con_event::BlobRef::of(b"p"),
            }
            .into(),
            session,
        );
        opening.attachments.push(b"p".to_vec());
        let opened = client.append(opening);
        assert!(opened.is_ok(), "{opened:?}");
        for p in &mut payloads {
            match p {
                Payload::SessionStarted(x) => {
                    x.agent = me.into();
                    // A verified claim needs a recorded verified arrival.
                    x.trust = Trust::Unverified;
                }
                Payload::SessionEnded(x) => x.agent = me.into(),
                Payload::TaskRouted(x) => x.from = me.into(),
                Payload::TaskFailed(x) => x.agent = me.into(),
                _ => {}
            }
        }
    }
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for payload in payloads {
        let name = payload.spec().name;
        let attachments = con_test_support::attachments_for(&payload);
        let mut event = client_event(payload, session);
        event.attachments = attachments;
        match client.append(event) {
            Ok(_) => accepted.push(name.to_owned()),
            Err(ClientError::Refused { code, .. }) => refused.push(format!("{name}:{code:?}")),
            Err(e) => panic!("{name}: {e}"),
        }
    }
    accepted.sort();
    refused.sort();
    format!(
        "ACCEPTED {} REFUSED {}",
        accepted.join(","),
        refused.join(",")
    )
}

fn run_as(user: &TestUser, root: &Root, action: &str) -> String {
    run_as_with(user, root, action, &[])
}

/// Runs `action` in [`client_as_other_user`] as `user`, with `env` added;
/// its agent name is the user's name without the root's user prefix.
fn run_as_with(user: &TestUser, root: &Root, action: &str, env: &[(&str, String)]) -> String {
    let agent = user
        .name
        .strip_prefix(root.user_prefix())
        .unwrap_or_default();
    let exe = std::env::current_exe().unwrap();
    let out = user
        .command(&exe)
        .args([
            "--ignored",
            "--exact",
            "daemon::client_as_other_user",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CLIENT_ENV, action)
        .env("CON_TEST_SOCKET", root.socket())
        .env("CON_TEST_AGENT", agent)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| {
            panic!(
                "no result from {action} as {}: {stdout}{}",
                user.name,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn all_events(root: &Root) -> Vec<Event> {
    con_test_support::all_events(&root.socket())
}

#[test]
fn identity_comes_from_the_kernel_and_bounds_what_an_agent_may_append_or_read() {
    let root = Root::new();
    let _daemon = Daemon::start(CON, &root);
    // Configured agents of the default profile, plus users that are not.
    let sysadmin = TestUser::create(&root.user("sysadmin"));
    let strategist = TestUser::create(&root.user("strategist"));
    let unconfigured = TestUser::create(&root.user("scout"));
    let stranger = TestUser::unique("cx");

    let ok = run_as(&sysadmin, &root, "start-session");
    assert!(ok.starts_with("OK "), "{ok}");
    let seq: u64 = ok[3..].parse().unwrap();
    let event = all_events(&root)
        .into_iter()
        .find(|e| e.seq() == seq)
        .unwrap();
    assert_eq!(
        event.envelope.actor.uid, sysadmin.uid,
        "stamped with the peer's uid"
    );
    assert_eq!(event.envelope.actor.agent.as_deref(), Some("sysadmin"));

    let refused = run_as(&sysadmin, &root, "session-for-other");
    assert!(refused.starts_with("REFUSED Forbidden"), "{refused}");
    assert!(refused.contains("about agent someone-else"), "{refused}");
    let refused = run_as(&sysadmin, &root, "inbox-arrived");
    expect_refused(&refused, "Forbidden", "daemon only");

    // Sessions belong to the agent that started them.
    assert!(run_as(&sysadmin, &root, "tool-in-session").starts_with("OK "));
    let forged = run_as(&strategist, &root, "tool-in-session");
    expect_refused(&forged, "Forbidden", "belongs to agent sysadmin");
    let orphan = run_as(&sysadmin, &root, "tool-in-unstarted-session");
    expect_refused(&orphan, "Forbidden", "not started");
    // Nothing is stored that the payload does not reference.
    let stuffed = run_as(&sysadmin, &root, "unreferenced-attachment");
    expect_refused(&stuffed, "Rejected", "not referenced");
    // Nor is anything referenced left out.
    let bare = run_as(&sysadmin, &root, "missing-attachment");
    expect_refused(&bare, "Rejected", "not attached");

    for nobody in [&stranger, &unconfigured] {
        let refused = run_as(nobody, &root, "start-session");
        assert!(refused.starts_with("REFUSED Forbidden"), "{refused}");
        assert!(
            refused.contains("neither an operator nor an agent"),
            "{refused}"
        );
    }

    // Reading: only its own events.
    let refused = run_as(&sysadmin, &root, "read-other-agent");
    assert!(refused.starts_with("REFUSED Forbidden"), "{refused}");
    let own = run_as(&strategist, &root, "read-own");
    assert!(
        own.starts_with("Ok(") && own.ends_with(") "),
        "strategist recorded nothing, so sees nothing: {own}"
    );
    let own = run_as(&sysadmin, &root, "read-own");
    assert!(own.ends_with(" sysadmin,sysadmin"), "only its own: {own}");

    // Nothing forged reached the log.
    assert_eq!(all_events(&root).len(), 2);
}

#[test]
fn an_agent_cannot_open_the_log_files() {
    let root = Root::new();
    let _daemon = Daemon::start(CON, &root);
    let reader = TestUser::create(&root.user("concierge"));
    for target in [root.db().join("db"), root.db().join("conf"), root.db()] {
        let out = reader
            .command(Path::new("/bin/cat"))
            .arg(&target)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = reader
        .command(Path::new("/bin/ls"))
        .arg(root.db())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the log directory is not listable");
    // But the socket is reachable.
    assert!(run_as(&reader, &root, "start-session").starts_with("OK "));
}

fn raw_exchange(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply); // the daemon closes after a bad frame
    reply
}

/// Sends `bytes` on a fresh connection; the daemon must answer with exactly
/// one error of class `code`, then close.
fn expect_refusal(socket: &Path, bytes: &[u8], code: ErrorCode) {
    let reply = raw_exchange(socket, bytes);
    let (resp, used) = con_protocol::decode_frame::<con_protocol::Response>(&reply)
        .unwrap()
        .unwrap();
    assert_eq!(used, reply.len(), "closed after one reply");
    match resp {
        con_protocol::Response::Error { code: got, .. } => assert_eq!(got, code),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_and_oversized_frames_get_an_error_and_a_closed_connection() {
    let root = Root::new();
    let _daemon = Daemon::start(CON, &root);
    // Garbage body with a plausible length.
    let mut garbage = 9u32.to_be_bytes().to_vec();
    garbage.push(con_protocol::PROTOCOL_VERSION);
    garbage.extend_from_slice(&[0xff; 8]);
    expect_refusal(&root.socket(), &garbage, ErrorCode::BadFrame);
    // A length far over the limit: refused before any body is read.
    expect_refusal(&root.socket(), &u32::MAX.to_be_bytes(), ErrorCode::TooLarge);
    // Wrong version, e.g. a client of protocol version 1: told so plainly.
    let mut frame = con_protocol::encode_frame(&con_protocol::Request::Status).unwrap();
    frame[4] = 1;
    expect_refusal(&root.socket(), &frame, ErrorCode::BadFrame);
    let reply = raw_exchange(&root.socket(), &frame);
    let (resp, _) = con_protocol::decode_frame::<con_protocol::Response>(&reply)
        .unwrap()
        .unwrap();
    assert_eq!(
        resp,
        con_protocol::Response::Error {
            code: ErrorCode::BadFrame,
            message: "protocol version 1 is not supported (this is 2)".into()
        }
    );
    // A payload that is not what its kind says.
    let mut c = Client::connect(&root.socket()).unwrap();
    let mut bad = marked_event("test");
    bad.payload.truncate(3);
    assert!(matches!(
        c.append(bad),
        Err(ClientError::Refused {
            code: ErrorCode::Rejected,
            ..
        })
    ));
    // The daemon still serves.
    assert!(c.append(marked_event("test")).is_ok());
    assert_eq!(all_events(&root).len(), 1);
}

fn marker_of(event: &Event) -> Option<String> {
    match &event.payload {
        Payload::ProvisionApplied(p) => Some(p.command.clone()),
        _ => None,
    }
}

/// 4 clients append concurrently; the daemon is SIGKILLed at random moments
/// and restarted. Every acknowledged event is present exactly once and the
/// chain verifies.
#[test]
fn acknowledged_appends_survive_daemon_sigkill() {
    let root = Root::new();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    for round in 0..8 {
        let mut daemon = Daemon::start(CON, &root);
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let socket = root.socket();
                std::thread::spawn(move || {
                    let mut acks = Vec::new();
                    let Ok(mut client) = Client::connect(&socket) else {
                        return acks;
                    };
                    for n in 0.. {
                        let marker = format!("r{round}c{c}n{n}");
                        match client.append(marked_event(&marker)) {
                            Ok((seq, _)) => acks.push((seq, marker)),
                            Err(_) => break,
                        }
                    }
                    acks
                })
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 400));
        daemon.kill9();
        for c in clients {
            acked.extend(c.join().unwrap());
        }
    }
    let _daemon = Daemon::start(CON, &root);
    let events = all_events(&root);
    let mut count: HashMap<String, u32> = HashMap::new();
    for e in &events {
        if let Some(m) = marker_of(e) {
            *count.entry(m).or_default() += 1;
        }
    }
    assert!(
        acked.len() > 100,
        "only {} acknowledged appends",
        acked.len()
    );
    for (seq, marker) in &acked {
        assert_eq!(
            count.get(marker),
            Some(&1),
            "{marker} (acked as seq {seq}) must be present exactly once"
        );
        let e = events.iter().find(|e| e.seq() == *seq).unwrap();
        assert_eq!(marker_of(e).as_deref(), Some(marker.as_str()));
    }
    assert!(count.values().all(|&n| n == 1), "no event is duplicated");
    drop(_daemon);
    let out = Command::new(CON)
        .args(["verify", "--db", root.db().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let root = Root::new();
    let mut daemon = Daemon::start(CON, &root);
    let socket = root.socket();
    let client = std::thread::spawn(move || {
        let mut client = Client::connect(&socket).unwrap();
        let mut acks = Vec::new();
        for n in 0.. {
            match client.append(marked_event(&format!("t{n}"))) {
                Ok((seq, _)) => acks.push(seq),
                Err(_) => break,
            }
        }
        acks
    });
    std::thread::sleep(Duration::from_millis(300));
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(!root.socket().exists(), "socket removed");
    let acks = client.join().unwrap();
    assert!(!acks.is_empty());
    let store = con_store::Store::open_for_inspection(&root.db()).unwrap();
    let report = store.verify().unwrap().unwrap();
    assert!(
        report.events >= *acks.last().unwrap(),
        "every acknowledged append is in the log"
    );
}

#[test]
fn logs_follow_streams_new_events_and_status_reports_the_head() {
    let root = Root::new();
    let _daemon = Daemon::start(CON, &root);
    let mut follower = Command::new(CON)
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "logs",
            "-f",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = Client::connect(&root.socket()).unwrap();
    for n in 0..3 {
        c.append(marked_event(&format!("f{n}"))).unwrap();
    }
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "provision.applied");
        assert_eq!(v["actor"]["uid"], 0);
        seen.push(v["payload"]["command"].as_str().unwrap().to_owned());
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    assert_eq!(seen, ["f0", "f1", "f2"]);

    let out = Command::new(CON)
        .args(["--root", root.path().to_str().unwrap(), "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["log"]["head_seq"], 3);
    assert_eq!(v["journal_mirror"]["state"], "healthy");
    assert_eq!(v["caller"]["role"], "operator");
}

/// Values that differ between runs (ids, hashes, times, inodes, the temp
/// root in paths), replaced so the rest of a JSON document can be
/// snapshot-tested.
fn redact(v: serde_json::Value, root: &Root) -> serde_json::Value {
    let root = root.path().to_str().unwrap().to_owned();
    redact_under(v, &root)
}

fn redact_under(mut v: serde_json::Value, root: &str) -> serde_json::Value {
    const VOLATILE: &[&str] = &[
        "log_id",
        "head_hash",
        "hash",
        "prev_hash",
        "id",
        "time",
        "ts_unix_nanos",
        "session",
        "digest",
        "uid",
        "ctime_unix_nanos",
        "dev",
        "inode",
    ];
    match &mut v {
        serde_json::Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if VOLATILE.contains(&k.as_str()) && !x.is_null() {
                    *x = "[redacted]".into();
                } else {
                    *x = redact_under(x.take(), root);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for x in items.iter_mut() {
                *x = redact_under(x.take(), root);
            }
        }
        serde_json::Value::String(text) => *text = text.replace(root, "[root]"),
        _ => {}
    }
    v
}

fn con(root: &Root, args: &[&str]) -> std::process::Output {
    let out = Command::new(CON)
        .args(["--root", root.path().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "con {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `con status --json` and `con logs --json` are documented interfaces
/// (docs/status-json.md, docs/event-json.md): their shape is pinned. The
/// status lists every configured agent, with or without events, and keeps
/// the outer inbox out of the agent rows.
#[test]
fn status_and_logs_json_are_the_documented_views() {
    let root = Root::new();
    let inbox = root.path().join("srv/con/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("hello.task"), "hello").unwrap();
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let sysadmin = TestUser::create(&root.user("sysadmin"));
    assert!(run_as(&sysadmin, &root, "start-session").starts_with("OK "));
    Client::connect(&root.socket())
        .unwrap()
        .append(marked_event("bootstrap"))
        .unwrap();
    let start = Instant::now();
    while all_events(&root).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "arrival not recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let status: serde_json::Value =
        serde_json::from_slice(&con(&root, &["status", "--json"]).stdout).unwrap();
    insta::assert_json_snapshot!("status_json", redact(status, &root));

    let logs = String::from_utf8(con(&root, &["logs", "--json"]).stdout).unwrap();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| {
            let view: con_event::EventJson = serde_json::from_str(l).unwrap();
            // Every line converts back to the stored event (hash checked).
            view.to_event().unwrap();
            redact(serde_json::from_str(l).unwrap(), &root)
        })
        .collect();
    insta::assert_json_snapshot!("logs_json", events);

    // The filters a reader uses to assemble a task or a session.
    let kinds = |args: &[&str]| -> Vec<String> {
        String::from_utf8(con(&root, args).stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["kind"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(
        kinds(&["logs", "--json", "--task", "hello"]),
        ["inbox.arrived"]
    );
    assert!(kinds(&["logs", "--json", "--task", "nothing"]).is_empty());
    assert_eq!(
        kinds(&["logs", "--json", "--session", &"07".repeat(16)]),
        ["session.started"]
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_con"))
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "logs",
            "--session",
            "xyz",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--session \"xyz\": not a session id"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Names an agent controls cannot forge lines in the text views.
#[test]
fn a_task_name_with_a_newline_and_escape_cannot_forge_a_log_line() {
    let root = Root::new();
    let inbox = root.path().join("srv/con/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let evil = "x\n    99999  2026-12-07T00:00:00.000Z  inbox.arrived  sysadmin  verified, uid 0\u{1b}[8m.task";
    std::fs::write(inbox.join(evil), "hi").unwrap();
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let start = Instant::now();
    while all_events(&root).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "arrival not recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = String::from_utf8(con(&root, &["logs"]).stdout).unwrap();
    assert_eq!(out.lines().count(), all_events(&root).len(), "{out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(
        out.contains("\\n    99999"),
        "escaped, still readable: {out}"
    );
}

#[test]
fn without_a_daemon_clients_fail_with_one_clear_line() {
    let root = Root::new();
    let out = Command::new(CON)
        .args(["--root", root.path().to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the con daemon"), "{err}");
}

#[test]
fn readiness_is_notified_to_systemd() {
    let root = Root::new();
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(CON)
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "daemon",
            "--supervisor",
            "systemd",
        ])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    // READY is sent once the socket accepts.
    let connected = UnixStream::connect(root.socket()).is_ok();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let n = notify.recv(&mut buf).unwrap();
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(child.wait().unwrap().success());
    assert!(message.contains("READY=1"), "{message}");
    assert!(connected, "READY before the socket accepted");
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
}

#[test]
fn a_flood_of_tasks_is_recorded_once_each_in_order() {
    let root = Root::new();
    let inbox = root.path().join("srv/con/agents/sysadmin/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    // Some tasks wait before the daemon starts: recorded once at startup.
    for n in 0..100 {
        std::fs::write(inbox.join(format!("{n:06}.task")), format!("task {n}")).unwrap();
    }
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    for n in 100..10_000 {
        let tmp = inbox.join(format!(".{n:06}.tmp"));
        std::fs::write(&tmp, format!("task {n}")).unwrap();
        std::fs::rename(&tmp, inbox.join(format!("{n:06}.task"))).unwrap();
    }
    let start = Instant::now();
    let names = loop {
        let names: Vec<String> = all_events(&root)
            .into_iter()
            .filter_map(|e| match e.payload {
                Payload::InboxArrived(a) => Some(a.path.rsplit('/').next().unwrap().to_owned()),
                _ => None,
            })
            .collect();
        if names.len() >= 10_000 || start.elapsed() > Duration::from_secs(120) {
            break names;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected: Vec<String> = (0..10_000).map(|n| format!("{n:06}.task")).collect();
    assert_eq!(names.len(), 10_000, "each task recorded exactly once");
    assert_eq!(names, expected, "in order");
    // A restart records nothing again.
    drop(_daemon);
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let again = all_events(&root)
        .iter()
        .filter(|e| matches!(e.payload, Payload::InboxArrived(_)))
        .count();
    assert_eq!(again, 10_000);
}

#[test]
fn a_query_limit_ends_the_answer_and_the_daemon_keeps_serving() {
    let root = Root::new();
    let _daemon = Daemon::start(CON, &root);
    let mut c = Client::connect(&root.socket()).unwrap();
    for n in 0..5 {
        c.append(marked_event(&format!("l{n}"))).unwrap();
    }
    for (args, lines) in [
        (vec!["-n", "2"], 2),
        (vec!["--kind", "provision.applied", "-n", "3"], 3),
        (vec!["--kind", "run.exited"], 0),
    ] {
        let mut cmd = Command::new(CON);
        cmd.args(["--root", root.path().to_str().unwrap(), "logs"])
            .args(&args);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            lines,
            "{args:?}"
        );
    }
    // Still responsive (a spinning query would hold a worker).
    let status = Client::connect(&root.socket()).unwrap().status().unwrap();
    assert_eq!(status.log.unwrap().head_seq, 5);
}

fn kinds_with(authority: con_event::Authority) -> Vec<&'static str> {
    let mut names: Vec<_> = con_event::KINDS
        .iter()
        .filter(|k| k.authority == authority)
        .map(|k| k.name)
        .collect();
    names.sort_unstable();
    names
}

fn expected(accepted: &[&str]) -> String {
    let mut refused: Vec<String> = con_event::KINDS
        .iter()
        .filter(|k| !accepted.contains(&k.name))
        .map(|k| format!("{}:Forbidden", k.name))
        .collect();
    refused.sort();
    format!(
        "ACCEPTED {} REFUSED {}",
        accepted.join(","),
        refused.join(",")
    )
}

#[test]
fn daemon_kinds_are_refused_from_root_trusted_members_and_agents_alike() {
    let root = Root::new();
    let sysadmin = TestUser::create(&root.user("sysadmin"));
    let member = TestUser::unique("cx");
    // The trusted group is `<group prefix>trusted`.
    let group_prefix = unique_prefix("ctg");
    let trusted = TestGroup::create(&format!("{group_prefix}trusted"));
    trusted.add(&member);
    let _daemon = Daemon::start_with(CON, &root, &[], &[("CON_GROUP_PREFIX", &group_prefix)]);
    let operator_kinds = kinds_with(con_event::Authority::Operator);
    let run_kinds = kinds_with(con_event::Authority::AgentRun);
    assert_eq!(operator_kinds, ["provision.applied"]);
    assert_eq!(
        run_kinds,
        [
            "session.ended",
            "session.started",
            "task.failed",
            "task.routed",
            "tool.call",
            "tool.result"
        ]
    );

    // Root, through the socket like any client.
    assert_eq!(every_kind(&root.socket(), None), expected(&operator_kinds));
    // A non-root member of the trusted group.
    assert_eq!(
        run_as(&member, &root, "every-kind"),
        expected(&operator_kinds)
    );
    // An agent: its own run kinds, nothing else.
    assert_eq!(run_as(&sysadmin, &root, "every-kind"), expected(&run_kinds));

    // What reached the log: the two provision.applied, the agent's session
    // and its run events; not one daemon kind from a client.
    let daemon_kinds = kinds_with(con_event::Authority::Daemon);
    let events = all_events(&root);
    assert!(
        events
            .iter()
            .all(|e| !daemon_kinds.contains(&e.payload.spec().name)),
        "{:?}",
        events
            .iter()
            .map(|e| e.payload.spec().name)
            .collect::<Vec<_>>()
    );
    assert_eq!(events.len(), 2 + 1 + run_kinds.len());
}

#[test]
fn an_agent_records_nothing_outside_a_session_it_opened() {
    let root = Root::new();
    let _daemon = Daemon::start(CON, &root);
    let sysadmin = TestUser::create(&root.user("sysadmin"));
    let loose = run_as(&sysadmin, &root, "tool-call");
    expect_refused(&loose, "Forbidden", "session the agent opened");
    assert!(all_events(&root).is_empty());
}

#[test]
fn an_agent_reads_the_blobs_of_its_own_events_and_no_other_agents() {
    let root = Root::new();
    let _daemon = Daemon::start(CON, &root);
    let sysadmin = TestUser::create(&root.user("sysadmin"));
    let strategist = TestUser::create(&root.user("strategist"));
    assert!(run_as(&sysadmin, &root, "start-session").starts_with("OK "));
    let prompt = b"the prompt of sysadmin";
    let digest = con_event::Digest::of(prompt);
    let fetch = |user: &TestUser, digest: con_event::Digest| {
        run_as_with(user, &root, "blob", &[("CON_TEST_BLOB", digest.to_hex())])
    };

    assert_eq!(fetch(&sysadmin, digest), format!("BLOB {}", prompt.len()));
    let refused = fetch(&strategist, digest);
    expect_refused(&refused, "Forbidden", "may read");
    // Refused the same way whether or not the blob exists: no probing.
    let missing = fetch(&strategist, con_event::Digest::of(b"nothing"));
    assert_eq!(
        missing.replace(&con_event::Digest::of(b"nothing").to_hex(), "X"),
        refused.replace(&digest.to_hex(), "X")
    );
    // Asked for together, each is judged on its own, in order.
    let batch = |user: &TestUser, digests: &[con_event::Digest]| {
        let list: Vec<String> = digests.iter().map(|d| d.to_hex()).collect();
        run_as_with(user, &root, "blobs", &[("CON_TEST_BLOB", list.join(","))])
    };
    let nothing = con_event::Digest::of(b"nothing");
    assert_eq!(
        batch(&sysadmin, &[digest, nothing, digest]),
        format!("BLOB {0}; REFUSED Forbidden; BLOB {0}", prompt.len())
    );
    assert_eq!(
        batch(&strategist, &[digest, nothing]),
        "REFUSED Forbidden; REFUSED Forbidden"
    );
    // An operator reads any blob, in chunks, checked against its digest.
    let mut client = Client::connect(&root.socket()).unwrap();
    assert_eq!(client.blob(digest).unwrap(), prompt);
    match client.blob(con_event::Digest::of(b"nothing")) {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    // Many at once, in several batches: each answer in its place, a
    // refusal only that blob's, the connection still usable.
    let wanted: Vec<_> = (0..3 * con_protocol::BLOB_PIPELINE + 5)
        .map(|i| if i % 7 == 3 { nothing } else { digest })
        .collect();
    let answers = client.blobs(&wanted).unwrap();
    assert_eq!(answers.len(), wanted.len());
    for (want, answer) in wanted.iter().zip(answers) {
        match answer {
            Ok(bytes) if *want == digest => assert_eq!(bytes, prompt),
            Err(ClientError::Refused { code, .. }) if *want == nothing => {
                assert_eq!(code, ErrorCode::NotFound)
            }
            other => panic!("{want}: {other:?}"),
        }
    }
    assert_eq!(client.blob(digest).unwrap(), prompt);
    // A batch over the limit is refused whole, and says the limit.
    let mut raw = UnixStream::connect(root.socket()).unwrap();
    let over = con_protocol::Request::Blobs(
        (0..=con_protocol::MAX_BLOBS_PER_REQUEST)
            .map(|_| con_protocol::BlobRequest {
                digest,
                offset: 0,
                limit: 16,
            })
            .collect(),
    );
    raw.write_all(&con_protocol::encode_frame(&over).unwrap())
        .unwrap();
    let mut prefix = [0u8; 4];
    raw.read_exact(&mut prefix).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(prefix) as usize];
    raw.read_exact(&mut body).unwrap();
    let mut frame = prefix.to_vec();
    frame.extend(body);
    match con_protocol::decode_frame::<con_protocol::Response>(&frame) {
        Ok(Some((con_protocol::Response::Error { code, message }, _))) => {
            assert_eq!(code, ErrorCode::TooLarge);
            assert!(message.contains("at most 64"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Damages the last record of a log the way a crash, a bad disk or a hand
/// edit can.
#[derive(Clone, Copy, Debug)]
enum LastRecordDamage {
    /// The value is cut to 17 bytes, shorter than a record and its hash.
    ShortValue,
    /// The key gets a ninth byte.
    LongKey,
    /// The record's format byte becomes one no build knows.
    UnknownFormat,
}

/// Every key and value of a log tree, in order.
type LogContents = Vec<(Vec<u8>, Vec<u8>)>;

/// Applies `how` to the last record of the (stopped) log at `db`; returns
/// the record's seq and the log tree afterwards.
fn damage_last_record(db: &Path, how: LastRecordDamage) -> (u64, LogContents) {
    let store = con_store::Store::open_for_inspection(db).unwrap();
    let log = store.raw_log();
    let (key, value) = log.last().unwrap().unwrap();
    let seq = u64::from_be_bytes(key.as_ref().try_into().unwrap());
    let (mut key, mut value) = (key.to_vec(), value.to_vec());
    match how {
        LastRecordDamage::ShortValue => value.truncate(17),
        LastRecordDamage::UnknownFormat => value[0] = 0x7f,
        LastRecordDamage::LongKey => {
            log.remove(&key).unwrap();
            key.push(0);
        }
    }
    log.insert(key, value).unwrap();
    store.flush().unwrap();
    (seq, log_contents(&store))
}

fn log_contents(store: &con_store::Store) -> LogContents {
    store
        .raw_log()
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn is_sled_snapshot(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with("snap."))
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(path.strip_prefix(dir).unwrap().to_owned(), bytes);
            }
        }
    }
    out
}

#[test]
fn a_log_whose_last_record_cannot_be_read_is_refused_and_left_as_it_was() {
    for how in [
        LastRecordDamage::ShortValue,
        LastRecordDamage::LongKey,
        LastRecordDamage::UnknownFormat,
    ] {
        let root = Root::new();
        let mut daemon = Daemon::start(CON, &root);
        let mut c = Client::connect(&root.socket()).unwrap();
        for n in 0..5 {
            c.append(marked_event(&format!("d{n}"))).unwrap();
        }
        drop(c);
        assert!(daemon.terminate().success(), "{how:?}");
        let db = root.db();
        let (seq, log) = damage_last_record(&db, how);
        assert!(seq >= 5, "{how:?}: last seq {seq}");
        let before = files(&db);

        let mut child = Command::new(CON)
            .args(root.con_flags())
            .args(["daemon"])
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!(
                    "{how:?}: con daemon is still running on a log whose last record is damaged"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!status.success(), "{how:?}: {status:?}\n{stderr}");
        let (at, cause) = match how {
            LastRecordDamage::ShortValue => (
                format!(" (seq {seq})"),
                "value is 17 bytes, shorter than a record".to_owned(),
            ),
            LastRecordDamage::LongKey => {
                (String::new(), format!("key {seq:016x}00 is 9 bytes, not 8"))
            }
            LastRecordDamage::UnknownFormat => (
                format!(" (seq {seq})"),
                "unknown record format 127".to_owned(),
            ),
        };
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("con: error:"))
            .collect();
        assert_eq!(
            errors,
            [format!(
                "con: error: {}: the last record of the event log{at} cannot be read: {cause}; refusing to append (run `con verify`)",
                db.display()
            )],
            "{how:?}: {stderr}"
        );

        // sled's own recovery, inside its open and before con reads any
        // record, replaces its page-table snapshot (`snap.<lsn>`) whenever
        // the log was written since the last one; `con verify` does the
        // same. Every other byte must be as it was.
        let (snaps_before, data_before): (Vec<_>, Vec<_>) =
            before.into_iter().partition(|(p, _)| is_sled_snapshot(p));
        let (snaps_after, data_after): (Vec<_>, Vec<_>) = files(&db)
            .into_iter()
            .partition(|(p, _)| is_sled_snapshot(p));
        assert_eq!(
            data_after.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            data_before.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            "{how:?}: files"
        );
        for ((path, after), (_, before)) in data_after.iter().zip(&data_before) {
            assert!(after == before, "{how:?}: {} changed", path.display());
        }
        assert_eq!((snaps_before.len(), snaps_after.len()), (1, 1), "{how:?}");
        assert_eq!(
            log_contents(&con_store::Store::open_for_inspection(&db).unwrap()),
            log,
            "{how:?}: the log tree changed"
        );

        let out = Command::new(CON)
            .args(["verify", "--db", db.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{how:?}");
        let says = match how {
            LastRecordDamage::ShortValue => {
                "undecodable record: record truncated: 17 bytes".to_owned()
            }
            LastRecordDamage::LongKey => {
                format!("malformed key {seq:016x}00 (9 bytes, not 8) where seq {seq} belongs")
            }
            LastRecordDamage::UnknownFormat => {
                "undecodable envelope: unknown record format 127".to_owned()
            }
        };
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}: chain broken at seq {seq}: {says}\n", db.display()),
            "{how:?}"
        );
    }
}

/// A session is verified only if the daemon recorded its task's arrival in
/// the agent's own inbox as verified: a run cannot claim it.
#[test]
fn a_session_cannot_claim_a_verified_task_the_log_does_not_have() {
    let root = Root::new();
    let inbox = root.path().join("srv/con/agents/sysadmin/inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let sysadmin = TestUser::create(&root.user("sysadmin"));
    std::os::unix::fs::chown(&inbox, Some(sysadmin.uid), Some(sysadmin.gid)).unwrap();
    // An operator's task (root-owned) and the agent's own (its uid).
    std::fs::write(inbox.join("from-root.task"), "do it").unwrap();
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let own = sysadmin
        .command(Path::new("/bin/sh"))
        .args(["-c", &format!("echo mine > {}/own.task", inbox.display())])
        .status()
        .unwrap();
    assert!(own.success());
    let start = Instant::now();
    while all_events(&root).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "arrivals not recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let claim = |task: &str| {
        run_as_with(
            &sysadmin,
            &root,
            "claim-verified",
            &[("CON_TEST_TASK", task.to_owned())],
        )
    };
    assert!(
        claim("from-root").starts_with("OK "),
        "{}",
        claim("from-root")
    );
    let own = claim("own");
    expect_refused(&own, "Forbidden", "recorded unverified");
    let invented = claim("never-arrived");
    expect_refused(&invented, "Forbidden", "no recorded arrival");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Three agents, 64 connections each, sending the biggest frames they can:
/// over the agent limit they are refused before a byte of the body is read;
/// at the limit, the daemon-wide frame budget bounds what is held at once.
#[test]
fn agents_flooding_the_socket_cannot_grow_the_daemon_without_bound() {
    let root = Root::new();
    let daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let agents: Vec<TestUser> = ["concierge", "sysadmin", "strategist"]
        .iter()
        .map(|a| TestUser::create(&root.user(a)))
        .collect();
    let flood = |len: usize| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = agents
                .iter()
                .map(|user| {
                    let root = &root;
                    scope.spawn(move || {
                        run_as_with(
                            user,
                            root,
                            "frame-flood",
                            &[("CON_TEST_FRAME", len.to_string())],
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    // 16 MiB frames: refused for agents as too large.
    let start = Instant::now();
    for answer in flood(16 * 1024 * 1024 - 8) {
        assert_eq!(answer, "ANSWERS TooLarge", "{answer}");
    }
    eprintln!("16 MiB flood answered in {:?}", start.elapsed());
    // Just under the agent limit: read (within the budget), then refused as
    // malformed.
    let start = Instant::now();
    for answer in flood(4 * 1024 * 1024 - 8) {
        assert_eq!(answer, "ANSWERS BadFrame", "{answer}");
    }
    let peak_mib = peak_rss_kib(daemon.pid()) / 1024;
    eprintln!(
        "4 MiB flood answered in {:?}; daemon peak RSS {peak_mib} MiB",
        start.elapsed()
    );
    // 768 MiB were sent at once; the budget holds 128 MiB of frames.
    assert!(peak_mib < 320, "daemon peak RSS {peak_mib} MiB");
    // And it still serves.
    assert!(Client::connect(&root.socket()).unwrap().status().is_ok());
}

/// Sets `[contracts.system]` keys of `root`'s config (each must be in the
/// default profile already).
fn set_system(root: &Root, values: &[(&str, &str)]) {
    let path = root.path().join("etc/con/con.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (key, value) in values {
        let start = text
            .find(&format!("\n{key} = "))
            .unwrap_or_else(|| panic!("{key} is not in the default profile"))
            + 1;
        let end = start + text[start..].find('\n').unwrap();
        text.replace_range(start..end, &format!("{key} = {value}"));
    }
    std::fs::write(&path, text).unwrap();
}

/// Bytes the files under `dir` take on disk.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                disk_usage(&e.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}

/// The `OK n REFUSED m CODES … FIRST …` report of [`appends`], parsed.
fn appends_report(answer: &str) -> (usize, usize, String, String) {
    let words: Vec<&str> = answer.splitn(7, ' ').collect();
    assert!(
        words.len() == 7 && words[0] == "OK" && words[2] == "REFUSED" && words[4] == "CODES",
        "{answer}"
    );
    let first = words[6]
        .strip_prefix("FIRST ")
        .unwrap_or(words[6])
        .to_owned();
    (
        words[1].parse().unwrap(),
        words[3].parse().unwrap(),
        words[5].to_owned(),
        first,
    )
}

/// The daemon's `enforcement.action`s under `contract`.
fn enforcements(root: &Root, contract: &str) -> Vec<EnforcementAction> {
    all_events(root)
        .into_iter()
        .filter_map(|e| match e.payload {
            Payload::EnforcementAction(a) if a.contract == contract => {
                assert_eq!(e.envelope.actor.uid, 0, "recorded by the daemon");
                Some(a)
            }
            _ => None,
        })
        .collect()
}

fn appends_as(root: &Root, user: &TestUser, tag: &str, vars: &[(&str, usize)]) -> String {
    let mut env: Vec<(&str, String)> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.push(("CON_TEST_TAG", tag.to_owned()));
    run_as_with(user, root, "appends", &env)
}

/// One agent, 64 connections, 512 KiB events in a session it opened
/// legitimately: 64 MiB offered against a quota of 8 MiB (a minute and an
/// hour alike, so a minute boundary during the test changes nothing).
#[test]
fn a_flooding_agent_is_held_to_its_quota_and_operators_and_the_daemon_are_still_recorded() {
    let root = Root::new();
    set_system(
        &root,
        &[
            ("agent_max_mb_per_minute", "8"),
            ("agent_max_mb_per_hour", "8"),
        ],
    );
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let agent = TestUser::create(&root.user("sysadmin"));
    let before = disk_usage(&root.db());
    let answer = appends_as(
        &root,
        &agent,
        "flood",
        &[
            ("CON_TEST_CONNS", 64),
            ("CON_TEST_COUNT", 2),
            ("CON_TEST_SIZE", 512 * 1024),
        ],
    );
    let (ok, refused, codes, first) = appends_report(&answer);
    // 16 × 512 KiB is the quota; the session's opening and each event's
    // payload take the rest of the 16th.
    assert_eq!((ok, refused), (15, 128 - 15), "{answer}");
    assert_eq!(codes, "Rejected", "{answer}");
    assert!(
        first.contains("over its quota agent_max_mb_per_minute: at most 8388608 bytes per minute")
            && first.contains("nothing stored"),
        "{first}"
    );

    // An operator is still recorded, and so is the daemon's record of the
    // refusal: once for the window, not once per refused frame.
    let mut operator = Client::connect(&root.socket()).unwrap();
    assert!(operator.append(marked_event("after the flood")).is_ok());
    let events = all_events(&root);
    assert!(
        events
            .iter()
            .any(|e| marker_of(e).as_deref() == Some("after the flood"))
    );
    let recorded = enforcements(&root, con_daemon::QUOTA_CONTRACT);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let action = &recorded[0];
    assert_eq!(action.target.as_deref(), Some("sysadmin"));
    assert_eq!(action.action, "refuse_append");
    assert!(
        action.reason.contains("agent_max_mb_per_minute")
            && action.reason.contains("8388608")
            && action.reason.contains("would make it"),
        "{}",
        action.reason
    );
    let stored_calls = events
        .iter()
        .filter(|e| matches!(e.payload, Payload::ToolCall(_)))
        .count();
    assert_eq!(stored_calls, 15);

    let growth = disk_usage(&root.db()).saturating_sub(before);
    eprintln!(
        "flood: 64 MiB offered, {ok} events accepted, log grew by {:.1} MiB",
        growth as f64 / 1048576.0
    );
    assert!(growth < 24 * 1024 * 1024, "log grew by {growth} bytes");
}

/// Over the per-attachment or the per-event limit an append is refused
/// whole: no event and no blob of it is stored.
#[test]
fn an_event_or_attachment_over_its_limit_is_refused_and_nothing_is_stored() {
    let root = Root::new();
    set_system(
        &root,
        &[
            ("agent_max_event_kb", "1024"),
            ("agent_max_attachment_kb", "768"),
        ],
    );
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let agent = TestUser::create(&root.user("sysadmin"));
    let big_attachment = appends_as(
        &root,
        &agent,
        "attachment",
        &[("CON_TEST_SIZE", 800 * 1024)],
    );
    let (ok, _, codes, first) = appends_report(&big_attachment);
    assert_eq!((ok, codes.as_str()), (0, "Rejected"), "{big_attachment}");
    assert!(
        first.contains("over its quota agent_max_attachment_kb: at most 786432 bytes per attachment, and this attachment is 819200 bytes"),
        "{first}"
    );
    // Each part within its limit, together over the event's.
    let big_event = appends_as(
        &root,
        &agent,
        "event",
        &[
            ("CON_TEST_SIZE", 760 * 1024),
            ("CON_TEST_CALL_ID_LEN", 300 * 1024),
        ],
    );
    let (ok, _, codes, first) = appends_report(&big_event);
    assert_eq!((ok, codes.as_str()), (0, "Rejected"), "{big_event}");
    assert!(
        first.contains("over its quota agent_max_event_kb: at most 1048576 bytes per event"),
        "{first}"
    );
    // Within both: stored.
    let fits = appends_as(&root, &agent, "fits", &[("CON_TEST_SIZE", 700 * 1024)]);
    assert!(fits.starts_with("OK 1 REFUSED 0 "), "{fits}");

    let mut client = Client::connect(&root.socket()).unwrap();
    for (tag, size) in [("attachment", 800 * 1024), ("event", 760 * 1024)] {
        let digest = con_event::Digest::of(&attachment(tag, 0, 0, size));
        match client.blob(digest) {
            Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::NotFound),
            other => panic!("the refused {tag}'s blob: {other:?}"),
        }
    }
    let digest = con_event::Digest::of(&attachment("fits", 0, 0, 700 * 1024));
    assert_eq!(client.blob(digest).unwrap().len(), 700 * 1024);
    let calls = all_events(&root)
        .into_iter()
        .filter(|e| matches!(e.payload, Payload::ToolCall(_)))
        .count();
    assert_eq!(calls, 1, "only the event within its limits");
    let recorded: Vec<String> = enforcements(&root, con_daemon::QUOTA_CONTRACT)
        .into_iter()
        .map(|a| a.reason)
        .collect();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded[0].contains("agent_max_attachment_kb"),
        "{recorded:?}"
    );
    assert!(recorded[1].contains("agent_max_event_kb"), "{recorded:?}");
}

/// `log_max_mb` 4 with 2 kept in reserve: agents are refused from 2 MiB on
/// (one alert), operators still append until 4 MiB.
#[test]
fn a_log_at_its_size_limit_refuses_agents_first_and_keeps_a_reserve_for_operators() {
    let root = Root::new();
    set_system(&root, &[("log_max_mb", "4"), ("log_reserve_mb", "2")]);
    let _daemon = Daemon::start_with(CON, &root, &["--supervisor", "systemd"], &[]);
    let agent = TestUser::create(&root.user("sysadmin"));
    let answer = appends_as(
        &root,
        &agent,
        "fill",
        &[("CON_TEST_COUNT", 24), ("CON_TEST_SIZE", 256 * 1024)],
    );
    let (ok, refused, codes, first) = appends_report(&answer);
    assert!((1..=8).contains(&ok), "{answer}");
    assert_eq!(
        (refused, codes.as_str()),
        (24 - ok, "Unavailable"),
        "{answer}"
    );
    assert!(
        first.contains("the event log is full for agents")
            && first.contains("of log_max_mb 4 MiB used")
            && first.contains("the last 2 MiB (log_reserve_mb) are kept"),
        "{first}"
    );
    // After the next measure of the log, still refused; still one alert.
    std::thread::sleep(Duration::from_millis(2500));
    let again = appends_as(&root, &agent, "again", &[("CON_TEST_SIZE", 256 * 1024)]);
    assert!(
        again.starts_with("OK 0 REFUSED 1 CODES Unavailable"),
        "{again}"
    );
    let alerts = enforcements(&root, con_daemon::LOG_SIZE_CONTRACT);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].target, None);
    assert!(
        alerts[0].reason.contains("agents' appends are refused"),
        "{alerts:?}"
    );

    // Operators use the reserve, up to log_max_mb.
    let mut operator = Client::connect(&root.socket()).unwrap();
    let mut accepted = 0;
    let refusal = loop {
        let steps = attachment("operator", 0, accepted, 256 * 1024);
        let mut event = client_event(
            ProvisionApplied {
                command: format!("operator {accepted}"),
                changes: 0,
                failed: vec![],
                disabled_agents: vec![],
                steps: con_event::BlobRef::of(&steps),
            }
            .into(),
            None,
        );
        event.attachments.push(steps);
        match operator.append(event) {
            Ok(_) => accepted += 1,
            Err(ClientError::Refused { code, message }) => break (code, message),
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 32, "operators were never refused");
    };
    assert!(accepted >= 2, "the reserve took {accepted} operator events");
    assert_eq!(refusal.0, ErrorCode::Unavailable, "{refusal:?}");
    assert!(refusal.1.contains("the event log is full"), "{refusal:?}");
    let size = disk_usage(&root.db());
    eprintln!(
        "log_max_mb 4: {ok} agent and {accepted} operator events of 256 KiB, log {:.1} MiB on disk",
        size as f64 / 1048576.0
    );
}

/// `con backup` copies the live log while four clients keep appending; the
/// copy verifies, and restoring it (stop, replace, start) gives the same
/// head and a working daemon. Only root may ask for one.
#[test]
fn a_backup_under_load_verifies_and_restores() {
    let root = Root::new();
    let mut daemon = Daemon::start(CON, &root);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appenders: Vec<_> = (0..4)
        .map(|n| {
            let socket = root.socket();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket).unwrap();
                let mut appended = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client
                        .append(marked_event(&format!("load {n} {appended}")))
                        .unwrap();
                    appended += 1;
                }
                appended
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let copy = root.path().join("backup");
    let out = con(&root, &["backup", copy.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended: u64 = appenders.into_iter().map(|a| a.join().unwrap()).sum();
    assert!(appended > 100, "the load was real: {appended} appends");
    let seq: u64 = said
        .split("through seq ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));

    let verified = con(&root, &["verify", "--db", copy.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(report["head_seq"], seq, "{report}");
    let live: serde_json::Value =
        serde_json::from_slice(&con(&root, &["verify", "--json"]).stdout).unwrap();
    assert!(
        live["head_seq"].as_u64().unwrap() > seq,
        "appends went on: {live}"
    );

    // Restore: stop, replace, start.
    assert!(daemon.terminate().success());
    let log = root.path().join("var/lib/con/events");
    std::fs::remove_dir_all(&log).unwrap();
    std::fs::rename(&copy, &log).unwrap();
    let _daemon = Daemon::start(CON, &root);
    let restored: serde_json::Value =
        serde_json::from_slice(&con(&root, &["verify", "--json"]).stdout).unwrap();
    // The restarted daemon may have recorded its own events since.
    assert!(restored["head_seq"].as_u64().unwrap() >= seq, "{restored}");
    let copied = Client::connect(&root.socket())
        .unwrap()
        .query(
            Query {
                from_seq: seq,
                limit: Some(1),
                ..Query::default()
            },
            |_| true,
        )
        .unwrap();
    assert!(copied >= seq);
    con(&root, &["status"]);
}

/// Only root may have the daemon write a backup: a trusted operator or an
/// agent could otherwise make root create a database wherever it names.
#[test]
fn a_backup_is_root_only() {
    let root = Root::new();
    let agent = TestUser::create(&root.user("sysadmin"));
    let member = TestUser::unique("cb");
    let group_prefix = unique_prefix("ctb");
    let trusted = TestGroup::create(&format!("{group_prefix}trusted"));
    trusted.add(&member);
    let _daemon = Daemon::start_with(CON, &root, &[], &[("CON_GROUP_PREFIX", &group_prefix)]);
    let target = root.path().join("stolen");
    for who in [&member, &agent] {
        let said = run_as_with(
            who,
            &root,
            "backup",
            &[("CON_TEST_DIR", target.display().to_string())],
        );
        expect_refused(&said, "Forbidden", "only root backs up the event log");
    }
    assert!(!target.exists(), "nothing was written");
}
