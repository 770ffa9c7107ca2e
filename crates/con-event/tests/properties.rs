//! Property tests of the record codec.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benches fail loudly

use con_event::*;
use proptest::prelude::*;

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u64>(),
        any::<[u8; 16]>(),
        any::<i64>(),
        any::<u32>(),
        proptest::option::of("[a-z][a-z0-9-]{0,30}"),
        proptest::option::of(any::<[u8; 16]>()),
        proptest::option::of(".{0,40}"),
        proptest::option::of(any::<u64>()),
        (any::<u16>(), any::<u16>()),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(seq, id, ts, uid, agent, session, task, causation, (kind, ver), payload, prev)| {
                Envelope {
                    seq,
                    id: EventId(id),
                    ts_unix_nanos: ts,
                    actor: Actor { uid, agent },
                    session: session.map(SessionId),
                    task,
                    causation,
                    kind,
                    kind_version: ver,
                    payload,
                    prev_hash: Digest(prev),
                }
            },
        )
}

proptest! {
    #[test]
    fn envelope_round_trips(env in arb_envelope()) {
        let record = env.encode_record().unwrap();
        prop_assert_eq!(Envelope::decode_record(&record).unwrap(), env);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Event::from_stored(&bytes);
        let _ = Envelope::decode_record(&bytes);
    }

    /// Mutations of real records get past the format byte and exercise the
    /// envelope and payload decoders.
    #[test]
    fn decoding_mutated_golden_records_never_panics(
        file in 0usize..64,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut records: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "hex"))
            .collect();
        records.sort();
        let text = std::fs::read_to_string(&records[file % records.len()]).unwrap();
        let mut bytes = hex::decode(text.trim()).unwrap();
        for (pos, value) in edits {
            let i = pos % bytes.len();
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let _ = Event::from_stored(&bytes);
    }

    #[test]
    fn any_single_byte_flip_changes_the_chain_hash(env in arb_envelope(), pos in any::<usize>(), bit in 0u8..8) {
        let record = env.encode_record().unwrap();
        let mut flipped = record.clone();
        let i = pos % flipped.len();
        flipped[i] ^= 1 << bit;
        prop_assert_ne!(chain_hash(&env.prev_hash, &record), chain_hash(&env.prev_hash, &flipped));
    }
}
