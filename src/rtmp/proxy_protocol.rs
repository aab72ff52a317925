//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), sans-IO.
//!
//! In front of the guard, a trusted load balancer prepends a header naming
//! the real client; the guard requires and believes it only from peers in
//! `[proxy_protocol] trusted`. Behind the guard, an upstream with
//! `proxy_protocol = "v1"|"v2"` is told the real client the same way.

use std::net::{IpAddr, SocketAddr};

/// The v2 signature: "\r\n\r\n\0\r\nQUIT\n".
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// A v1 header is at most 107 bytes including CRLF.
const V1_MAX: usize = 107;
/// Largest v2 header accepted: 16 bytes plus addresses and some TLVs.
pub const V2_MAX: usize = 16 + 536;

/// What a PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The proxy's own connection (v2 LOCAL, v1 UNKNOWN): use the peer.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// Does not start like a PROXY header at all.
    Missing,
    /// Starts like one but is not valid.
    Malformed(&'static str),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Missing => f.write_str("no PROXY protocol header"),
            ProxyError::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Whether bytes could be the start of a PROXY header (v1 or v2). Used to
/// spot forged headers from untrusted peers.
pub fn looks_like_header(start: &[u8]) -> bool {
    let prefix_of = |full: &[u8]| {
        let n = full.len().min(start.len());
        n > 0 && start[..n] == full[..n]
    };
    // "P" alone is also HTTP's POST/PUT; require enough to tell.
    (start.len() >= 2 && prefix_of(b"PROXY ")) || prefix_of(&V2_SIGNATURE)
}

/// Parses a header at the start of `input`. `Ok(None)`: need more bytes.
/// `Ok(Some((header, consumed)))`: the rest of the input is the stream.
pub fn parse(input: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    match first {
        b'P' => parse_v1(input),
        0x0D => parse_v2(input),
        _ => Err(ProxyError::Missing),
    }
}

fn parse_v1(input: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let n = input.len().min(6);
    if input[..n] != b"PROXY "[..n] {
        return Err(ProxyError::Missing);
    }
    let Some(end) = input.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if input.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    let line = input
        .get(..end)
        .and_then(|l| l.strip_suffix(b"\r"))
        .ok_or(ProxyError::Malformed("v1 line must end with CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 destination"))?;
            if src.is_ipv4() != (*family == "TCP4") || dst.is_ipv4() != (*family == "TCP4") {
                return Err(ProxyError::Malformed("v1 address family"));
            }
            let port = |p: &str| {
                p.parse::<u16>()
                    .ok()
                    .filter(|_| !p.starts_with('0') || p == "0")
                    .ok_or(ProxyError::Malformed("v1 port"))
            };
            Header::Proxied {
                source: SocketAddr::new(src, port(sport)?),
                destination: SocketAddr::new(dst, port(dport)?),
            }
        }
        _ => return Err(ProxyError::Malformed("v1 fields")),
    };
    Ok(Some((header, end + 1)))
}

fn parse_v2(input: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let n = input.len().min(V2_SIGNATURE.len());
    if input[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::Missing);
    }
    if input.len() < 16 {
        return Ok(None);
    }
    let version_command = input[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let length = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let total = 16 + length;
    if total > V2_MAX {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    let Some(body) = input.get(16..total) else {
        return Ok(None);
    };
    let header = match version_command & 0x0F {
        0 => Header::Local,
        1 => proxied_v2(input[13], body)?,
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Some((header, total)))
}

fn proxied_v2(family: u8, body: &[u8]) -> Result<Header, ProxyError> {
    let short = ProxyError::Malformed("v2 addresses truncated");
    let port = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    match family {
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes.
        0x11 => {
            let b = body.get(..12).ok_or(short)?;
            let ip = |at: usize| IpAddr::from([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(b, 8)),
                destination: SocketAddr::new(ip(4), port(b, 10)),
            })
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 => {
            let b = body.get(..36).ok_or(short)?;
            let ip = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[at..at + 16]);
                IpAddr::from(a)
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(b, 32)),
                destination: SocketAddr::new(ip(16), port(b, 34)),
            })
        }
        // UNSPEC: the proxy's own connection.
        0x00 => Ok(Header::Local),
        _ => Err(ProxyError::Malformed("v2 family is not TCP")),
    }
}

/// A v1 header for a proxied connection.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v1 header for a connection the proxy makes itself (a health check):
/// `PROXY UNKNOWN`, which the origin reads as "use the socket's address".
pub fn encode_v1_unknown() -> Vec<u8> {
    b"PROXY UNKNOWN\r\n".to_vec()
}

/// A v2 `LOCAL` header: a connection the proxy makes itself.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20); // version 2, LOCAL
    out.push(0x00); // unspecified family
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// A v2 header for a proxied connection.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family, as the header requires.
fn same_family(s: SocketAddr, d: SocketAddr) -> (SocketAddr, SocketAddr) {
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (
            SocketAddr::new(IpAddr::V6(v6(s.ip())), s.port()),
            SocketAddr::new(IpAddr::V6(v6(d.ip())), d.port()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trips_and_leaves_the_stream() {
        let mut bytes = encode_v1(addr("192.0.2.7:40000"), addr("127.0.0.1:1935"));
        bytes.push(3);
        let (h, used) = parse(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len() - 1);
        assert_eq!(
            h,
            Header::Proxied {
                source: addr("192.0.2.7:40000"),
                destination: addr("127.0.0.1:1935")
            }
        );
    }

    #[test]
    fn v2_round_trips_for_both_families() {
        for (s, d) in [
            ("192.0.2.7:40000", "127.0.0.1:1935"),
            ("[2001:db8::7]:40000", "[::1]:1935"),
        ] {
            let bytes = encode_v2(addr(s), addr(d));
            let (h, used) = parse(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(
                h,
                Header::Proxied {
                    source: addr(s),
                    destination: addr(d)
                }
            );
        }
    }

    #[test]
    fn partial_headers_ask_for_more() {
        assert_eq!(
            parse(&encode_v2_local()).unwrap(),
            Some((Header::Local, 16))
        );
        assert!(matches!(parse(&encode_v1_unknown()), Ok(Some((_, 15)))));
        let v1 = encode_v1(addr("192.0.2.7:1"), addr("127.0.0.1:2"));
        let v2 = encode_v2(addr("192.0.2.7:1"), addr("127.0.0.1:2"));
        for full in [v1, v2] {
            for cut in 1..full.len() {
                assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
            }
        }
    }

    #[test]
    fn local_and_unknown_use_the_peer() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Some((Header::Local, 16))));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Header::Local
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(parse(&[3, 0, 0]), Err(ProxyError::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n"),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 ::1 5.6.7.8 1 1\r\n"),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(parse(&[b'P'; 200]), Err(ProxyError::Missing)));
        let mut long = b"PROXY ".to_vec();
        long.extend([b'1'; 200]);
        assert!(matches!(parse(&long), Err(ProxyError::Malformed(_))));
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend([0x31, 0x11, 0, 12]);
        assert!(matches!(parse(&bad_version), Err(ProxyError::Malformed(_))));
    }

    #[test]
    fn forged_headers_are_recognised_from_few_bytes() {
        assert!(looks_like_header(b"PR"));
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(&V2_SIGNATURE[..3]));
        assert!(!looks_like_header(b"POST /"));
        assert!(!looks_like_header(b"P"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse(&data);
            let mut v2 = V2_SIGNATURE.to_vec();
            v2.extend_from_slice(&data);
            let _ = parse(&v2);
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&data);
            let _ = parse(&v1);
        }
    }
}
