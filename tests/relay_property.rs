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
