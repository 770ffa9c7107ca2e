//! Events and attachments → journal fields → events and attachments, without
//! journald: every kind at every stored version (the golden records of
//! con-event), chains, repeats, damage and malformed input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use con_event::payloads::*;
use con_event::*;
use con_journal::*;
use proptest::prelude::*;

fn ctx() -> MirrorContext {
    MirrorContext {
        log_id: "0123456789abcdef0123456789abcdef".into(),
        system: "rebuild-test".into(),
    }
}

/// Every stored record in con-event's golden files: each kind at each
/// version it ever had.
fn golden_events() -> Vec<(String, Event)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../con-event/tests/golden");
    let mut out: Vec<(String, Event)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .map(|path| {
            let bytes = hex::decode(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, Event::from_stored(&bytes).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Serialises entries as `journalctl -o export` does: text fields as
/// `NAME=value`, values with control characters in the binary form.
fn to_export(entries: &[ReadEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        out.extend_from_slice(format!("__CURSOR=s=test;i={i}\n").as_bytes());
        for (name, value) in &entry.fields {
            let binary = value.iter().any(|&b| b < b' ' && b != b'\t') || value.contains(&0x7f);
            if binary {
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            } else {
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value);
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Serialises entries as `journalctl -o json --all` does.
fn to_json(entries: &[ReadEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut object = serde_json::Map::new();
        for (name, value) in &entry.fields {
            let v = match std::str::from_utf8(value) {
                Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
                    serde_json::Value::from(s)
                }
                _ => serde_json::Value::from(value.clone()),
            };
            object.insert(name.clone(), v);
        }
        serde_json::to_writer(&mut out, &object).unwrap();
        out.push(b'\n');
    }
    out
}

fn entries_for(event: &Event) -> ReadEntry {
    ReadEntry::from(&entry_for(event, &[], &ctx()).unwrap())
}

fn field_of<'a>(entry: &'a ReadEntry, name: &str) -> &'a str {
    std::str::from_utf8(entry.get(name).unwrap()).unwrap()
}

#[test]
fn every_kind_at_every_stored_version_round_trips_with_its_hash() {
    let golden = golden_events();
    for spec in KINDS {
        for version in 1..=spec.version {
            assert!(
                golden
                    .iter()
                    .any(|(_, e)| e.envelope.kind == spec.id && e.envelope.kind_version == version),
                "no golden record for {} v{version}",
                spec.name
            );
        }
    }
    for (name, event) in &golden {
        let entry = entries_for(event);
        // What the version fields say: the stored layout, and the layout
        // of the JSON body (upcast to the current version).
        let spec = event.payload.spec();
        assert_eq!(
            field_of(&entry, field::KIND_VERSION),
            event.envelope.kind_version.to_string(),
            "{name}"
        );
        assert_eq!(
            field_of(&entry, field::PAYLOAD_VERSION),
            spec.version.to_string(),
            "{name}"
        );
        assert_eq!(
            field_of(&entry, field::PAYLOAD),
            serde_json::to_string(&event.payload).unwrap()
        );
        for rebuilt in [
            rebuild_from_export(&to_export(std::slice::from_ref(&entry))[..]).unwrap(),
            rebuild_from_json(&to_json(std::slice::from_ref(&entry))[..]).unwrap(),
        ] {
            let events = &rebuilt.logs[&ctx().log_id];
            assert_eq!(events.len(), 1, "{name}");
            let back = &events[0];
            assert_eq!(back, event, "{name}");
            assert_eq!(
                back.envelope.encode_record().unwrap(),
                event.envelope.encode_record().unwrap(),
                "{name}: same record bytes"
            );
            assert_eq!(
                chain_hash(
                    &back.envelope.prev_hash,
                    &back.envelope.encode_record().unwrap()
                ),
                event.hash,
                "{name}"
            );
        }
    }
}

/// The golden payloads as one chained log from seq 1, with the contents
/// their blob references name.
fn chain() -> (Vec<Event>, Vec<Vec<u8>>) {
    let mut prev = Digest::default();
    let mut events = Vec::new();
    let prompt = vec![b'p'; 100 * 1024];
    let output: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let small: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
    let call = |id: &str| -> Payload {
        ToolCall {
            call_id: id.into(),
            tool: "exec".into(),
            arguments: BlobRef::of(&small),
        }
        .into()
    };
    let with_blobs = [
        call("c0"),
        SessionStarted {
            agent: "sysadmin".into(),
            runner: "builtin".into(),
            provider: None,
            model: None,
            trust: Trust::Verified,
            prompt: BlobRef::of(&prompt),
        }
        .into(),
        ToolResult {
            call_id: "c1".into(),
            tool: "exec".into(),
            exit_code: Some(0),
            duration_ms: 5,
            output: BlobRef::of(&output),
            truncated: false,
            error: None,
        }
        .into(),
        call("c2"),
    ];
    let payloads: Vec<(u16, u16, Vec<u8>)> = golden_events()
        .into_iter()
        .map(|(_, e)| (e.envelope.kind, e.envelope.kind_version, e.envelope.payload))
        .chain(
            with_blobs
                .iter()
                .map(|p: &Payload| (p.spec().id, p.spec().version, p.encode().unwrap())),
        )
        .collect();
    for (i, (kind, kind_version, payload)) in payloads.into_iter().enumerate() {
        let envelope = Envelope {
            seq: i as u64 + 1,
            id: EventId([i as u8; 16]),
            ts_unix_nanos: 1_795_000_000_000_000_000 + i as i64,
            actor: Actor::system(),
            session: Some(SessionId([7; 16])),
            task: None,
            causation: None,
            kind,
            kind_version,
            payload,
            prev_hash: prev,
        };
        let record = envelope.encode_record().unwrap();
        let hash = chain_hash(&prev, &record);
        prev = hash;
        events.push(Event::from_stored(&encode_stored(&record, &hash)).unwrap());
    }
    (events, vec![prompt, output, small])
}

/// The entries the mirror sends for `events`: each content once, with the
/// first event that references it (inside its entry if small, in part
/// entries before it otherwise).
fn mirror(events: &[Event], contents: &[Vec<u8>]) -> Vec<ReadEntry> {
    let mut sent = BTreeSet::new();
    let mut out = Vec::new();
    for event in events {
        let mut inline = Vec::new();
        for r in event.payload.blob_refs() {
            if let Some(content) = contents.iter().find(|c| Digest::of(c) == r.digest)
                && sent.insert(r.digest)
            {
                if content.len() <= BLOB_INLINE_MAX {
                    inline.push((r.digest, content.clone()));
                } else {
                    out.extend(
                        blob_entries(&r.digest, content, event, &ctx())
                            .map(|e| ReadEntry::from(&e)),
                    );
                }
            }
        }
        out.push(ReadEntry::from(&entry_for(event, &inline, &ctx()).unwrap()));
    }
    out
}

#[test]
fn a_chain_with_repeats_and_large_binary_attachments_is_rebuilt_and_verifies() {
    let (events, contents) = chain();
    let mut entries = mirror(&events, &contents);
    // At-least-once: a back-fill re-sends a stretch (events and parts), and
    // journalctl may interleave entries out of seq order.
    let resent: Vec<ReadEntry> = entries[3..9].to_vec();
    entries.extend(resent.clone());
    entries.reverse();
    let blob_parts = entries
        .iter()
        .filter(|e| e.get(field::BLOB_DATA).is_some())
        .count();
    // 100 KiB in 96 KiB parts, 300 KiB likewise (plus the resent ones); the
    // small contents travel inside event entries.
    let resent_parts = resent
        .iter()
        .filter(|e| e.get(field::BLOB_DATA).is_some())
        .count();
    assert_eq!(blob_parts - resent_parts, 2 + 4);
    let inline = |entries: &[ReadEntry]| {
        entries
            .iter()
            .map(|e| e.count(field::BLOB_INLINE))
            .sum::<usize>()
    };
    assert_eq!(
        inline(&entries) - inline(&resent),
        1,
        "referenced twice, sent once"
    );
    for part in entries.iter().filter(|e| e.get(field::BLOB_DATA).is_some()) {
        assert!(part.get(field::BLOB_DATA).unwrap().len() <= BLOB_PART_BYTES.div_ceil(3) * 4);
    }

    for rebuilt in [
        rebuild_from_export(&to_export(&entries)[..]).unwrap(),
        rebuild_from_json(&to_json(&entries)[..]).unwrap(),
    ] {
        let back = &rebuilt.logs[&ctx().log_id];
        assert_eq!(back, &events);
        assert_eq!(rebuilt.repeats, resent.len() as u64);
        assert_eq!(rebuilt.blobs.len(), 3);
        for c in &contents {
            assert_eq!(&rebuilt.blobs[&Digest::of(c)], c);
        }
        assert!(rebuilt.incomplete_blobs.is_empty());
        let report = verify_chain(back).unwrap();
        assert_eq!(report.events, events.len() as u64);
        assert_eq!(report.head.hash, events.last().unwrap().hash);
    }
}

#[test]
fn the_chain_check_names_the_first_bad_seq() {
    let (events, _) = chain();
    // A gap.
    let mut gap = events.clone();
    gap.remove(4);
    let brk = verify_chain(&gap).unwrap_err();
    assert_eq!(brk.seq, 5);
    assert!(brk.reason.contains("missing"), "{}", brk.reason);
    assert_eq!(brk.last_good.seq, 4);
    // A record rewritten consistently (its own hash recomputed, so it
    // passes the per-entry check): the next link breaks.
    let mut forged = events.clone();
    forged[6].envelope.ts_unix_nanos += 1;
    let record = forged[6].envelope.encode_record().unwrap();
    forged[6].hash = chain_hash(&forged[6].envelope.prev_hash, &record);
    let entries: Vec<ReadEntry> = forged.iter().map(entries_for).collect();
    let rebuilt = rebuild_from_export(&to_export(&entries)[..]).unwrap();
    let brk = verify_chain(&rebuilt.logs[&ctx().log_id]).unwrap_err();
    assert_eq!(brk.seq, 8);
    assert!(brk.reason.contains("prev_hash"), "{}", brk.reason);
    // A stretch starting after seq 1 checks against a known head.
    assert_eq!(verify_chain(&events[3..]).unwrap_err().seq, 1);
    let start = con_store::Head {
        seq: 3,
        hash: events[2].hash,
    };
    assert_eq!(
        verify_chain_from(start, &events[3..]).unwrap().events,
        events.len() as u64 - 3
    );
}

fn one_line(err: impl std::fmt::Display) -> String {
    let s = err.to_string();
    assert!(!s.contains('\n'), "{s}");
    s
}

fn set(entry: &mut ReadEntry, name: &str, value: &[u8]) {
    for (k, v) in &mut entry.fields {
        if k == name {
            *v = value.to_vec();
        }
    }
}

#[test]
fn damaged_entries_are_one_line_errors_naming_the_field_and_cursor() {
    let (events, contents) = chain();
    let good = entries_for(&events[2]);
    let record = BASE64.decode(good.get(field::RECORD).unwrap()).unwrap();
    type Damage<'a> = Box<dyn Fn(&mut ReadEntry) + 'a>;
    let cases: Vec<(Damage, &str)> = vec![
        (
            Box::new(|e| set(e, field::RECORD, b"***")),
            "field CON_RECORD: not base64",
        ),
        (
            Box::new(|e| set(e, field::RECORD, BASE64.encode(&record[..10]).as_bytes())),
            "field CON_RECORD: undecodable record",
        ),
        (
            Box::new(|e| {
                let mut r = record.clone();
                let last = r.len() - 1;
                r[last] ^= 1;
                set(e, field::RECORD, BASE64.encode(&r).as_bytes())
            }),
            "field CON_HASH:",
        ),
        (
            Box::new(|e| set(e, field::HASH, b"abc")),
            "field CON_HASH: \"abc\" is not 64 hex digits",
        ),
        (
            Box::new(|e| set(e, field::SEQ, b"4")),
            "field CON_SEQ: 4, but the record is seq 3",
        ),
        (
            Box::new(|e| set(e, field::SEQ, b"x")),
            "field CON_SEQ: \"x\" is not a number",
        ),
        (
            Box::new(|e| e.fields.retain(|(k, _)| k != field::HASH)),
            "field CON_HASH: missing",
        ),
        (
            Box::new(|e| e.fields.push((field::RECORD.into(), b"AA==".to_vec()))),
            "field CON_RECORD: 2 values where one belongs",
        ),
        (
            Box::new(|e| set(e, field::PREV_HASH, "0".repeat(64).as_bytes())),
            "field CON_PREV_HASH: 0000000000000000000000000000000000000000000000000000000000000000 \
             is not the record's prev_hash",
        ),
    ];
    for (damage, expected) in cases {
        let mut entry = good.clone();
        damage(&mut entry);
        let err = one_line(rebuild_from_export(&to_export(&[entry])[..]).unwrap_err());
        assert!(
            err.starts_with("journal cursor s=test;i=0: ") && err.contains(expected),
            "{err:?} lacks {expected:?}"
        );
    }

    // Two different records for one seq of one log.
    let mut other = events[3].clone();
    other.envelope.seq = 3;
    other.envelope.prev_hash = events[1].hash;
    let record = other.envelope.encode_record().unwrap();
    other.hash = chain_hash(&other.envelope.prev_hash, &record);
    let err = one_line(
        rebuild_from_export(&to_export(&[good.clone(), entries_for(&other)])[..]).unwrap_err(),
    );
    assert!(
        err.contains("cursor s=test;i=1: seq 3 has hash")
            && err.contains("cursor s=test;i=0 has a different record"),
        "{err}"
    );

    // An attachment inside an event entry that does not hash to its digest.
    let small = &contents[2];
    let call = events
        .iter()
        .find(|e| {
            e.payload
                .blob_refs()
                .iter()
                .any(|r| r.digest == Digest::of(small))
        })
        .unwrap();
    let mut entry = ReadEntry::from(
        &entry_for(call, &[(Digest::of(small), small[1..].to_vec())], &ctx()).unwrap(),
    );
    let err =
        one_line(rebuild_from_export(&to_export(std::slice::from_ref(&entry))[..]).unwrap_err());
    assert!(
        err.contains(&format!(
            "field CON_BLOB_INLINE: attachment {}: its content hashes to",
            Digest::of(small)
        )),
        "{err}"
    );
    set(&mut entry, field::BLOB_INLINE, b"xyz");
    let err = one_line(rebuild_from_export(&to_export(&[entry])[..]).unwrap_err());
    assert!(
        err.contains("field CON_BLOB_INLINE: not `<digest> <base64>`"),
        "{err}"
    );

    // Attachments: a damaged part, a part out of range, a missing part.
    let output = &contents[1];
    let digest = Digest::of(output);
    let parts: Vec<ReadEntry> = blob_entries(&digest, output, &events[0], &ctx())
        .map(|e| ReadEntry::from(&e))
        .collect();
    let mut damaged = parts.clone();
    set(
        &mut damaged[1],
        field::BLOB_DATA,
        BASE64.encode(b"xyz").as_bytes(),
    );
    let err = one_line(rebuild_from_export(&to_export(&damaged)[..]).unwrap_err());
    assert!(
        err.starts_with(&format!("attachment sha256:{digest}: its parts add up to")),
        "{err}"
    );
    let mut swapped = parts.clone();
    let data = |e: &ReadEntry| e.get(field::BLOB_DATA).unwrap().to_vec();
    let (d0, d1) = (data(&swapped[0]), data(&swapped[1]));
    set(&mut swapped[0], field::BLOB_DATA, &d1);
    set(&mut swapped[1], field::BLOB_DATA, &d0);
    let err = one_line(rebuild_from_export(&to_export(&swapped)[..]).unwrap_err());
    assert!(err.contains("its content hashes to"), "{err}");
    let mut zero = parts.clone();
    set(&mut zero[0], field::BLOB_PART, b"0");
    let err = one_line(rebuild_from_export(&to_export(&zero)[..]).unwrap_err());
    assert!(err.contains("field CON_BLOB_PART: part 0 of 4"), "{err}");
    let rebuilt = rebuild_from_export(&to_export(&parts[1..])[..]).unwrap();
    assert_eq!(rebuilt.incomplete_blobs, vec![(digest, 3, 4)]);
    assert!(rebuilt.blobs.is_empty());

    // An empty attachment is one empty part.
    let empty: Vec<ReadEntry> = blob_entries(&Digest::of(b""), b"", &events[0], &ctx())
        .map(|e| ReadEntry::from(&e))
        .collect();
    assert_eq!(empty.len(), 1);
    let rebuilt = rebuild_from_export(&to_export(&empty)[..]).unwrap();
    assert_eq!(rebuilt.blobs[&Digest::of(b"")], b"");
}

#[test]
fn entries_of_other_programs_are_counted_not_rebuilt() {
    let other = ReadEntry {
        ordinal: 0,
        fields: vec![
            ("MESSAGE".into(), b"hello".to_vec()),
            ("CON_SEQ".into(), b"1".to_vec()),
        ],
    };
    let rebuilt = rebuild_from_export(&to_export(&[other])[..]).unwrap();
    assert!(rebuilt.logs.is_empty());
    assert_eq!(rebuilt.other_entries, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Damaged input of any kind is an error or a partial result, never a
    /// panic.
    #[test]
    fn damaged_input_never_panics(
        cuts in proptest::collection::vec((0usize..4096, any::<u8>()), 0..8),
        truncate in 0usize..4096,
    ) {
        let (events, _) = chain();
        let small: Vec<u8> = (0..200u8).collect();
        let mut entries: Vec<ReadEntry> = blob_entries(&Digest::of(&small), &small, &events[0], &ctx())
            .map(|e| ReadEntry::from(&e))
            .collect();
        entries.extend(mirror(&events[..4], &[]));
        for mut bytes in [to_export(&entries), to_json(&entries)] {
            for (at, b) in &cuts {
                let at = at % bytes.len();
                bytes[at] = *b;
            }
            bytes.truncate(bytes.len() - truncate.min(bytes.len()));
            if let Err(e) = rebuild_from_export(&bytes[..]) {
                one_line(e);
            }
            if let Err(e) = rebuild_from_json(&bytes[..]) {
                one_line(e);
            }
        }
    }
}

#[test]
fn logs_of_several_hosts_stay_apart_each_with_its_host() {
    let (events, _) = chain();
    let host_entries = |log_id: &str, system: &str, hostname: &str| -> Vec<ReadEntry> {
        let ctx = MirrorContext {
            log_id: log_id.into(),
            system: system.into(),
        };
        events
            .iter()
            .map(|e| {
                let mut entry = ReadEntry::from(&entry_for(e, &[], &ctx).unwrap());
                entry.fields.push(("_HOSTNAME".into(), hostname.into()));
                entry
                    .fields
                    .push(("_MACHINE_ID".into(), format!("{hostname:0>32}").into()));
                entry
            })
            .collect()
    };
    let a = "a".repeat(32);
    let b = "b".repeat(32);
    // Interleaved, newest first: the host is still the one of each log's
    // lowest seq.
    let mut entries = host_entries(&a, "alpha", "host-a");
    entries.extend(host_entries(&b, "", "host-b"));
    entries.reverse();
    let rebuilt = rebuild_from_export(&to_export(&entries)[..]).unwrap();
    assert_eq!(rebuilt.logs[&a], events);
    assert_eq!(rebuilt.logs[&b], events);
    let host_a = &rebuilt.hosts[&a];
    assert_eq!(host_a.system.as_deref(), Some("alpha"));
    assert_eq!(host_a.hostname.as_deref(), Some("host-a"));
    assert_eq!(host_a.name(), "alpha");
    // No con instance name: the machine's.
    let host_b = &rebuilt.hosts[&b];
    assert_eq!(host_b.system, None);
    assert_eq!(host_b.name(), "host-b");
    assert_eq!(
        host_b.machine_id.as_deref(),
        Some(format!("{:0>32}", "host-b").as_str())
    );
    assert_eq!(LogHost::default().name(), "-");
}

/// Entries a newer con wrote (a kind, or a version of a kind, this build
/// does not know) are intact records: set apart and named, never an error
/// that hides every other event of the journal.
#[test]
fn events_of_a_newer_con_are_set_apart_not_an_error() {
    let (events, _) = chain();
    let newer = |base: &Event, kind: u16, version: u16, prev: Digest| -> (ReadEntry, Digest) {
        let envelope = Envelope {
            seq: base.seq(),
            kind,
            kind_version: version,
            prev_hash: prev,
            ..base.envelope.clone()
        };
        let record = envelope.encode_record().unwrap();
        let hash = chain_hash(&prev, &record);
        let mut entry = entries_for(base);
        set(&mut entry, field::RECORD, BASE64.encode(&record).as_bytes());
        set(&mut entry, field::HASH, hash.to_hex().as_bytes());
        set(&mut entry, field::PREV_HASH, prev.to_hex().as_bytes());
        (entry, hash)
    };
    let known = events[2].envelope.kind;
    let (fourth, hash) = newer(&events[3], known, 99, events[2].hash);
    let (fifth, _) = newer(&events[4], 65_000, 1, hash);
    let mut entries: Vec<ReadEntry> = events[..3].iter().map(entries_for).collect();
    entries.extend([fourth, fifth]);
    let rebuilt = rebuild_from_export(&to_export(&entries)[..]).unwrap();
    let (log_id, log) = rebuilt.logs.first_key_value().unwrap();
    let seqs: Vec<u64> = log.iter().map(Event::seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let unknown: Vec<(u64, &str)> = rebuilt
        .unknown
        .iter()
        .map(|u| (u.seq, u.reason.as_str()))
        .collect();
    let kind_name = kind_by_id(known).unwrap().name;
    assert_eq!(
        unknown,
        [
            (
                4,
                format!("event kind {kind_name} has no version 99").as_str()
            ),
            (5, "unknown event kind id 65000")
        ]
    );
    let line = rebuilt.unknown_in(log_id).unwrap();
    assert!(
        line.starts_with(&format!(
            "2 event(s) of log {log_id} are of a kind or version this con does not know"
        )) && line.contains("first seq 4"),
        "{line}"
    );
    assert!(rebuilt.unknown_in("other").is_none());

    // A record that does not hash to its CON_HASH is still an error.
    let (mut bad, _) = newer(&events[3], known, 99, events[2].hash);
    set(&mut bad, field::HASH, "0".repeat(64).as_bytes());
    assert!(rebuild_from_export(&to_export(&[bad])[..]).is_err());
}
