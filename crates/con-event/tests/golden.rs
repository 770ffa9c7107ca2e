//! Golden bytes: every kind at every version it has ever had, encoded as it
//! is stored, committed under `tests/golden/`. A failure here means a stored
//! format changed — which would make existing logs unreadable.
//!
//! Regenerate (only when adding a kind or version): `CON_BLESS=1 cargo test -p con-event --test golden`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use std::path::PathBuf;

use con_event::payloads::*;
use con_event::*;
use con_test_support::{Sample, samples};

fn envelope(kind: u16, version: u16, payload: Vec<u8>) -> Envelope {
    Envelope {
        seq: 7,
        id: EventId([0x11; 16]),
        ts_unix_nanos: 1_795_000_000_123_456_789,
        actor: Actor {
            uid: 1001,
            agent: Some("concierge".into()),
        },
        session: Some(SessionId([0x22; 16])),
        task: Some("20261125-0001".into()),
        causation: Some(6),
        kind,
        kind_version: version,
        payload,
        prev_hash: Digest::of(b"previous"),
    }
}

fn golden_path(name: &str, version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.v{version}.hex"))
}

#[test]
fn every_kind_and_version_decodes_from_golden_bytes() {
    let bless = std::env::var_os("CON_BLESS").is_some();
    let samples = samples();
    for spec in KINDS {
        for version in 1..=spec.version {
            assert!(
                samples
                    .iter()
                    .any(|s| s.kind == spec.name && s.version == version),
                "no golden sample for {} v{version}: add one to samples()",
                spec.name
            );
        }
    }
    for Sample {
        kind: name,
        version,
        bytes: payload_bytes,
        payload: expected,
    } in samples
    {
        let spec = kind_by_name(name).unwrap();
        let env = envelope(spec.id, version, payload_bytes);
        let record = env.encode_record().unwrap();
        let stored = encode_stored(&record, &chain_hash(&env.prev_hash, &record));
        let path = golden_path(name, version);
        if bless {
            std::fs::write(&path, hex::encode(&stored) + "\n").unwrap();
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless with CON_BLESS=1)", path.display()));
        let golden = hex::decode(golden.trim()).unwrap();
        assert_eq!(
            hex::encode(&stored),
            hex::encode(&golden),
            "{name} v{version}: encoding changed; stored logs would no longer match"
        );
        let event = Event::from_stored(&golden).unwrap();
        assert_eq!(event.envelope, env, "{name} v{version}: envelope");
        assert_eq!(event.payload, expected, "{name} v{version}: payload");
        assert_eq!(event.hash, chain_hash(&env.prev_hash, &record));
    }
}

#[test]
fn registry_ids_names_and_message_ids_are_unique_and_well_formed() {
    let mut ids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    let mut msg_ids = std::collections::HashSet::new();
    for spec in KINDS {
        assert!(ids.insert(spec.id), "duplicate id {}", spec.id);
        assert!(names.insert(spec.name), "duplicate name {}", spec.name);
        assert!(msg_ids.insert(spec.message_id), "duplicate MESSAGE_ID");
        assert_eq!(spec.message_id.len(), 32, "{}", spec.name);
        assert!(
            spec.message_id
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert!(spec.version >= 1);
        assert_eq!(kind_by_id(spec.id), Some(*spec));
        assert_eq!(kind_by_name(&spec.journal_name()), Some(*spec));
    }
    // Ids are dense from 1 and in registry order, so a reordering of the
    // registry macro (which would not change ids) is still caught by review.
    let listed: Vec<u16> = KINDS.iter().map(|k| k.id).collect();
    let expected: Vec<u16> = (1..=KINDS.len() as u16).collect();
    assert_eq!(listed, expected);
}

#[test]
fn unknown_kind_version_and_format_are_errors_not_panics() {
    let env = envelope(999, 1, vec![]);
    let record = env.encode_record().unwrap();
    let stored = encode_stored(&record, &Digest::default());
    assert_eq!(
        Event::from_stored(&stored).unwrap_err(),
        DecodeError::UnknownKind(999)
    );
    let env = envelope(12, 9, vec![]);
    let stored = encode_stored(&env.encode_record().unwrap(), &Digest::default());
    assert!(matches!(
        Event::from_stored(&stored).unwrap_err(),
        DecodeError::UnknownVersion {
            kind: "agent.state",
            version: 9
        }
    ));
    let mut record = envelope(15, 1, vec![]).encode_record().unwrap();
    record[0] = 2;
    assert_eq!(
        Event::from_stored(&encode_stored(&record, &Digest::default())).unwrap_err(),
        DecodeError::UnknownFormat(2)
    );
}

#[test]
fn trailing_payload_bytes_are_rejected() {
    let mut payload = Payload::from(JournalMirrorRecovered { dropped: 1 })
        .encode()
        .unwrap();
    payload.push(0);
    let env = envelope(14, 1, payload);
    let stored = encode_stored(&env.encode_record().unwrap(), &Digest::default());
    assert!(matches!(
        Event::from_stored(&stored),
        Err(DecodeError::Malformed { .. })
    ));
}

/// bincode stores an enum variant as its index: inserting or reordering a
/// variant would silently re-label every stored value. Pin every variant of
/// every stored enum.
#[test]
fn stored_enum_variant_indexes_never_change() {
    fn index<T: serde::Serialize>(v: &T) -> u32 {
        let bytes = codec::encode(v).unwrap();
        u32::from_le_bytes(bytes[..4].try_into().unwrap())
    }
    let trust = [Trust::Verified, Trust::Unverified];
    let outcome = [
        Outcome::Ok,
        Outcome::MaxIterations,
        Outcome::Timeout,
        Outcome::Budget,
        Outcome::ProviderError,
        Outcome::RunnerError,
        Outcome::Killed,
        Outcome::SetAside,
        Outcome::KilledByEnforcement,
        Outcome::Abandoned,
    ];
    let check = [
        CheckStatus::Pass,
        CheckStatus::Fail,
        CheckStatus::Skipped,
        CheckStatus::Error,
        CheckStatus::Timeout,
    ];
    let condition = [
        AgentCondition::Active,
        AgentCondition::Halted,
        AgentCondition::Quarantined,
        AgentCondition::Decommissioned,
    ];
    assert_eq!(trust.iter().map(index).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(
        outcome.iter().map(index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    );
    let outcome_v1 = [
        OutcomeV1::Ok,
        OutcomeV1::MaxIterations,
        OutcomeV1::Timeout,
        OutcomeV1::Budget,
        OutcomeV1::ProviderError,
        OutcomeV1::RunnerError,
        OutcomeV1::Killed,
        OutcomeV1::SetAside,
    ];
    assert_eq!(
        outcome_v1.iter().map(index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(check.iter().map(index).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(
        condition.iter().map(index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

#[test]
fn an_oversized_record_is_refused_at_encode_time() {
    let env = envelope(9, 1, vec![0u8; MAX_RECORD_BYTES as usize + 1]);
    assert_eq!(
        env.encode_record(),
        Err(EncodeError::TooLarge {
            limit: MAX_RECORD_BYTES
        })
    );
}

fn golden_json_path(name: &str, version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.v{version}.json"))
}

/// The JSON view of every kind at every version is pinned (readers outside
/// the log depend on its field names) and converts back to the same stored
/// event, hash included.
#[test]
fn every_kind_and_version_has_a_golden_json_view_that_round_trips() {
    let bless = std::env::var_os("CON_BLESS").is_some();
    for Sample {
        kind: name,
        version,
        bytes: payload_bytes,
        payload: expected,
    } in samples()
    {
        let spec = kind_by_name(name).unwrap();
        let env = envelope(spec.id, version, payload_bytes);
        let record = env.encode_record().unwrap();
        let stored = encode_stored(&record, &chain_hash(&env.prev_hash, &record));
        let event = Event::from_stored(&stored).unwrap();

        let view = EventJson::from_event(&event);
        let text = serde_json::to_string_pretty(&view).unwrap() + "\n";
        let path = golden_json_path(name, version);
        if bless {
            std::fs::write(&path, &text).unwrap();
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless with CON_BLESS=1)", path.display()));
        assert_eq!(text, golden, "{name} v{version}: the JSON view changed");

        let parsed: EventJson = serde_json::from_str(&golden).unwrap();
        assert_eq!(parsed.to_event().unwrap(), event, "{name} v{version}");
        assert_eq!(
            Payload::from_json(spec, parsed.payload.clone()).unwrap(),
            expected,
            "{name} v{version}: the payload JSON reads back as the typed payload"
        );
        assert_eq!(
            parsed.stored_payload.is_some(),
            version != spec.version,
            "{name} v{version}: stored bytes travel only with upcast payloads"
        );
    }
}

#[test]
fn an_edited_json_view_is_refused_by_its_hash() {
    let Sample {
        kind: name,
        version,
        bytes: payload_bytes,
        ..
    } = samples().swap_remove(0);
    let spec = kind_by_name(name).unwrap();
    let env = envelope(spec.id, version, payload_bytes);
    let record = env.encode_record().unwrap();
    let event = Event::from_stored(&encode_stored(
        &record,
        &chain_hash(&env.prev_hash, &record),
    ))
    .unwrap();
    let mut view = serde_json::to_value(EventJson::from_event(&event)).unwrap();
    view["payload"]["trust"] = "verified".into();
    let edited: EventJson = serde_json::from_value(view.clone()).unwrap();
    assert!(matches!(
        edited.to_event(),
        Err(JsonViewError::HashMismatch { seq: 7, .. })
    ));
    view["payload"]["trust"] = "trusted-ish".into();
    let bad: EventJson = serde_json::from_value(view).unwrap();
    let err = bad.to_event().unwrap_err().to_string();
    assert!(err.starts_with("seq 7: payload of inbox.arrived:"), "{err}");
}

#[test]
fn digests_and_ids_are_hex_in_json_and_bytes_in_bincode() {
    let d = Digest::of(b"x");
    assert_eq!(
        serde_json::to_string(&d).unwrap(),
        format!("\"{}\"", d.to_hex())
    );
    assert_eq!(codec::encode(&d).unwrap(), d.0.to_vec());
    let s = SessionId([0xab; 16]);
    assert_eq!(
        serde_json::from_str::<SessionId>(&format!("\"{}\"", "ab".repeat(16))).unwrap(),
        s
    );
    let err = serde_json::from_str::<Digest>("\"abc\"").unwrap_err();
    assert!(err.to_string().contains("64 lowercase hex digits"), "{err}");
}

#[test]
fn an_llm_request_body_is_reassembled_byte_for_byte() {
    let frame = br#"{"system":"You are sysadmin.","messages":,"tools":[]}"#;
    let (user, assistant) = (
        br#"{"role":"user","content":"check the disk"}"#.as_slice(),
        br#"{"role":"assistant","content":"ok"}"#.as_slice(),
    );
    assert_eq!(
        LlmRequest::reassemble(frame, 41, &[user, assistant]).unwrap(),
        br#"{"system":"You are sysadmin.","messages":[{"role":"user","content":"check the disk"},{"role":"assistant","content":"ok"}],"tools":[]}"#
    );
    // No messages: the frame is the whole body (what v1 records upcast to).
    assert_eq!(LlmRequest::reassemble(b"{}", 0, &[]).unwrap(), b"{}");
    // An offset past the frame is refused, not a panic.
    assert_eq!(LlmRequest::reassemble(frame, 999, &[user]), None);
}

#[test]
fn a_request_conversation_follows_the_request_it_continues() {
    let m = |s: &str| BlobRef::of(s.as_bytes());
    let request = |continues, repeated, messages| LlmRequest {
        agent: "a".into(),
        provider: "p".into(),
        model: "m".into(),
        iteration: 2,
        frame: m("{}"),
        messages_at: 1,
        continues,
        repeated,
        messages,
    };
    let earlier = vec![m("1"), m("2"), m("3")];
    let second = request(Some(4), 2, vec![m("x")]);
    assert_eq!(
        second.conversation(|seq| (seq == 4).then(|| earlier.clone())),
        Some(vec![m("1"), m("2"), m("x")])
    );
    // An unknown or too short earlier request is not papered over.
    assert_eq!(second.conversation(|_| None), None);
    assert_eq!(
        request(Some(4), 5, vec![]).conversation(|_| Some(earlier.clone())),
        None
    );
    assert_eq!(request(None, 1, vec![]).conversation(|_| None), None);
    assert_eq!(
        request(None, 0, vec![m("1")]).conversation(|_| None),
        Some(vec![m("1")])
    );
}
