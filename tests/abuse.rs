//! Flood and abuse defence, in-process: address rules, per-prefix rate and
//! concurrency, max_pending, learning bans, PROXY protocol in and out,
//! command floods, and dry run. Clients use their own loopback addresses
//! (127.0.0.x) so limits on one never touch another.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::client::{command_names, connect_bytes, create_stream, Closed, RawClient};
use common::config::GuardConfig;
use common::origin::Harness;
use rtmp_guard::proxy_protocol::{self, Header};
use rtmp_guard::verdict::{Reason, Stage};

/// Short handshake and connect deadlines, `tables` (TOML), and app `live`
/// in front of the test origin.
fn config(origin: SocketAddr, tables: &str) -> GuardConfig {
    GuardConfig::new()
        .server("handshake_timeout = \"2s\"\nconnect_timeout = \"2s\"")
        .tables(tables)
        .origin(origin)
        .origin_connect_timeout("1s")
        .live()
}

/// A guard on `config(origin, tables)`.
fn guard(tables: &str) -> Harness {
    Harness::with_config(|origin| config(origin, tables))
}

fn closed_at_once(c: &mut RawClient) -> bool {
    matches!(c.wait_closed(Duration::from_secs(1)), Closed::Within(_, ref got) if got.is_empty())
}

fn count(h: &Harness, stage: Stage, reason: Reason) -> u64 {
    h.guard.guard.metrics.blocked_count(stage, reason)
}

#[test]
fn denied_addresses_are_refused_at_accept_without_reaching_the_origin() {
    let h = guard("[access]\ndeny = [\"127.0.0.2/32\"]\n");
    let mut denied = RawClient::tcp_from(h.addr(), "127.0.0.2");
    assert!(closed_at_once(&mut denied));
    assert_eq!(count(&h, Stage::Accept, Reason::IpDenied), 1);
    // Another address is served.
    let mut ok = RawClient::handshaken_from(h.addr(), "127.0.0.3");
    ok.send(&connect_bytes("live"));
    assert!(h.origin.reaches(1, Duration::from_secs(3)));
}

#[test]
fn allow_list_admits_only_its_members() {
    let h = guard("[access]\nallow = [\"127.0.0.5/32\"]\n");
    let mut other = RawClient::tcp_from(h.addr(), "127.0.0.6");
    assert!(closed_at_once(&mut other));
    let _member = RawClient::handshaken_from(h.addr(), "127.0.0.5");
    assert_eq!(count(&h, Stage::Accept, Reason::IpDenied), 1);
}

#[test]
fn a_connection_flood_is_rate_limited_then_banned_and_others_are_untouched() {
    let h = guard(
        "[limits.per_ip]\nconnections_per_second = 2\nburst = 5\n\
         [bans]\nthreshold = 10\nwindow = \"60s\"\nduration = \"10m\"\n",
    );
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(RawClient::tcp_from(h.addr(), "127.0.0.7"));
    }
    let m = &h.guard.guard.metrics;
    // The burst of 5 is admitted (6 if the 30 connects took over half a
    // second, refilling one), 10 rate-limited refusals (1 point each)
    // reach the threshold, and the rest are refused as banned.
    let admitted = || {
        h.guard.guard.metrics.connections_total.get()
            - count(&h, Stage::Accept, Reason::RateLimited)
            - count(&h, Stage::Accept, Reason::Banned)
    };
    common::wait_for(Duration::from_secs(3), || {
        (h.guard.guard.metrics.connections_total.get() == 30).then_some(())
    });
    assert_eq!(count(&h, Stage::Accept, Reason::RateLimited), 10);
    assert!((5..=6).contains(&admitted()), "admitted {}", admitted());
    assert_eq!(
        count(&h, Stage::Accept, Reason::Banned),
        30 - 10 - admitted()
    );
    // Banned now: its /32 (the default prefix) is in the ban list, unexpired.
    let now = std::time::Instant::now();
    let bans = h.guard.guard.admission.bans().list();
    assert!(
        bans.iter()
            .any(|(prefix, ban)| prefix.to_string() == "127.0.0.7/32" && ban.until > now),
        "{bans:?}"
    );
    h.guard.guard.publish_gauges();
    assert_eq!(m.bans_active.get(), 1);
    let text = m.render();
    assert_eq!(
        common::metric(&text, "rtmp_guard_bans_total{reason=\"rate_limited\"}"),
        Some(1.0)
    );
    // Another client still gets through.
    let mut ok = RawClient::handshaken_from(h.addr(), "127.0.0.8");
    ok.send(&connect_bytes("live"));
    assert!(h.origin.reaches(1, Duration::from_secs(3)));
}

#[test]
fn repeated_protocol_abuse_bans_the_address() {
    let h = guard("[bans]\nthreshold = 10\n");
    for _ in 0..2 {
        let mut c = RawClient::tcp_from(h.addr(), "127.0.0.9");
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(
            c.wait_closed(Duration::from_secs(1)),
            Closed::Within(..)
        ));
    }
    // Two not_rtmp events (5 points each) reach the threshold of 10.
    let mut next = RawClient::tcp_from(h.addr(), "127.0.0.9");
    assert!(
        closed_at_once(&mut next),
        "not banned: {}",
        h.guard
            .guard
            .metrics
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(count(&h, Stage::Accept, Reason::Banned), 1);
    let text = h.guard.guard.metrics.render();
    assert_eq!(
        common::metric(&text, "rtmp_guard_bans_total{reason=\"not_rtmp\"}"),
        Some(1.0)
    );
}

#[test]
fn open_connections_per_prefix_are_capped() {
    let h = guard("[limits.per_ip]\nmax_concurrent = 3\nburst = 100\n");
    let _held: Vec<_> = (0..3)
        .map(|_| RawClient::handshaken_from(h.addr(), "127.0.0.10"))
        .collect();
    let mut fourth = RawClient::tcp_from(h.addr(), "127.0.0.10");
    assert!(closed_at_once(&mut fourth));
    assert_eq!(count(&h, Stage::Accept, Reason::TooManyConnections), 1);
    let _other = RawClient::handshaken_from(h.addr(), "127.0.0.11");
}

#[test]
fn pending_connections_past_max_pending_are_shed_but_relaying_sessions_stay() {
    let h = guard("[limits.global]\nmax_pending = 2\n[limits.per_ip]\nburst = 100\n");
    // One session gets past connect and relays.
    let mut relaying = RawClient::handshaken_from(h.addr(), "127.0.0.12");
    relaying.send(&connect_bytes("live"));
    assert!(h.origin.reaches(1, Duration::from_secs(3)));
    // Two stalled handshakes fill max_pending; the next is shed.
    let _a = RawClient::tcp_from(h.addr(), "127.0.0.13");
    let _b = RawClient::tcp_from(h.addr(), "127.0.0.14");
    common::wait_for(Duration::from_secs(2), || {
        (h.guard.guard.admission.pending() == 2).then_some(())
    })
    .expect("two pending connections");
    let mut shed = RawClient::tcp_from(h.addr(), "127.0.0.15");
    assert!(closed_at_once(&mut shed));
    assert_eq!(count(&h, Stage::Accept, Reason::Overloaded), 1);
    // The relaying session was not dropped to make room.
    relaying.send(&create_stream(2.0));
    assert!(common::wait_for(Duration::from_secs(2), || {
        let names = command_names(&h.origin.received.lock().unwrap()[0]);
        (names == ["connect", "createStream"]).then_some(())
    })
    .is_some());
}

#[test]
fn command_flood_closes_the_session() {
    let h = guard(
        "[limits.session]\ncommands_per_second = 5\ncommands_burst = 10\nmax_streams = 1000\n",
    );
    let mut c = RawClient::handshaken_from(h.addr(), "127.0.0.16");
    c.send(&connect_bytes("live"));
    let mut flood = Vec::new();
    for i in 0..200 {
        flood.extend(create_stream(f64::from(i + 2)));
    }
    c.send(&flood);
    assert!(matches!(
        c.wait_closed(Duration::from_secs(2)),
        Closed::Within(..)
    ));
    assert_eq!(count(&h, Stage::Session, Reason::CommandFlood), 1);
    // The origin got the connect and the burst, never the flood.
    common::wait_for(Duration::from_secs(2), || {
        let names = command_names(&h.origin.received.lock().unwrap()[0]);
        names.first().is_some_and(|n| n == "connect").then_some(())
    });
    std::thread::sleep(Duration::from_millis(100));
    let names = command_names(&h.origin.received.lock().unwrap()[0]);
    let created = names.iter().filter(|n| *n == "createStream").count();
    assert!(names.first().is_some_and(|n| n == "connect"), "{names:?}");
    assert!(created < 12, "{created}");
}

#[test]
fn create_stream_past_max_streams_is_refused() {
    let h = guard("[limits.session]\nmax_streams = 2\n");
    let mut c = RawClient::handshaken_from(h.addr(), "127.0.0.17");
    let mut bytes = connect_bytes("live");
    for i in 0..3 {
        bytes.extend(create_stream(f64::from(i + 2)));
    }
    c.send(&bytes);
    assert!(matches!(
        c.wait_closed(Duration::from_secs(2)),
        Closed::Within(..)
    ));
    assert_eq!(count(&h, Stage::Session, Reason::TooManyStreams), 1);
}

#[test]
fn dry_run_counts_what_it_would_block_and_blocks_nothing() {
    let h = Harness::with_config(|origin| {
        GuardConfig::new()
            .server("mode = \"dry_run\"")
            .tables(
                "[access]\ndeny = [\"127.0.0.18/32\"]\n\
                 [limits.per_ip]\nconnections_per_second = 1\nburst = 2\n\
                 [limits.session]\ncommands_per_second = 1\ncommands_burst = 1\n",
            )
            .origin(origin)
            .live()
    });
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = RawClient::handshaken_from(h.addr(), "127.0.0.18");
        let mut bytes = connect_bytes("live");
        bytes.extend(create_stream(f64::from(i + 2)));
        bytes.extend(create_stream(f64::from(i + 3)));
        c.send(&bytes);
        clients.push(c);
    }
    assert!(h.origin.reaches(6, Duration::from_secs(3)));
    let m = &h.guard.guard.metrics;
    assert_eq!(m.would_block_count(Stage::Accept, Reason::IpDenied), 6);
    // The origin sees the sixth connection before the relay has judged
    // that session's commands.
    let flooded = common::wait_for(Duration::from_secs(3), || {
        (m.would_block_count(Stage::Session, Reason::CommandFlood) >= 6).then_some(())
    });
    assert!(flooded.is_some());
    for reason in Reason::ALL {
        for stage in Stage::ALL {
            assert_eq!(
                m.blocked_count(stage, reason),
                0,
                "{stage:?}/{reason:?} was enforced"
            );
        }
    }
    // Every session is still open.
    for c in &mut clients {
        assert_eq!(c.wait_closed(Duration::from_millis(100)), Closed::StillOpen);
    }
}

#[test]
fn trusted_proxy_header_names_the_client_for_rules_and_for_the_origin() {
    // The guard sends the origin PROXY v2 headers of its own.
    let h = Harness::with_config(|origin| {
        config(
            origin,
            "[proxy_protocol]\ntrusted = [\"127.0.0.1/32\"]\n[access]\ndeny = [\"198.51.100.0/24\"]\n",
        )
        .origin_proxy_protocol("v2")
    });
    let real: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let front: SocketAddr = "203.0.113.1:1935".parse().unwrap();
    // v2 from the trusted peer: admitted as 192.0.2.7, and the origin is
    // told so with its own v2 header.
    let mut c = RawClient::handshaken_after(h.addr(), &proxy_protocol::encode_v2(real, front));
    c.send(&connect_bytes("live"));
    assert!(common::wait_for(Duration::from_secs(3), || {
        (!h.origin.proxy_headers.lock().unwrap().is_empty()).then_some(())
    })
    .is_some());
    assert_eq!(
        h.origin.proxy_headers.lock().unwrap()[0],
        Header::Proxied {
            source: real,
            destination: front
        }
    );
    // v1 naming a denied address: refused by the rule on that address.
    let denied: SocketAddr = "198.51.100.9:5000".parse().unwrap();
    let mut d = RawClient::tcp(h.addr());
    d.send(&proxy_protocol::encode_v1(denied, front));
    assert!(matches!(
        d.wait_closed(Duration::from_secs(1)),
        Closed::Within(..)
    ));
    assert_eq!(count(&h, Stage::Accept, Reason::IpDenied), 1);
    // A trusted peer without a header is a protocol violation.
    let mut bare = RawClient::tcp(h.addr());
    bare.send(&[3; 1537]);
    assert!(matches!(
        bare.wait_closed(Duration::from_secs(1)),
        Closed::Within(..)
    ));
    assert_eq!(count(&h, Stage::Handshake, Reason::ProtocolViolation), 1);
}

#[test]
fn proxy_header_from_an_untrusted_peer_is_forged() {
    let h = guard("[proxy_protocol]\ntrusted = [\"127.0.0.1/32\"]\n");
    let real: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    for header in [
        proxy_protocol::encode_v1(real, real),
        proxy_protocol::encode_v2(real, real),
    ] {
        let mut c = RawClient::tcp_from(h.addr(), "127.0.0.19");
        c.send(&header);
        assert!(matches!(
            c.wait_closed(Duration::from_secs(1)),
            Closed::Within(..)
        ));
    }
    assert_eq!(count(&h, Stage::Handshake, Reason::ForgedProxyHeader), 2);
    assert_eq!(h.origin.accepted(), 0);
}

#[test]
fn address_state_stays_bounded_under_rotating_proxy_addresses() {
    let h = guard(
        "[proxy_protocol]\ntrusted = [\"127.0.0.1/32\"]\n[limits.per_ip]\nmax_tracked = 64\n",
    );
    let front: SocketAddr = "203.0.113.1:1935".parse().unwrap();
    for i in 0..500u32 {
        let source = SocketAddr::new(
            std::net::IpAddr::from((0x2001_0db8_u128 << 96 | u128::from(i) << 64).to_be_bytes()),
            1,
        );
        let mut c = RawClient::tcp(h.addr());
        c.send(&proxy_protocol::encode_v2(source, front));
        drop(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(h.guard.guard.admission.tracked_addresses() <= 64 + 8);
}
