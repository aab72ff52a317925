//! Flood and abuse defence end to end: nginx-rtmp as origin, ffmpeg as
//! publisher and player, HAProxy as the load balancer in front, floods from
//! their own loopback addresses (127.0.0.2 and up).
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::time::Duration;

use common::client::{command_bytes, connect_bytes, Closed, RawClient};
use common::config::GuardConfig;
use common::flood::{self, Mode};
use common::procs::{ffmpeg_publish, wait_exit, GuardProc, Haproxy, Nginx};
use common::{blocked_sample, have_tools, wait_for};
use rtmp_guard::rtmp::amf0::Amf0Value;

/// Guard settings for the flood tests: short handshake deadlines, and the
/// default per-address limits and bans.
fn flood_config(nginx: &Nginx) -> GuardConfig {
    GuardConfig::new()
        .server("handshake_timeout = \"2s\"\nconnect_timeout = \"3s\"")
        .origin(nginx.rtmp)
        .origin_connect_timeout("3s")
        .live()
}

/// In dry run the same kind of flood is counted, not refused at accept.
#[test]
fn dry_run_flood_is_counted_not_blocked() {
    if !have_tools("dry_run_flood_is_counted_not_blocked", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let guard = GuardProc::start(flood_config(&nginx).server("mode = \"dry_run\""));
    let stats = flood::run(
        guard.rtmp,
        "127.0.0.6",
        Mode::Junk,
        500,
        3,
        Duration::from_secs(1),
    );
    assert!(stats.connected >= 1400, "{stats:?}");
    let would = guard
        .metric("rtmp_guard_would_block_total{reason=\"rate_limited\",stage=\"accept\"}")
        + guard.metric("rtmp_guard_would_block_total{reason=\"banned\",stage=\"accept\"}");
    assert!(would > 1000.0, "would_block counted {would}");
    for reason in [
        "rate_limited",
        "banned",
        "too_many_connections",
        "ip_denied",
    ] {
        assert_eq!(
            guard.metric(&blocked_sample("accept", reason)),
            0.0,
            "{reason} enforced in dry run"
        );
    }
    // Every junk connection got past admission to the handshake, where
    // junk is refused whatever the mode.
    wait_for(Duration::from_secs(3), || {
        (guard.metric(&blocked_sample("handshake", "bad_version")) >= stats.connected as f64)
            .then_some(())
    })
    .expect("junk connections were not all read by the handshake stage");
    assert_eq!(nginx.naccepted(), 0);
}

/// HAProxy in front sends PROXY v2; the guard believes it only from
/// HAProxy, applies its rules to the real client, and tells nginx the real
/// client with its own PROXY header: v1, the only version nginx-rtmp's
/// `listen … proxy_protocol` reads (it parses a text line).
#[test]
fn proxy_protocol_through_haproxy_to_nginx() {
    if !have_tools(
        "proxy_protocol_through_haproxy_to_nginx",
        &["nginx", "haproxy"],
    ) {
        return;
    }
    let nginx = Nginx::start_with("", " proxy_protocol");
    let guard = GuardProc::start(
        GuardConfig::new()
            .tables("[proxy_protocol]\ntrusted = [\"127.0.0.1/32\"]\n[access]\ndeny = [\"127.0.0.21/32\"]")
            .origin(nginx.rtmp)
            .origin_proxy_protocol("v1")
            .live(),
    );
    let haproxy = Haproxy::start(guard.rtmp);

    // A publisher at 127.0.0.20, through HAProxy and the guard.
    let mut publisher = RawClient::handshaken_from(haproxy.addr, "127.0.0.20");
    publisher.publish("pp");
    let stat = wait_for(Duration::from_secs(5), || {
        let stat = nginx.stat();
        stat.contains("<name>pp</name>").then_some(stat)
    })
    .unwrap_or_else(|| {
        panic!(
            "nginx never saw the stream:\n{}\n{}",
            nginx.stat(),
            guard.log_text()
        )
    });
    assert!(
        stat.contains("<address>127.0.0.20</address>"),
        "nginx should see the real client address:\n{stat}"
    );

    // A rule keyed on the real address works behind HAProxy.
    let accepted = nginx.naccepted();
    let mut denied = RawClient::tcp_from(haproxy.addr, "127.0.0.21");
    assert!(matches!(
        denied.wait_closed(Duration::from_secs(2)),
        Closed::Within(..)
    ));
    wait_for(Duration::from_secs(2), || {
        (guard.metric(&blocked_sample("accept", "ip_denied")) == 1.0).then_some(())
    })
    .expect("the denied client was not refused by address");
    assert_eq!(nginx.naccepted(), accepted);

    // A PROXY header sent straight to the guard from an untrusted address
    // is forged.
    let mut forged = RawClient::tcp_from(guard.rtmp, "127.0.0.22");
    forged.send(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 1935\r\n");
    assert!(matches!(
        forged.wait_closed(Duration::from_secs(2)),
        Closed::Within(..)
    ));
    assert_eq!(
        guard.metric(&blocked_sample("handshake", "forged_proxy_header")),
        1.0
    );
    assert_eq!(nginx.naccepted(), accepted);
}

/// A client sending createStream in a tight loop is closed with
/// command_flood; an ffmpeg publisher on the same guard never is. (With the
/// default `max_streams = 8`, a createStream loop is refused as
/// too_many_streams first; the stream cap is raised here to show the rate
/// limit itself.)
#[test]
fn command_flood_is_closed_and_ffmpeg_is_not() {
    if !have_tools(
        "command_flood_is_closed_and_ffmpeg_is_not",
        &["nginx", "ffmpeg"],
    ) {
        return;
    }
    let nginx = Nginx::start("");
    let guard =
        GuardProc::start(flood_config(&nginx).tables("[limits.session]\nmax_streams = 1000"));
    let url = format!("rtmp://{}/live/cmd", guard.rtmp);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("publish.log");
    let mut publisher = ffmpeg_publish(&url, 6, &log);
    assert!(nginx.wait_publishing("cmd"));

    let mut flooder = RawClient::handshaken_from(guard.rtmp, "127.0.0.23");
    flooder.send(&connect_bytes("live"));
    let started = std::time::Instant::now();
    let mut txn = 2.0;
    while started.elapsed() < Duration::from_secs(5) {
        let mut burst = Vec::new();
        for _ in 0..50 {
            burst.extend(command_bytes(&[
                Amf0Value::String("createStream".into()),
                Amf0Value::Number(txn),
                Amf0Value::Null,
            ]));
            txn += 1.0;
        }
        if std::io::Write::write_all(&mut flooder.stream, &burst).is_err() {
            break;
        }
    }
    assert!(matches!(
        flooder.wait_closed(Duration::from_secs(2)),
        Closed::Within(..)
    ));
    assert_eq!(
        guard.metric(&blocked_sample("session", "command_flood")),
        1.0
    );

    let status = wait_exit(&mut publisher, Duration::from_secs(20)).expect("publisher finished");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        guard.metric(&blocked_sample("session", "command_flood")),
        1.0
    );
    assert_eq!(
        guard.metric(&blocked_sample("session", "too_many_streams")),
        0.0
    );
}
