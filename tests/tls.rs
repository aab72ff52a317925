//! RTMPS in-process: the guard terminates TLS on its `[tls]` listeners and
//! speaks plain RTMP to a test origin; admission comes before the TLS
//! handshake; what is not TLS, and TLS that fails, is refused and named; a
//! reload swaps the certificate for new connections; an upstream with
//! `tls = true` is spoken to in TLS.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::client::{connect_bytes, RawClient};
use common::config::GuardConfig;
use common::origin::TestOrigin;
use common::tls::{
    client_config, closed_within, connect, connect_after, rtmp_handshake, tls_table, TestCert,
};
use rtmp_guard::config::Config;
use rtmp_guard::verdict::{Reason, Stage};

/// A guard with RTMPS on a free port in front of a test origin, serving
/// `cert` from files in its own directory.
struct Rtmps {
    rt: tokio::runtime::Runtime,
    origin: TestOrigin,
    guard: rtmp_guard::Running,
    dir: tempfile::TempDir,
}

impl Rtmps {
    fn start(cert: &TestCert, extra: &str) -> Rtmps {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let origin = rt.block_on(TestOrigin::start());
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = cert.write(dir.path());
        let listen: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let text = common::hostile::guard_config()
            .tables(&tls_table(listen, &cert_file, &key_file))
            .tables(extra)
            .origin(origin.addr)
            .live()
            .build();
        let path = dir.path().join("rtmp-guard.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap();
        let guard = rt
            .block_on(rtmp_guard::start_from(config, Some(path)))
            .unwrap();
        Rtmps {
            rt,
            origin,
            guard,
            dir,
        }
    }

    fn tls_addr(&self) -> SocketAddr {
        self.guard.rtmps_addrs[0]
    }

    fn blocked(&self, reason: Reason) -> u64 {
        self.guard
            .guard
            .metrics
            .blocked_count(Stage::Handshake, reason)
    }

    fn tls_handshakes(&self, result: &str) -> f64 {
        let text = self.guard.guard.metrics.render();
        common::metric(
            &text,
            &format!("rtmp_guard_tls_handshakes_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(-1.0)
    }

    fn reload(&self) -> bool {
        let _rt = self.rt.enter();
        rtmp_guard::lifecycle::reload(&self.guard.guard).is_ok()
    }
}

impl Drop for Rtmps {
    fn drop(&mut self) {
        self.guard.stop();
    }
}

#[test]
fn an_rtmps_client_reaches_a_plain_origin_through_the_guard() {
    let cert = TestCert::new();
    let g = Rtmps::start(&cert, "");
    let mut client = connect(g.tls_addr(), &cert).expect("TLS handshake with the guard");
    rtmp_handshake(&mut client);
    client.write_all(&connect_bytes("live")).unwrap();
    client.flush().unwrap();
    let got_connect = common::wait_for(Duration::from_secs(5), || {
        let all = g.origin.received.lock().unwrap();
        let names = common::client::command_names(all.first()?);
        names.iter().any(|n| n == "connect").then_some(())
    });
    assert!(got_connect.is_some(), "the origin never read the connect");
    assert_eq!(g.tls_handshakes("success"), 1.0);
    // The plain RTMP listener still serves plain RTMP.
    let mut plain = RawClient::handshaken(g.guard.rtmp_addrs[0]);
    plain.send(&connect_bytes("live"));
    assert!(g.origin.reaches(2, Duration::from_secs(5)));
}

#[test]
fn plain_rtmp_and_garbage_on_the_rtmps_port_are_refused_as_not_tls() {
    let cert = TestCert::new();
    let g = Rtmps::start(&cert, "");
    let (_, c0c1) = rtmp_guard::rtmp::handshake::ClientHandshake::start().unwrap();
    for first in [c0c1, b"GET / HTTP/1.1\r\n\r\n".to_vec()] {
        let mut c = RawClient::tcp(g.tls_addr());
        c.send(&first);
        assert!(
            matches!(
                c.wait_closed(Duration::from_secs(3)),
                common::client::Closed::Within(_, ref sent) if sent.is_empty()
            ),
            "closed at once, no byte sent"
        );
    }
    assert_eq!(g.blocked(Reason::NotTls), 2);
    assert_eq!(g.tls_handshakes("success"), 0.0);
    assert_eq!(g.origin.accepted(), 0);
    // Scored 5 each: the prefix reached the default threshold of 10, but
    // the hostile config turns bans off.
    assert_eq!(Reason::NotTls.default_ban_score(), 5);
}

#[test]
fn a_tls_handshake_the_client_gives_up_is_tls_failed() {
    let cert = TestCert::new();
    let g = Rtmps::start(&cert, "");
    // This client trusts nothing: it refuses the guard's certificate
    // with an alert.
    let result = connect_after(g.tls_addr(), b"", client_config(None));
    assert!(result.is_err(), "an untrusted certificate was accepted");
    let counted = common::wait_for(Duration::from_secs(3), || {
        (g.blocked(Reason::TlsFailed) == 1).then_some(())
    });
    assert!(counted.is_some(), "tls_failed not counted");
    assert_eq!(g.tls_handshakes("failure"), 1.0);
    assert_eq!(Reason::TlsFailed.default_ban_score(), 1);
}

#[test]
fn a_silent_client_is_refused_at_the_handshake_timeout() {
    let cert = TestCert::new();
    let g = Rtmps::start(&cert, "");
    // The hostile config's handshake_timeout is 2s.
    let mut c = RawClient::tcp(g.tls_addr());
    assert!(matches!(
        c.wait_closed(Duration::from_secs(4)),
        common::client::Closed::Within(..)
    ));
    assert_eq!(g.blocked(Reason::HandshakeTimeout), 1);
}

#[test]
fn admission_refuses_before_any_tls_handshake() {
    let cert = TestCert::new();
    let g = Rtmps::start(&cert, "[access]\ndeny = [\"127.0.0.1\"]\n");
    assert!(connect(g.tls_addr(), &cert).is_err());
    assert_eq!(
        g.guard
            .guard
            .metrics
            .blocked_count(Stage::Accept, Reason::IpDenied),
        1
    );
    for result in ["success", "failure", "timeout"] {
        assert_eq!(g.tls_handshakes(result), 0.0, "{result}");
    }
}

#[test]
fn behind_a_trusted_proxy_the_proxy_header_comes_before_the_client_hello() {
    let cert = TestCert::new();
    let g = Rtmps::start(
        &cert,
        "[proxy_protocol]\ntrusted = [\"127.0.0.1\"]\n[access]\ndeny = [\"192.0.2.66\"]\n",
    );
    let header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 443\r\n";
    let mut client = connect_after(g.tls_addr(), header, client_config(Some(&cert)))
        .expect("TLS after the PROXY header");
    rtmp_handshake(&mut client);
    client.write_all(&connect_bytes("live")).unwrap();
    assert!(g.origin.reaches(1, Duration::from_secs(5)));
    // The client the header names is the one admitted: a denied one is
    // refused before its ClientHello is read.
    let denied = b"PROXY TCP4 192.0.2.66 127.0.0.1 5000 443\r\n";
    assert!(connect_after(g.tls_addr(), denied, client_config(Some(&cert))).is_err());
    assert_eq!(
        g.guard
            .guard
            .metrics
            .blocked_count(Stage::Accept, Reason::IpDenied),
        1
    );
    assert_eq!(g.tls_handshakes("success"), 1.0);
}

#[test]
fn a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old() {
    let first = TestCert::new();
    let g = Rtmps::start(&first, "");
    // A session that began on the first certificate.
    let mut live = connect(g.tls_addr(), &first).unwrap();
    rtmp_handshake(&mut live);
    live.write_all(&connect_bytes("live")).unwrap();
    assert!(g.origin.reaches(1, Duration::from_secs(5)));

    let second = TestCert::new();
    second.write(g.dir.path());
    assert!(g.reload(), "reload with a new certificate");
    assert!(connect(g.tls_addr(), &second).is_ok(), "new certificate");
    assert!(connect(g.tls_addr(), &first).is_err(), "old one no more");

    // A key file that is not a key: the reload fails, the second
    // certificate stays.
    std::fs::write(g.dir.path().join("key.pem"), "not a key").unwrap();
    assert!(!g.reload(), "a bad key file was accepted");
    assert!(connect(g.tls_addr(), &second).is_ok(), "the old one stays");
    let text = g.guard.guard.metrics.render();
    assert_eq!(
        common::metric(&text, "rtmp_guard_config_reloads_total{result=\"failure\"}"),
        Some(1.0)
    );

    // The first session went on through both reloads.
    live.get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(!closed_within(&mut live, Duration::from_millis(600)));
    live.write_all(&connect_bytes("live")).ok();
}

#[test]
fn a_reload_cannot_remove_tls_while_its_listeners_run() {
    let cert = TestCert::new();
    let g = Rtmps::start(&cert, "");
    let path = g.dir.path().join("rtmp-guard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("[tls]").unwrap();
    let end = start + text[start..].find("key_file").unwrap();
    let end = end + text[end..].find('\n').unwrap() + 1;
    std::fs::write(&path, format!("{}{}", &text[..start], &text[end..])).unwrap();
    assert!(!g.reload());
    assert!(connect(g.tls_addr(), &cert).is_ok());
}

#[test]
fn an_upstream_with_tls_is_spoken_to_in_tls() {
    // The origin side: a guard serving RTMPS in front of the test origin.
    let cert = TestCert::new();
    let edge = Rtmps::start(&cert, "");
    let ca = edge.dir.path().join("cert.pem");
    // The guard under test speaks RTMPS to it, trusting its certificate.
    let text = GuardConfig::new()
        .origin(edge.tls_addr())
        .origin_tls(&format!(
            "tls = true\ntls_server_name = \"localhost\"\nca_file = \"{}\"\n",
            ca.display()
        ))
        .live()
        .build();
    let front = edge
        .rt
        .block_on(rtmp_guard::start(Config::parse(&text, "t.toml").unwrap()))
        .unwrap();
    let mut c = RawClient::handshaken(front.rtmp_addrs[0]);
    c.send(&connect_bytes("live"));
    assert!(
        edge.origin.reaches(1, Duration::from_secs(5)),
        "the origin never saw the session"
    );
    assert_eq!(edge.tls_handshakes("success"), 1.0);
    front.stop();
}
