//! A raw RTMP client for tests: it does a real handshake, then sends
//! whatever bytes a case needs, valid or not.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rtmp_guard::rtmp::amf0::{self, Amf0Value};
use rtmp_guard::rtmp::chunk::writer::ChunkWriter;
use rtmp_guard::rtmp::chunk::{ChunkParser, MessageHeader, Reassembler};
use rtmp_guard::rtmp::command;
use rtmp_guard::rtmp::control::Control;
use rtmp_guard::rtmp::handshake::ClientHandshake;

pub struct RawClient {
    pub stream: TcpStream,
}

/// A TCP connection bound to `source` before connecting.
pub fn connect_from(addr: SocketAddr, source: &str) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let source: SocketAddr = format!("{source}:0").parse().expect("source address");
    socket.bind(&source.into())?;
    match socket.connect_timeout(&addr.into(), Duration::from_secs(5)) {
        // Refused at accept can reset before connect returns; the caller
        // sees it as closed.
        Err(e) if e.kind() != ErrorKind::ConnectionReset => return Err(e),
        _ => {}
    }
    Ok(socket.into())
}

/// How a connection ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// EOF or reset within the deadline, after this many bytes.
    Within(Duration, Vec<u8>),
    /// Still open at the deadline.
    StillOpen,
}

impl RawClient {
    pub fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect to the guard");
        stream.set_nodelay(true).ok();
        RawClient { stream }
    }

    /// TCP connect from a chosen loopback source address (127.x.y.z).
    pub fn tcp_from(addr: SocketAddr, source: &str) -> RawClient {
        let stream = connect_from(addr, source).expect("connect from a source address");
        stream.set_nodelay(true).ok();
        RawClient { stream }
    }

    /// TCP connect plus a full client handshake.
    pub fn handshaken(addr: SocketAddr) -> RawClient {
        RawClient::handshake_on(RawClient::tcp(addr))
    }

    /// A full client handshake from a chosen source address.
    pub fn handshaken_from(addr: SocketAddr, source: &str) -> RawClient {
        RawClient::handshake_on(RawClient::tcp_from(addr, source))
    }

    /// A full client handshake after sending `prefix` (a PROXY header).
    pub fn handshaken_after(addr: SocketAddr, prefix: &[u8]) -> RawClient {
        let mut c = RawClient::tcp(addr);
        c.send(prefix);
        RawClient::handshake_on(c)
    }

    fn handshake_on(mut c: RawClient) -> RawClient {
        let (mut hs, c0c1) = ClientHandshake::start().expect("handshake start");
        c.send(&c0c1);
        c.stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut buf = [0u8; 4096];
        loop {
            let n = c.stream.read(&mut buf).expect("read S0S1S2");
            assert!(n > 0, "guard closed during the handshake");
            let step = hs.feed(&buf[..n]).expect("server handshake");
            if step.done {
                c.send(&step.response);
                assert_eq!(step.consumed, n, "server sent data before connect");
                return c;
            }
        }
    }

    /// Sends bytes, ignoring errors (the guard may already have closed).
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads what the guard sends until a message `wanted` picks has come,
    /// for at most `within`.
    pub fn read_message(
        &mut self,
        within: Duration,
        wanted: impl Fn(&MessageHeader, &[u8]) -> bool,
    ) -> Option<(MessageHeader, Vec<u8>)> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let left = within.saturating_sub(start.elapsed());
            if left.is_zero() {
                return None;
            }
            let wait = left.min(Duration::from_millis(200));
            self.stream.set_read_timeout(Some(wait)).ok();
            if let Ok(n) = self.stream.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            let found = messages_in(&got).into_iter().find(|(h, p)| wanted(h, p));
            if found.is_some() {
                return found;
            }
        }
    }

    /// Waits for the guard to close the connection, collecting what it sent.
    pub fn wait_closed(&mut self, within: Duration) -> Closed {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let left = within.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Closed::StillOpen;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.stream.read(&mut buf) {
                Ok(0) => return Closed::Within(start.elapsed(), got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Closed::StillOpen
                }
                Err(_) => return Closed::Within(start.elapsed(), got),
            }
        }
    }
}

/// A protocol control or user control message, on csid 2 and stream 0.
pub fn control_bytes(control: Control) -> Vec<u8> {
    let (type_id, payload) = control.encode();
    let mut bytes = Vec::new();
    ChunkWriter::new().write(
        &mut bytes,
        &MessageHeader::for_payload(2, type_id, 0, &payload),
        &payload,
    );
    bytes
}

pub fn cmd_header(len: usize) -> MessageHeader {
    MessageHeader {
        csid: 3,
        timestamp: 0,
        type_id: 20,
        stream_id: 0,
        length: len as u32,
    }
}

/// A chunked AMF0 command message.
pub fn command_bytes(values: &[Amf0Value]) -> Vec<u8> {
    command_on(0, values)
}

/// A chunked AMF0 command message on message stream `stream_id`.
pub fn command_on(stream_id: u32, values: &[Amf0Value]) -> Vec<u8> {
    let payload = amf0::encode(values).expect("encodable");
    let mut header = cmd_header(payload.len());
    header.stream_id = stream_id;
    let mut out = Vec::new();
    ChunkWriter::new().write(&mut out, &header, &payload);
    out
}

impl RawClient {
    /// connect, createStream and publish `name` on app `live`, as a
    /// minimal publisher does, pausing for the server between steps.
    pub fn publish(&mut self, name: &str) {
        self.open_stream("live", "publish", name);
    }

    /// connect to `app`, createStream, then `command` (publish or play)
    /// `name` on message stream 1.
    pub fn open_stream(&mut self, app: &str, command: &str, name: &str) {
        self.send(&connect_bytes(app));
        std::thread::sleep(Duration::from_millis(300));
        self.send(&command_bytes(&[
            Amf0Value::String("createStream".into()),
            Amf0Value::Number(2.0),
            Amf0Value::Null,
        ]));
        std::thread::sleep(Duration::from_millis(300));
        // After the name: a publish's type, a play's start, as ffmpeg sends.
        let last = if command == "play" {
            Amf0Value::Number(-2000.0)
        } else {
            Amf0Value::String("live".into())
        };
        self.send(&command_on(
            1,
            &[
                Amf0Value::String(command.into()),
                Amf0Value::Number(3.0),
                Amf0Value::Null,
                Amf0Value::String(name.into()),
                last,
            ],
        ));
    }
}

/// The values of a `connect` for `app`, shaped like ffmpeg's.
pub fn connect_values(app: &str) -> Vec<Amf0Value> {
    vec![
        Amf0Value::String("connect".into()),
        Amf0Value::Number(1.0),
        Amf0Value::Object(vec![
            ("app".into(), Amf0Value::String(app.into())),
            ("type".into(), Amf0Value::String("nonprivate".into())),
            ("flashVer".into(), Amf0Value::String("FMLE/3.0".into())),
            (
                "tcUrl".into(),
                Amf0Value::String(format!("rtmp://127.0.0.1/{app}")),
            ),
        ]),
    ]
}

pub fn connect_bytes(app: &str) -> Vec<u8> {
    command_bytes(&connect_values(app))
}

/// A `createStream` with transaction id `txn`.
pub fn create_stream(txn: f64) -> Vec<u8> {
    command_bytes(&[
        Amf0Value::String("createStream".into()),
        Amf0Value::Number(txn),
        Amf0Value::Null,
    ])
}

/// Every message in a chunk stream the guard wrote, audio and video
/// reassembled from their chunks, in the order they completed.
pub fn messages_in(bytes: &[u8]) -> Vec<(MessageHeader, Vec<u8>)> {
    let mut parser = ChunkParser::new(super::config::chunk_limits());
    let mut out = Vec::new();
    let mut media = Reassembler::default();
    let mut pos = 0;
    while pos < bytes.len() {
        let Ok(p) = parser.advance(&bytes[pos..]) else {
            break;
        };
        pos += p.consumed;
        if let Some(m) = p.message {
            out.push((m.header, m.payload.to_vec()));
        }
        out.extend(p.media.and_then(|piece| media.push(&piece)));
    }
    out
}

/// The names of the commands in bytes the guard wrote.
pub fn command_names(bytes: &[u8]) -> Vec<String> {
    commands_in(bytes).into_iter().map(|c| c.name).collect()
}

/// Decodes the commands in bytes the guard sent (its replies).
pub fn commands_in(bytes: &[u8]) -> Vec<command::Command> {
    messages_in(bytes)
        .iter()
        .filter(|(h, _)| matches!(h.type_id, 17 | 20))
        .filter_map(|(h, payload)| command::decode(h.type_id, payload, 64).ok())
        .collect()
}

/// The `code` of the status object in a reply command.
pub fn status_code(cmd: &command::Command) -> Option<String> {
    cmd.arguments
        .first()?
        .get("code")?
        .as_str()
        .map(str::to_string)
}
