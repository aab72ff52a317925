//! Helpers shared by the integration and end-to-end tests: free ports, the
//! guard config builder, a raw RTMP client, HTTP scraping, the hostile
//! input set, and harnesses for the real programs (nginx-rtmp,
//! node-media-server, the guard binary, ffmpeg, headless Chromium).
#![allow(dead_code)]

pub mod browser;
pub mod client;
pub mod config;
pub mod flood;
pub mod hostile;
pub mod origin;
pub mod procs;
pub mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1, and that no other call
/// in this test process has returned.
///
/// Ports come from below Linux's ephemeral range (32768 up), so neither a
/// parallel test's `bind(0)` nor any outgoing connection's source port can
/// take one between this call and the server binding it. Each process starts
/// at its own offset, so a guard left over from another test binary is
/// unlikely to sit on the same numbers; the bind check skips any that are
/// taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(2_654_435_761) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(port).expect("below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An HTTP service on 127.0.0.1 that reads each request's form body and
/// answers with the status line (and any headers) `answer` gives for it,
/// as the tests' auth services do. Returns its address.
pub fn form_service(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> SocketAddr {
    use std::io::{BufRead, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let head = answer(&String::from_utf8_lossy(&body));
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {head}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    addr
}

/// GET over HTTP/1.0; returns the body, or None if the server is not up.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200") {
        return None;
    }
    Some(body.to_string())
}

/// The value of one sample in a Prometheus text exposition, e.g.
/// `rtmp_guard_blocked_sessions_total{stage="connect",reason="unknown_app"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub fn blocked_sample(stage: &str, reason: &str) -> String {
    format!("rtmp_guard_blocked_sessions_total{{reason=\"{reason}\",stage=\"{stage}\"}}")
}

/// Polls `f` until it returns Some or `within` passes.
pub fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the end-to-end tests must run (scripts/test.sh sets this).
pub fn e2e_required() -> bool {
    std::env::var("RTMP_GUARD_E2E").is_ok_and(|v| v == "require")
}

/// True when every tool is present. Otherwise prints SKIPPED with the
/// reason, or fails the test under RTMP_GUARD_E2E=require.
pub fn have_tools(test: &str, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| t.to_string())
        .collect();
    if tools.contains(&"nginx") && !PathBuf::from(procs::RTMP_MODULE).exists() {
        missing.push(format!("libnginx-mod-rtmp ({})", procs::RTMP_MODULE));
    }
    if missing.is_empty() {
        return true;
    }
    skip(test, &missing.join(", "));
    false
}

/// Prints `SKIPPED: test: missing ...`, or fails the test instead under
/// RTMP_GUARD_E2E=require.
pub fn skip(test: &str, missing: &str) {
    let msg =
        format!("SKIPPED: {test}: missing {missing} (scripts/install-test-deps.sh installs them)");
    if e2e_required() {
        panic!("RTMP_GUARD_E2E=require but {msg}");
    }
    eprintln!("{msg}");
    println!("{msg}");
}

/// Whether nftables works here: `nft` is installed and a table can be
/// added (then deleted). Otherwise prints SKIPPED with nft's reason.
///
/// Under RTMP_GUARD_E2E=require a missing `nft` or a missing CAP_NET_ADMIN
/// fails the test: the project installs nftables and CI runs as root. A
/// kernel that refuses nf_tables to a process that has CAP_NET_ADMIN (no
/// nf_tables support, or a sandbox that filters netlink) is no fault of the
/// project's setup: that is printed as SKIPPED, loudly, even then.
pub fn have_nftables(test: &str) -> bool {
    if !have_tools(test, &["nft"]) {
        return false;
    }
    let probe = format!("rtmp_guard_probe_{}", std::process::id());
    let nft = |args: &[&str]| std::process::Command::new("nft").args(args).output();
    let why = match nft(&["add", "table", "inet", &probe]) {
        Ok(out) if out.status.success() => {
            let _ = nft(&["delete", "table", "inet", &probe]);
            return true;
        }
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " / "),
        Err(e) => e.to_string(),
    };
    if !has_cap_net_admin() {
        skip(
            test,
            &format!("CAP_NET_ADMIN for nftables (run as root): {why}"),
        );
        return false;
    }
    let msg =
        format!("SKIPPED: {test}: this kernel refuses nf_tables even with CAP_NET_ADMIN: {why}");
    eprintln!("{msg}");
    println!("{msg}");
    false
}

/// Whether this process has CAP_NET_ADMIN in its effective set.
pub fn has_cap_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// One HTTP/1.1 request with `Connection: close`, as an operator's tool
/// sends it (`Host`, `Content-Type: application/json`, the bearer token if
/// given); returns the status and body, or (0, error) if the server is not
/// there.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let headers = format!("Host: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n");
    let (status, _, body) = http_raw(addr, method, path, &headers, body);
    (status, body)
}

/// One HTTP/1.1 request with `Connection: close` and exactly the header
/// lines in `headers` (each ending in CRLF) besides `Connection` and
/// `Content-Length`; returns the status, the response head and the body,
/// or (0, error, "") if the server is not there.
pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let attempt = || -> std::io::Result<(u16, String, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nConnection: close\r\n{headers}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, head.to_string(), body.to_string()))
    };
    attempt().unwrap_or_else(|e| (0, e.to_string(), String::new()))
}
