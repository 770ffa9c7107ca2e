//! The frame codec: round trips, and no panic on arbitrary bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use con_protocol::*;
use proptest::prelude::*;

fn append(payload: Vec<u8>) -> Request {
    Request::Append(ClientEvent {
        session: None,
        task: Some("t".into()),
        causation: None,
        kind: 7,
        kind_version: 1,
        payload,
        attachments: vec![b"x".to_vec()],
    })
}

#[test]
fn oversized_and_zero_lengths_are_refused_before_reading_a_body() {
    let mut huge = (MAX_FRAME_BYTES + 1).to_be_bytes().to_vec();
    huge.push(PROTOCOL_VERSION);
    assert_eq!(
        decode_frame::<Request>(&huge),
        Err(FrameError::BadLength(MAX_FRAME_BYTES + 1))
    );
    assert_eq!(
        decode_frame::<Request>(&[0, 0, 0, 0]),
        Err(FrameError::BadLength(0))
    );
}

#[test]
fn another_version_is_refused() {
    let mut frame = encode_frame(&Request::Status).unwrap();
    frame[LEN_BYTES] = 9;
    assert_eq!(
        decode_frame::<Request>(&frame),
        Err(FrameError::BadVersion(9))
    );
}

#[test]
fn partial_frames_ask_for_more() {
    let frame = encode_frame(&append(vec![1, 2, 3])).unwrap();
    for cut in 0..frame.len() {
        assert_eq!(
            decode_frame::<Request>(&frame[..cut]),
            Ok(None),
            "cut at {cut}"
        );
    }
    let (req, used) = decode_frame::<Request>(&frame).unwrap().unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(req, append(vec![1, 2, 3]));
}

proptest! {
    #[test]
    fn requests_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..200), follow: bool, from in any::<u64>()) {
        for req in [append(payload.clone()), Request::Status, Request::Query(Query { from_seq: from, follow, ..Query::default() })] {
            let frame = encode_frame(&req).unwrap();
            let (back, used) = decode_frame::<Request>(&frame).unwrap().unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_frame::<Request>(&bytes);
        let _ = decode_frame::<Response>(&bytes);
    }

    #[test]
    fn mutated_valid_frames_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..100), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut frame = encode_frame(&append(payload)).unwrap();
        for (pos, value) in edits {
            let i = LEN_BYTES + pos % (frame.len() - LEN_BYTES);
            frame[i] = value;
        }
        let _ = decode_frame::<Request>(&frame);
    }
}
