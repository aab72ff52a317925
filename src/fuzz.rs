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

/// The relay's message-level path, in either direction: parse, judge,
/// re-emit. The first byte picks the direction (bit 0) and the size of the
/// pieces the input is fed in; a publish is allowed on stream 1, and the
/// origin has started a play on stream 1, so media can flow. Panics if
/// what the guard emits does not read back, with the guard's own chunk
/// parser, as exactly the messages it decided to forward.
pub fn relay(data: &[u8]) {
    if let Err(why) = relay_check(data) {
        panic!("{why}");
    }
}

/// [`relay`], returning what went wrong instead of panicking.
pub fn relay_check(data: &[u8]) -> Result<(), String> {
    relay_outcome(data).map(|_| ())
}

/// How a [`relay`] run on some input ended, when its output was exact.
#[derive(Debug, Default)]
pub struct RelayOutcome {
    /// Messages forwarded whole or completed.
    pub forwarded: usize,
    /// Why the direction stopped early: a refusal or an origin violation.
    pub ended: Option<String>,
    /// What the peer written to reads, message by message: (type, message
    /// stream, timestamp, payload).
    pub messages: Vec<(u8, u32, u32, Vec<u8>)>,
}

/// Runs [`relay`]'s check; `Err` if the output was not exactly what was
/// forwarded.
pub fn relay_outcome(data: &[u8]) -> Result<RelayOutcome, String> {
    relay_outcome_with(data, relay_rules())
}

/// [`relay_outcome`], judged by `rules` instead of [`relay_rules`].
pub fn relay_outcome_with(
    data: &[u8],
    mut rules: crate::policy::session::SessionRules,
) -> Result<RelayOutcome, String> {
    use crate::policy::session::{Answer, Now};
    use crate::relay::direction::{Direction, Side, Sink, Stop};

    let Some((&mode, data)) = data.split_first() else {
        return Ok(RelayOutcome::default());
    };
    let side = if mode & 1 == 0 {
        Side::Client
    } else {
        Side::Origin
    };
    let step = usize::from(mode >> 1).max(1) * 5;
    let limits = fuzz_limits();
    let mut dir = Direction::new(side, ChunkParser::new(limits), 4096);
    let mut out = Vec::new();
    let mut to_sender = Vec::new();
    let mut log = Vec::new();
    let mut enforce = |_: &crate::verdict::Refusal| true;
    let mut ended = None;
    'input: for piece in data.chunks(step) {
        let mut pos = 0;
        while pos < piece.len() {
            let mut sink = Sink {
                out: &mut out,
                to_sender: &mut to_sender,
                enforce: &mut enforce,
                opened: false,
                forwarded: Some(&mut log),
            };
            let fed = dir.feed(&piece[pos..], &mut rules, Now::default(), &mut sink);
            pos += fed.consumed;
            match fed.stop {
                None if fed.consumed == 0 => return Err("feed made no progress".into()),
                None => {}
                Some(Stop::Held(held)) => {
                    if let Some(stop) = dir.resume(held, Answer::Allow, &mut rules, &mut sink) {
                        ended = Some(format!("{stop:?}"));
                        break 'input;
                    }
                }
                Some(stop) => {
                    ended = Some(format!("{stop:?}"));
                    break 'input;
                }
            }
        }
    }
    // The peer was told the guard's chunk size first.
    let mut told = Vec::new();
    Direction::new(side, ChunkParser::new(limits), 128)
        .own_control(&mut told, crate::rtmp::control::Control::SetChunkSize(4096));
    told.extend_from_slice(&out);
    let read = read_messages(&told, limits)?;
    let read: Vec<_> = read.into_iter().skip(1).collect();
    let decided = complete_messages(&log);
    if read != decided {
        return Err(format!(
            "emitted {} messages, decided {}: {read:?} vs {decided:?}",
            read.len(),
            decided.len()
        ));
    }
    Ok(RelayOutcome {
        forwarded: decided.len(),
        ended,
        messages: read,
    })
}

type Seen = (u8, u32, u32, Vec<u8>);

/// Whole messages, and media messages whose every piece was forwarded, in
/// the order they completed: (type, stream, timestamp, payload).
fn complete_messages(log: &[crate::relay::direction::Forwarded]) -> Vec<Seen> {
    use crate::relay::direction::Forwarded;
    let mut done = Vec::new();
    let mut media = crate::rtmp::chunk::Reassembler::default();
    for f in log {
        match f {
            Forwarded::Whole(h, p) => done.push((h.type_id, h.stream_id, h.timestamp, p.clone())),
            Forwarded::Piece(header, offset, bytes) => {
                let piece = crate::rtmp::chunk::MediaPiece {
                    header: *header,
                    offset: *offset,
                    bytes,
                };
                if let Some((h, p)) = media.push(&piece) {
                    done.push((h.type_id, h.stream_id, h.timestamp, p));
                }
            }
        }
    }
    done
}

/// Every complete message in `bytes`, media reassembled.
fn read_messages(bytes: &[u8], limits: ChunkLimits) -> Result<Vec<Seen>, String> {
    let mut parser = ChunkParser::new(limits);
    let mut out = Vec::new();
    let mut media = crate::rtmp::chunk::Reassembler::default();
    let mut pos = 0;
    while pos < bytes.len() {
        let p = parser
            .advance(&bytes[pos..])
            .map_err(|e| format!("the guard's output does not parse: {e}"))?;
        pos += p.consumed;
        if let Some(m) = p.message {
            let h = m.header;
            out.push((h.type_id, h.stream_id, h.timestamp, m.payload.to_vec()));
        }
        if let Some((h, payload)) = p.media.and_then(|piece| media.push(&piece)) {
            out.push((h.type_id, h.stream_id, h.timestamp, payload));
        }
    }
    Ok(out)
}

fn fuzz_limits() -> ChunkLimits {
    ChunkLimits {
        max_chunk_size: 65_536,
        max_command_size: 65_536,
        max_message_size: 1 << 20,
        max_chunk_streams: 64,
    }
}

/// The key of [`stream_key_rules`]' app, for public name `cam7`.
pub const FUZZ_STREAM_KEY: &str = "sk_fuzz_7f3a9c0123";
/// Another key of that app, for `cam8`.
pub const FUZZ_OTHER_KEY: &str = "sk_fuzz_other_0123";

/// A fresh session of app `live` in `stream_key` mode (`cam7` =
/// [`FUZZ_STREAM_KEY`], `cam8` = [`FUZZ_OTHER_KEY`]), players open to all,
/// with no stream open yet.
pub fn stream_key_rules() -> crate::policy::session::SessionRules {
    let text = format!(
        "[limits.session]\ncommands_per_second = 1000000\ncommands_burst = 1000000\n\
         [[upstream]]\nname = \"o\"\nservers = [\"127.0.0.1:1\"]\n\
         [[app]]\nname = \"live\"\nupstream = \"o\"\npublish = \"stream_key\"\nplay = \"none\"\n\
         keys = {{ cam7 = \"{FUZZ_STREAM_KEY}\", cam8 = \"{FUZZ_OTHER_KEY}\" }}\n"
    );
    fresh_rules(&text)
}

/// A fresh session of app `live` in the config `text`.
fn fresh_rules(text: &str) -> crate::policy::session::SessionRules {
    use crate::config::{Config, ReconnectTcUrl};
    use crate::policy::session::SessionRules;
    use crate::policy::{Registry, StreamPolicy};
    use std::sync::Arc;

    let Ok(config) = Config::parse(text, "fuzz.toml") else {
        unreachable!("the fuzz config is valid");
    };
    let Some(app) = config.app("live") else {
        unreachable!("the fuzz config has app live");
    };
    let Ok(connect) = command::ConnectRequest::with(&[("app", "live")]) else {
        unreachable!("a plain connect reads");
    };
    let policy = StreamPolicy::new(
        app,
        Arc::new(Registry::default()),
        std::net::IpAddr::from([127, 0, 0, 1]),
        &connect,
    );
    SessionRules::new(&config.limits, policy, None, ReconnectTcUrl::Rewrite)
}

/// A session of app `live` (publish and play open to all) with a publish
/// allowed on stream 1 and a play the origin started on stream 1.
pub fn relay_rules() -> crate::policy::session::SessionRules {
    use crate::policy::session::Now;
    use crate::rtmp::chunk::{types, Message, MessageHeader};

    let text = "[limits.session]\ncommands_per_second = 1000000\ncommands_burst = 1000000\n\
                [[upstream]]\nname = \"o\"\nservers = [\"127.0.0.1:1\"]\n\
                [[app]]\nname = \"live\"\nupstream = \"o\"\npublish = \"none\"\nplay = \"none\"\n";
    let mut rules = fresh_rules(text);
    let message = |name: &str, stream: &str, stream_id| {
        let values = [
            amf0::Amf0Value::String(name.into()),
            amf0::Amf0Value::Number(0.0),
            amf0::Amf0Value::Null,
            amf0::Amf0Value::String(stream.into()),
        ];
        let payload = amf0::encode(&values).unwrap_or_default();
        (
            MessageHeader::for_payload(3, types::COMMAND_AMF0, stream_id, &payload),
            payload,
        )
    };
    for (name, stream) in [("publish", "cam"), ("play", "show")] {
        let (header, payload) = message(name, stream, 1);
        rules.on_message(
            &Message {
                header,
                payload: &payload,
            },
            Now::default(),
        );
    }
    let info = amf0::Amf0Value::Object(vec![(
        "code".into(),
        amf0::Amf0Value::String("NetStream.Play.Start".into()),
    )]);
    let values = [
        amf0::Amf0Value::String("onStatus".into()),
        amf0::Amf0Value::Number(0.0),
        amf0::Amf0Value::Null,
        info,
    ];
    let payload = amf0::encode(&values).unwrap_or_default();
    let header = MessageHeader::for_payload(3, types::COMMAND_AMF0, 1, &payload);
    rules.on_origin_message(&Message {
        header,
        payload: &payload,
    });
    rules
}
