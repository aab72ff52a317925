//! The relay's message-level path, as a property: for any chunk stream a
//! peer sends, in either direction, what the guard writes to the other
//! peer reads back, with a chunk parser, as exactly the messages the guard
//! decided to forward, whole or streamed, in order. Streams are built from
//! real message shapes (commands, data, media, control) framed with random
//! chunk sizes, csids and interleaving, then also mutated byte by byte.

use proptest::prelude::*;
use rtmp_guard::fuzz::relay_check;
use rtmp_guard::rtmp::amf0::{encode, Amf0Value as V};
use rtmp_guard::rtmp::chunk::writer::ChunkWriter;
use rtmp_guard::rtmp::chunk::{types, MessageHeader};
use rtmp_guard::rtmp::command::decode;

/// One message a peer may send.
fn message() -> impl Strategy<Value = (u32, u8, u32, Vec<u8>)> {
    let name = prop::sample::select(vec![
        "createStream",
        "publish",
        "play",
        "FCPublish",
        "closeStream",
        "getServerTime",
        "onStatus",
        "_result",
    ]);
    let command = (name, prop::sample::select(vec!["cam", "show", "x"])).prop_map(|(n, s)| {
        let values = [
            V::String(n.into()),
            V::Number(1.0),
            V::Null,
            V::String(s.into()),
        ];
        (types::COMMAND_AMF0, encode(&values).unwrap_or_default())
    });
    let data = Just((
        types::DATA_AMF0,
        encode(&[
            V::String("@setDataFrame".into()),
            V::String("onMetaData".into()),
        ])
        .unwrap_or_default(),
    ));
    let media = (
        prop::sample::select(vec![types::AUDIO, types::VIDEO]),
        prop::collection::vec(any::<u8>(), 0..3000),
    );
    let control = prop::sample::select(vec![
        (types::WINDOW_ACK_SIZE, 2_500_000u32.to_be_bytes().to_vec()),
        (types::USER_CONTROL, vec![0, 6, 0, 0, 0, 9]),
        (
            types::USER_CONTROL,
            vec![0, 3, 0, 0, 0, 1, 0, 0, 0x0b, 0xb8],
        ),
        (types::ACKNOWLEDGEMENT, 1000u32.to_be_bytes().to_vec()),
    ]);
    (
        prop::sample::select(vec![3u32, 4, 5, 6, 8, 70, 400]),
        prop_oneof![command, data, media, control],
        prop::sample::select(vec![0u32, 1, 2]),
        0u32..1000,
    )
        .prop_map(|(csid, (t, payload), stream_id, ts)| {
            let stream_id = if t < 7 { 0 } else { stream_id };
            let csid = if t < 7 { 2 } else { csid };
            (csid, t, stream_id * 1_000_000 + ts, payload)
        })
}

/// The bytes of `messages`, after a SetChunkSize of `chunk_size`.
fn stream(messages: &[(u32, u8, u32, Vec<u8>)], chunk_size: u32) -> Vec<u8> {
    let mut w = ChunkWriter::new();
    let mut out = Vec::new();
    let set = MessageHeader {
        csid: 2,
        timestamp: 0,
        type_id: types::SET_CHUNK_SIZE,
        stream_id: 0,
        length: 4,
    };
    w.write(&mut out, &set, &chunk_size.to_be_bytes());
    for (csid, type_id, packed, payload) in messages {
        let header = MessageHeader {
            csid: *csid,
            timestamp: packed % 1_000_000,
            type_id: *type_id,
            stream_id: packed / 1_000_000,
            length: payload.len() as u32,
        };
        w.write(&mut out, &header, payload);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn what_the_guard_emits_is_exactly_what_it_forwarded(
        messages in prop::collection::vec(message(), 1..24),
        chunk_size in 1u32..5000,
        mode in any::<u8>(),
    ) {
        let mut input = vec![mode];
        input.extend(stream(&messages, chunk_size));
        prop_assert_eq!(relay_check(&input), Ok(()));
    }

    #[test]
    fn mutated_streams_too(
        messages in prop::collection::vec(message(), 1..12),
        chunk_size in 1u32..500,
        mode in any::<u8>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut input = vec![mode];
        input.extend(stream(&messages, chunk_size));
        for (at, byte) in flips {
            let i = at.index(input.len());
            input[i] = byte;
        }
        prop_assert_eq!(relay_check(&input), Ok(()));
    }
}

/// A client's command naming a stream, in a `stream_key` session: the
/// names an attacker who knows nginx-rtmp's parser would try.
fn keyed_command() -> impl Strategy<Value = (u32, Vec<u8>)> {
    use rtmp_guard::fuzz::{FUZZ_OTHER_KEY, FUZZ_STREAM_KEY};
    let name = prop::sample::select(vec![
        "releaseStream",
        "FCPublish",
        "publish",
        "FCUnpublish",
        "closeStream",
        "deleteStream",
        "getStreamLength",
        "FCUnsubscribe",
        "play",
        "createStream",
    ]);
    let stream = prop::sample::select(vec![
        FUZZ_STREAM_KEY.to_string(),
        format!("{FUZZ_STREAM_KEY}?bandwidthtest=true"),
        FUZZ_OTHER_KEY.to_string(),
        "cam7".to_string(),
        "cam8".to_string(),
        "sk_fuzz_7f3a9".to_string(),
    ]);
    (name, stream, 0u32..3).prop_map(|(n, s, stream_id)| {
        let mut values = vec![V::String(n.into()), V::Number(0.0), V::Null];
        if n != "createStream" {
            values.push(V::String(s));
        }
        (stream_id, encode(&values).unwrap_or_default())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever a publisher sends after it names its key in a
    /// `releaseStream` (as encoders do first), no key it decided on
    /// reaches the origin: every command naming the stream carries the
    /// public name, and the output is still exactly what was forwarded.
    #[test]
    fn a_key_once_decided_never_reaches_the_origin(
        commands in prop::collection::vec(keyed_command(), 1..16),
        chunk_size in 1u32..300,
        step in 0u8..128,
    ) {
        use rtmp_guard::fuzz::{relay_outcome_with, stream_key_rules, FUZZ_STREAM_KEY};
        let first = encode(&[
            V::String("releaseStream".into()),
            V::Number(0.0),
            V::Null,
            V::String(FUZZ_STREAM_KEY.into()),
        ]).unwrap_or_default();
        let mut messages = vec![(3u32, types::COMMAND_AMF0, 0u32, first)];
        for (i, (stream_id, payload)) in commands.into_iter().enumerate() {
            messages.push((3, types::COMMAND_AMF0, stream_id * 1_000_000 + i as u32, payload));
        }
        let mut input = vec![step << 1];
        input.extend(stream(&messages, chunk_size));
        let outcome = relay_outcome_with(&input, stream_key_rules());
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
        let outcome = outcome.unwrap_or_default();
        prop_assert!(outcome.forwarded >= 1, "the releaseStream of the key was refused");
        for (type_id, _, _, payload) in &outcome.messages {
            let text = String::from_utf8_lossy(payload);
            prop_assert!(!text.contains(FUZZ_STREAM_KEY), "the key reached the origin: {text:?}");
            if *type_id != types::COMMAND_AMF0 {
                continue;
            }
            let Ok(cmd) = decode(*type_id, payload, 8) else {
                continue;
            };
            if ["publish", "FCPublish", "releaseStream"].contains(&cmd.name.as_str()) {
                let name = cmd.arguments.first().and_then(|v| v.as_str());
                prop_assert!(
                    matches!(name, Some("cam7") | Some("cam8")),
                    "a publish-role command reached the origin naming {name:?}"
                );
            }
        }
    }
}
