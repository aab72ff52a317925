//! The RTMP handshake, both sides, as bounded sans-IO state machines.
//!
//! rml_rtmp's `Handshake` does the digest handshake ffmpeg, librtmp and OBS
//! expect, but it buffers whatever it is given. These wrappers feed it exactly
//! the bytes each step needs (C0+C1 = 1537, C2 = 1536, S0+S1+S2 = 3073) and
//! leave the rest to the caller, so the first bytes of the chunk stream are
//! never lost and nothing grows with what a client sends.
//!
//! A client whose first byte is not 3 is refused at once: there is no reason
//! to wait for the rest of a TLS ClientHello or an HTTP request.

use std::fmt;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};

pub const RTMP_VERSION: u8 = 3;
const C0_C1: usize = 1 + 1536;
const C2: usize = 1536;
const S0_S1_S2: usize = 1 + 1536 + 1536;

/// A recognisable non-RTMP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherProtocol {
    Http,
    Tls,
    Ssh,
    /// A PROXY protocol header (only trusted peers may send one).
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer speaks another protocol.
    NotRtmp(OtherProtocol),
    /// An RTMP version other than 3 (RTMPE is 6 or 8), or unrecognised bytes.
    BadVersion(u8),
    /// rml_rtmp refused the handshake bytes.
    Failed(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::NotRtmp(p) => write!(f, "not RTMP: looks like {p:?}"),
            HandshakeError::BadVersion(v) => write!(f, "unsupported RTMP version byte {v:#04x}"),
            HandshakeError::Failed(why) => write!(f, "handshake failed: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Names what a non-RTMP first flight is, from as many bytes as arrived.
pub fn classify(first: &[u8]) -> HandshakeError {
    const HTTP: [&[u8]; 9] = [
        b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"CONN", b"PATC", b"PRI ",
    ];
    let prefix_matches = |p: &[u8]| {
        let n = p.len().min(first.len());
        n > 0 && first[..n] == p[..n]
    };
    match first.first() {
        None => HandshakeError::BadVersion(0),
        Some(_) if super::proxy_protocol::looks_like_header(first) => {
            HandshakeError::NotRtmp(OtherProtocol::Proxy)
        }
        Some(0x16) => HandshakeError::NotRtmp(OtherProtocol::Tls),
        Some(_) if prefix_matches(b"SSH-") => HandshakeError::NotRtmp(OtherProtocol::Ssh),
        Some(_) if HTTP.iter().any(|p| prefix_matches(p)) => {
            HandshakeError::NotRtmp(OtherProtocol::Http)
        }
        Some(&v) => HandshakeError::BadVersion(v),
    }
}

/// Output of one `feed` call.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Input bytes used; the rest belongs to the chunk stream.
    pub consumed: usize,
    /// Bytes to send to the peer now (may be empty).
    pub response: Vec<u8>,
    /// The handshake is complete.
    pub done: bool,
}

/// The guard's side of the client handshake.
pub struct ServerHandshake {
    inner: Handshake,
    buf: Vec<u8>,
    want: usize,
    done: bool,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    pub fn new() -> ServerHandshake {
        ServerHandshake {
            inner: Handshake::new(PeerType::Server),
            buf: Vec::with_capacity(C0_C1),
            want: C0_C1,
            done: false,
        }
    }

    /// Feeds bytes from the client.
    pub fn feed(&mut self, input: &[u8]) -> Result<Step, HandshakeError> {
        if self.done {
            return Ok(Step {
                consumed: 0,
                response: Vec::new(),
                done: true,
            });
        }
        if self.want == C0_C1 && self.buf.is_empty() {
            if let Some(&v) = input.first() {
                if v != RTMP_VERSION {
                    return Err(classify(input));
                }
            }
        }
        let consumed = fill(&mut self.buf, self.want, input);
        if self.buf.len() < self.want {
            return Ok(Step {
                consumed,
                response: Vec::new(),
                done: false,
            });
        }
        let result = self
            .inner
            .process_bytes(&self.buf)
            .map_err(|e| HandshakeError::Failed(format!("{e:?}")))?;
        self.buf.clear();
        let (response, done) = match result {
            HandshakeProcessResult::InProgress { response_bytes } => (response_bytes, false),
            HandshakeProcessResult::Completed { response_bytes, .. } => (response_bytes, true),
        };
        self.want = C2;
        self.done = done;
        Ok(Step {
            consumed,
            response,
            done,
        })
    }
}

/// The guard's side of the upstream handshake.
pub struct ClientHandshake {
    inner: Handshake,
    buf: Vec<u8>,
}

impl ClientHandshake {
    /// Starts a handshake; returns it and C0+C1 to send.
    pub fn start() -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
        let mut inner = Handshake::new(PeerType::Client);
        let c0c1 = inner
            .generate_outbound_p0_and_p1()
            .map_err(|e| HandshakeError::Failed(format!("{e:?}")))?;
        Ok((
            ClientHandshake {
                inner,
                buf: Vec::with_capacity(S0_S1_S2),
            },
            c0c1,
        ))
    }

    /// Feeds bytes from the server; when done, `response` holds C2.
    pub fn feed(&mut self, input: &[u8]) -> Result<Step, HandshakeError> {
        if self.buf.is_empty() {
            if let Some(&v) = input.first() {
                if v != RTMP_VERSION {
                    return Err(classify(input));
                }
            }
        }
        let consumed = fill(&mut self.buf, S0_S1_S2, input);
        if self.buf.len() < S0_S1_S2 {
            return Ok(Step {
                consumed,
                response: Vec::new(),
                done: false,
            });
        }
        match self.inner.process_bytes(&self.buf) {
            Ok(HandshakeProcessResult::Completed { response_bytes, .. }) => Ok(Step {
                consumed,
                response: response_bytes,
                done: true,
            }),
            Ok(HandshakeProcessResult::InProgress { .. }) => Err(HandshakeError::Failed(
                "server handshake did not complete".into(),
            )),
            Err(e) => Err(HandshakeError::Failed(format!("{e:?}"))),
        }
    }
}

/// Moves up to `want - buf.len()` bytes of `input` into `buf`.
fn fill(buf: &mut Vec<u8>, want: usize, input: &[u8]) -> usize {
    let n = want.saturating_sub(buf.len()).min(input.len());
    buf.extend_from_slice(&input[..n]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs a full guard-as-server, guard-as-client handshake through the
    /// wrappers, feeding `step` bytes at a time, with `extra` trailing bytes
    /// after C2 that must be left unconsumed.
    fn pair(step: usize, extra: &[u8]) -> usize {
        let (mut client, c0c1) = ClientHandshake::start().unwrap();
        let mut server = ServerHandshake::new();
        let mut s012 = Vec::new();
        for piece in c0c1.chunks(step) {
            let s = server.feed(piece).unwrap();
            assert_eq!(s.consumed, piece.len());
            s012.extend(s.response);
        }
        assert_eq!(s012.len(), S0_S1_S2);
        let mut c2 = Vec::new();
        for piece in s012.chunks(step) {
            let s = client.feed(piece).unwrap();
            c2.extend(s.response);
        }
        assert_eq!(c2.len(), C2);
        c2.extend_from_slice(extra);
        let mut consumed = 0;
        let mut done = false;
        for piece in c2.chunks(step) {
            let s = server.feed(piece).unwrap();
            consumed += s.consumed;
            done |= s.done;
        }
        assert!(done);
        consumed
    }

    #[test]
    fn completes_and_leaves_the_chunk_stream_alone() {
        assert_eq!(pair(4096, b"connect..."), C2);
        assert_eq!(pair(7, b"connect..."), C2);
    }

    #[test]
    fn other_protocols_are_named_from_the_first_bytes() {
        let mut hs = ServerHandshake::new();
        assert_eq!(
            hs.feed(b"GET / HTTP/1.1\r\n"),
            Err(HandshakeError::NotRtmp(OtherProtocol::Http))
        );
        assert_eq!(
            ServerHandshake::new().feed(&[0x16, 3, 1, 0, 0xa5]),
            Err(HandshakeError::NotRtmp(OtherProtocol::Tls))
        );
        assert_eq!(
            ServerHandshake::new().feed(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Err(HandshakeError::NotRtmp(OtherProtocol::Ssh))
        );
        assert_eq!(
            ServerHandshake::new().feed(&[6]),
            Err(HandshakeError::BadVersion(6))
        );
        assert_eq!(
            ServerHandshake::new().feed(&[8, 0, 0]),
            Err(HandshakeError::BadVersion(8))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_client_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4000), step in 1usize..2000) {
            let mut hs = ServerHandshake::new();
            for piece in data.chunks(step) {
                if hs.feed(piece).is_err() { break; }
            }
        }

        #[test]
        fn arbitrary_server_bytes_never_panic(mut data in prop::collection::vec(any::<u8>(), 0..4000)) {
            if let Some(b) = data.first_mut() { *b = 3; }
            let (mut hs, _) = ClientHandshake::start().unwrap();
            let _ = hs.feed(&data);
        }
    }
}
