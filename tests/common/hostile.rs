//! The hostile set: every way a client may misbehave before `connect`, with
//! the stage and reason the guard must give it and how soon it must close.
//! The integration tests run it against an in-process origin, the end-to-end
//! tests against nginx-rtmp while ffmpeg publishes through the same guard.

use std::net::SocketAddr;
use std::time::Duration;

use rtmp_guard::rtmp::amf0::{self, Amf0Value};
use rtmp_guard::rtmp::chunk::writer::{basic_header, ChunkWriter};
use rtmp_guard::rtmp::chunk::MessageHeader;

use super::client::{cmd_header, command_bytes, connect_values, Closed, RawClient};
use super::config::GuardConfig;

/// Timeouts and limits the hostile set expects the guard to run with.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const MAX_MESSAGE_SIZE: u32 = 1_048_576;
pub const MAX_COMMAND_SIZE: u32 = 65_536;
pub const MAX_CHUNK_SIZE: u32 = 65_536;
pub const MAX_CHUNK_STREAMS: usize = 64;

/// A guard config with those timeouts and limits. The set comes from one
/// address all at once, so the per-address rate limit and the learning
/// bans are turned off: each case must get its own reason.
pub fn guard_config() -> GuardConfig {
    GuardConfig::new()
        .server("handshake_timeout = \"2s\"\nconnect_timeout = \"3s\"\nidle_timeout = \"30s\"")
        .tables(&format!(
            "[limits]\nmax_message_size = {MAX_MESSAGE_SIZE}\n\
             max_command_size = {MAX_COMMAND_SIZE}\nmax_chunk_size = {MAX_CHUNK_SIZE}\n\
             max_chunk_streams = {MAX_CHUNK_STREAMS}\nmax_amf_depth = 32\n\n\
             [limits.per_ip]\nconnections_per_second = 1000\nburst = 1000\n\n[bans]\nauto = false\n"
        ))
}

/// What the client does.
pub enum Act {
    /// TCP only, then these bytes (maybe none).
    Raw(Vec<u8>),
    /// C0+C1 one byte at a time, every `every`.
    Drip { every: Duration },
    /// A full handshake, then these bytes.
    AfterHandshake(Vec<u8>),
}

pub struct Case {
    pub name: &'static str,
    pub act: Act,
    pub stage: &'static str,
    pub reason: &'static str,
    /// The guard must have closed by then.
    pub deadline: Duration,
}

const PROMPT: Duration = Duration::from_millis(1500);

fn case(name: &'static str, act: Act, stage: &'static str, reason: &'static str) -> Case {
    let deadline = match reason {
        "handshake_timeout" => HANDSHAKE_TIMEOUT + PROMPT,
        "connect_timeout" => CONNECT_TIMEOUT + PROMPT,
        _ => PROMPT,
    };
    Case {
        name,
        act,
        stage,
        reason,
        deadline,
    }
}

fn violation(name: &'static str, bytes: Vec<u8>) -> Case {
    case(
        name,
        Act::AfterHandshake(bytes),
        "connect",
        "protocol_violation",
    )
}

/// A control message (Acknowledgement) on `csid`, full header.
fn ack_on(csid: u32) -> Vec<u8> {
    let mut out = Vec::new();
    ChunkWriter::new().write(
        &mut out,
        &MessageHeader {
            csid,
            timestamp: 0,
            type_id: 3,
            stream_id: 0,
            length: 4,
        },
        &[0, 0, 0, 1],
    );
    out
}

fn set_chunk_size(size: u32) -> Vec<u8> {
    let mut out = Vec::new();
    ChunkWriter::new().write(
        &mut out,
        &MessageHeader {
            csid: 2,
            timestamp: 0,
            type_id: 1,
            stream_id: 0,
            length: 4,
        },
        &size.to_be_bytes(),
    );
    out
}

/// A fmt 0 header announcing a message, with no payload.
fn announce(csid: u32, type_id: u8, length: u32) -> Vec<u8> {
    let mut out = basic_header(0, csid);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// A connect whose payload is these raw AMF bytes after name and id.
fn connect_with_raw_object(object: &[u8]) -> Vec<u8> {
    let mut payload = amf0::encode(&[Amf0Value::String("connect".into()), Amf0Value::Number(1.0)])
        .expect("encodable");
    payload.extend_from_slice(object);
    let mut out = Vec::new();
    ChunkWriter::new().write(&mut out, &cmd_header(payload.len()), &payload);
    out
}

fn nested_objects(depth: usize) -> Vec<u8> {
    let mut v = Amf0Value::Object(vec![("app".into(), Amf0Value::String("live".into()))]);
    for _ in 0..depth {
        v = Amf0Value::Object(vec![("x".into(), v)]);
    }
    amf0::encode(&[v]).expect("encodable")
}

/// Every case. `app` is a configured app, so only the abuse is refused.
pub fn cases() -> Vec<Case> {
    let mut rtmpe = vec![6u8];
    rtmpe.extend((0..1536u32).map(|i| (i * 7) as u8));
    let random: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80)
        .collect();
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    tls.extend([0x42u8; 160]);

    let truncated_string = connect_with_raw_object(&[3, 0, 3, b'a', b'p', b'p', 2, 0, 200, b'l']);
    let mut too_many_csids = Vec::new();
    for csid in 2..(2 + MAX_CHUNK_STREAMS as u32 + 1) {
        too_many_csids.extend(ack_on(csid));
    }
    let mut mid_message = announce(5, 20, 300);
    mid_message.extend([0u8; 128]);
    mid_message.extend(announce(5, 20, 10));

    vec![
        case(
            "http_request",
            Act::Raw(b"GET / HTTP/1.1\r\nHost: stream.example\r\n\r\n".to_vec()),
            "handshake",
            "not_rtmp",
        ),
        case("tls_client_hello", Act::Raw(tls), "handshake", "not_rtmp"),
        case(
            "ssh_banner",
            Act::Raw(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec()),
            "handshake",
            "not_rtmp",
        ),
        case(
            "rtmpe_version_6",
            Act::Raw(rtmpe),
            "handshake",
            "bad_version",
        ),
        case(
            "rtmpe_version_8",
            Act::Raw(vec![8; 1537]),
            "handshake",
            "bad_version",
        ),
        case("random_bytes", Act::Raw(random), "handshake", "bad_version"),
        case(
            "idle_after_tcp",
            Act::Raw(Vec::new()),
            "handshake",
            "handshake_timeout",
        ),
        case(
            "drip_fed_handshake",
            Act::Drip {
                every: Duration::from_millis(100),
            },
            "handshake",
            "handshake_timeout",
        ),
        case(
            "handshake_then_nothing",
            Act::AfterHandshake(Vec::new()),
            "connect",
            "connect_timeout",
        ),
        violation("fmt1_on_unknown_csid", {
            let mut b = basic_header(1, 3);
            b.extend([0, 0, 0, 0, 0, 10, 20]);
            b
        }),
        violation("fmt2_on_unknown_csid", {
            let mut b = basic_header(2, 4);
            b.extend([0, 0, 0]);
            b
        }),
        violation("fmt3_on_unknown_csid", basic_header(3, 5)),
        violation("chunk_size_zero", set_chunk_size(0)),
        violation("chunk_size_over_2_31", set_chunk_size(0x8000_0000)),
        violation("chunk_size_over_limit", set_chunk_size(MAX_CHUNK_SIZE + 1)),
        violation(
            "command_over_max_command_size",
            announce(3, 20, MAX_COMMAND_SIZE + 1),
        ),
        violation(
            "data_over_max_command_size",
            announce(3, 18, MAX_COMMAND_SIZE + 1),
        ),
        violation(
            "message_over_max_message_size",
            announce(6, 9, MAX_MESSAGE_SIZE + 1),
        ),
        violation("too_many_chunk_streams", too_many_csids),
        violation("header_mid_message", mid_message),
        violation(
            "amf_depth_over_limit",
            connect_with_raw_object(&nested_objects(40)),
        ),
        violation(
            "connect_nesting_12000_strict_arrays",
            connect_with_raw_object(&amf0::nested_strict_arrays(12_000)),
        ),
        violation("amf_truncated_string", truncated_string),
        violation("amf_unknown_marker", connect_with_raw_object(&[0x42, 0, 0])),
        violation(
            "amf_length_past_message",
            connect_with_raw_object(&[12, 0x7F, 0xFF, 0xFF, 0xFF, b'x']),
        ),
        violation(
            "publish_before_connect",
            command_bytes(&[
                Amf0Value::String("publish".into()),
                Amf0Value::Number(5.0),
                Amf0Value::Null,
                Amf0Value::String("stream".into()),
            ]),
        ),
        violation("media_before_connect", {
            let mut b = announce(6, 9, 10);
            b.extend([0x17u8; 10]);
            b
        }),
        violation("data_before_connect", {
            let mut out = Vec::new();
            let payload =
                amf0::encode(&[Amf0Value::String("@setDataFrame".into())]).expect("encodable");
            ChunkWriter::new().write(
                &mut out,
                &MessageHeader {
                    csid: 4,
                    timestamp: 0,
                    type_id: 18,
                    stream_id: 1,
                    length: payload.len() as u32,
                },
                &payload,
            );
            out
        }),
        violation("connect_without_app", {
            let mut values = connect_values("x");
            values[2] = Amf0Value::Object(vec![]);
            command_bytes(&values)
        }),
    ]
}

/// Runs one case; returns how long the guard took to close, from the TCP
/// connect, or an error.
pub fn run(case: &Case, guard: SocketAddr) -> Result<Duration, String> {
    let start = std::time::Instant::now();
    let mut client = match &case.act {
        Act::Raw(bytes) => {
            let mut c = RawClient::tcp(guard);
            c.send(bytes);
            c
        }
        Act::Drip { every } => {
            let mut c = RawClient::tcp(guard);
            let mut c0c1 = vec![3u8];
            c0c1.extend([0u8; 1536]);
            for b in c0c1 {
                c.send(&[b]);
                std::thread::sleep(*every);
                if start.elapsed() > case.deadline {
                    break;
                }
                if peer_closed(&c) {
                    break;
                }
            }
            c
        }
        Act::AfterHandshake(bytes) => {
            let mut c = RawClient::handshaken(guard);
            c.send(bytes);
            c
        }
    };
    let left = case.deadline.saturating_sub(start.elapsed());
    match client.wait_closed(left) {
        Closed::Within(..) if start.elapsed() <= case.deadline => Ok(start.elapsed()),
        _ => Err(format!(
            "{}: still open {:?} after connecting (deadline {:?})",
            case.name,
            start.elapsed(),
            case.deadline
        )),
    }
}

/// Non-blocking check for EOF/reset on a drip-fed connection.
fn peer_closed(c: &RawClient) -> bool {
    let mut b = [0u8; 1];
    c.stream.set_nonblocking(true).ok();
    let closed = match c.stream.peek(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    c.stream.set_nonblocking(false).ok();
    closed
}

/// Runs every case in parallel threads; returns the failures.
pub fn run_all(guard: SocketAddr) -> Vec<String> {
    let handles: Vec<_> = cases()
        .into_iter()
        .map(|c| std::thread::spawn(move || run(&c, guard).map(|_| ()).err()))
        .collect();
    handles
        .into_iter()
        .filter_map(|h| {
            h.join()
                .unwrap_or_else(|_| Some("case thread panicked".into()))
        })
        .collect()
}
