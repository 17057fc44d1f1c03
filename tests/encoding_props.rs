//! Properties of the record encoding and the key parser, over generated input.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;
use tower_idempotency::{CompletedRecord, IdempotencyKey, RecordedResponse};

/// Header names: lowercase token characters.
fn header_name() -> impl Strategy<Value = HeaderName> {
    let chars: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~"
        .chars()
        .collect();
    proptest::collection::vec(proptest::sample::select(chars), 1..24)
        .prop_map(|c| HeaderName::from_bytes(c.into_iter().collect::<String>().as_bytes()).unwrap())
}

/// Header values: every byte `http` allows, including obs-text.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let byte = prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff];
    proptest::collection::vec(byte, 0..64).prop_map(|v| HeaderValue::from_bytes(&v).unwrap())
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

fn record() -> impl Strategy<Value = CompletedRecord> {
    let status = (100u16..=999).prop_map(|s| StatusCode::from_u16(s).unwrap());
    let response = (
        status.clone(),
        header_map(),
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::option::of(header_map()),
    )
        .prop_map(|(status, headers, body, trailers)| {
            CompletedRecord::Response(
                RecordedResponse::new(status, headers, Bytes::from(body)).with_trailers(trailers),
            )
        });
    let framed = (
        status.clone(),
        header_map(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..256), 0..12),
        proptest::option::of(header_map()),
    )
        .prop_map(|(status, headers, frames, trailers)| {
            let frames = frames.into_iter().map(Bytes::from);
            CompletedRecord::Response(
                RecordedResponse::from_frames(status, headers, frames).with_trailers(trailers),
            )
        });
    prop_oneof![
        4 => response,
        4 => framed,
        1 => status.clone().prop_map(|status| CompletedRecord::Tombstone { status }),
        1 => status.prop_map(|status| CompletedRecord::Broken { status }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_record_round_trips(record in record()) {
        let decoded = CompletedRecord::decode(&record.encode()).expect("decodes");
        prop_assert_eq!(&decoded, &record);
        if let (CompletedRecord::Response(a), CompletedRecord::Response(b)) = (&decoded, &record) {
            for name in b.headers.keys() {
                let left: Vec<_> = a.headers.get_all(name).iter().collect();
                let right: Vec<_> = b.headers.get_all(name).iter().collect();
                prop_assert_eq!(left, right, "values of {} keep their order", name);
            }
        }
    }

    #[test]
    fn frames_replay_as_they_were_recorded(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
    ) {
        let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        let recorded = RecordedResponse::from_frames(StatusCode::OK, HeaderMap::new(), frames.clone());
        let decoded = CompletedRecord::decode(&CompletedRecord::Response(recorded).encode()).unwrap();
        let CompletedRecord::Response(decoded) = decoded else { panic!("not a response") };
        let replayed: Vec<Bytes> = decoded.frames().collect();
        let joined: Vec<u8> = frames.iter().flatten().copied().collect();
        prop_assert_eq!(&decoded.body[..], &joined[..]);
        // Frames come back as they went in; one frame (or none) is the body as a whole.
        if frames.len() > 1 {
            prop_assert_eq!(replayed, frames);
        } else {
            prop_assert_eq!(replayed.concat(), joined);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = CompletedRecord::decode(&bytes);
    }

    #[test]
    fn decoding_a_damaged_record_never_panics(
        record in record(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = record.encode().to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = CompletedRecord::decode(&bytes);
    }

    #[test]
    fn parsed_keys_are_short_visible_ascii(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(key) = IdempotencyKey::parse(&raw) {
            let text = key.as_str();
            prop_assert!(!text.is_empty() && text.len() <= 255);
            prop_assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)));
        }
    }
}
