//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus
//! replay test (`tests/fuzz_replay.rs`), so a crash found by either is the
//! same code path. Each takes arbitrary bytes and must never panic.

use crate::rtmp::chunk::{ChunkLimits, ChunkParser};
use crate::rtmp::handshake::{ClientHandshake, ServerHandshake};
use crate::rtmp::{amf0, command};

/// The chunk parser, fed in pieces whose size is the first input byte,
/// with every kept message run through the relay's inspection.
pub fn chunk_parser(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let mut parser = ChunkParser::new(ChunkLimits {
        max_chunk_size: 65_536,
        max_command_size: 65_536,
        max_message_size: 1 << 20,
        max_chunk_streams: 64,
    });
    for piece in data.chunks(usize::from(step).max(1)) {
        let mut pos = 0;
        while pos < piece.len() {
            let Ok(p) = parser.advance(&piece[pos..]) else {
                return;
            };
            assert!(p.consumed > 0, "advance made no progress");
            pos += p.consumed;
            if let Some(m) = p.message {
                let _ = match m.header.type_id {
                    17 | 20 => command::decode(m.header.type_id, m.payload, 32).map(|_| ()),
                    15 | 18 => command::check_data(m.header.type_id, m.payload, 32),
                    _ => Ok(()),
                };
            }
        }
    }
}

/// The AMF0 reader and the command decoder.
pub fn amf0(data: &[u8]) {
    let _ = amf0::read_all(data, 32);
    if let Ok(cmd) = command::decode(20, data, 32) {
        let _ = command::ConnectRequest::from_command(&cmd);
    }
}

/// Both handshake wrappers, fed in pieces.
pub fn handshake(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1) * 16;
    let mut server = ServerHandshake::new();
    for piece in data.chunks(step) {
        match server.feed(piece) {
            Ok(s) => assert!(s.consumed <= piece.len()),
            Err(_) => break,
        }
    }
    if let Ok((mut client, _)) = ClientHandshake::start() {
        let mut input = vec![3u8];
        input.extend_from_slice(data);
        let _ = client.feed(&input);
    }
}

/// The PROXY protocol parser, with the input also tried as a v1 line and
/// after a v2 signature.
pub fn proxy_protocol(data: &[u8]) {
    use crate::rtmp::proxy_protocol::{parse, V2_SIGNATURE};
    let check = |input: &[u8]| {
        if let Ok(Some((_, used))) = parse(input) {
            assert!(used <= input.len());
        }
    };
    check(data);
    let mut v1 = b"PROXY ".to_vec();
    v1.extend_from_slice(data);
    check(&v1);
    let mut v2 = V2_SIGNATURE.to_vec();
    v2.extend_from_slice(data);
    check(&v2);
}
