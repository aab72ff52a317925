//! RTMPS end to end with the programs operators run: ffmpeg publishes
//! `rtmps://` through the guard into a plain nginx-rtmp, ffmpeg and
//! rtmpdump play it back over `rtmps://`, and the certificate is replaced
//! (SIGHUP) under a live RTMPS stream. The certificate is made by the test.
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::procs::{
    ffmpeg_play, ffmpeg_publish, rtmpdump_background, wait_exit, GuardProc, Nginx,
};
use common::tls::{connect, tls_table, TestCert};
use common::{have_tools, hostile, wait_for};

/// A guard in front of `nginx` with RTMPS on a free port, serving `cert`
/// from `dir`.
fn guard_for(nginx: &Nginx, cert: &TestCert, dir: &std::path::Path) -> (GuardProc, SocketAddr) {
    let (cert_file, key_file) = cert.write(dir);
    let tls: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let guard = GuardProc::start(
        hostile::guard_config()
            .tables(&tls_table(tls, &cert_file, &key_file))
            .origin(nginx.rtmp)
            .origin_connect_timeout("3s")
            .live(),
    );
    (guard, tls)
}

#[test]
fn ffmpeg_publishes_rtmps_into_plain_nginx_and_ffmpeg_and_rtmpdump_play_it_back() {
    if !have_tools("rtmps_publish_play", &["nginx", "ffmpeg", "rtmpdump"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new();
    let (guard, tls) = guard_for(&nginx, &cert, dir.path());
    let url = format!("rtmps://{tls}/live/secure");
    let mut publisher = ffmpeg_publish(&url, 12, &dir.path().join("publish.log"));
    assert!(
        nginx.wait_publishing("secure"),
        "nginx never saw the stream; guard log:\n{}\npublisher:\n{}",
        guard.log_text(),
        std::fs::read_to_string(dir.path().join("publish.log")).unwrap_or_default()
    );

    let flv = dir.path().join("out.flv");
    let rtmpdump = rtmpdump_background(&url, &flv);
    let (frames, out) = ffmpeg_play(&url, 7);
    let _ = rtmpdump.join();
    assert!(
        frames >= 100,
        "rtmps player decoded {frames} frames:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flv_bytes = std::fs::read(&flv).unwrap_or_default();
    assert!(
        flv_bytes.len() > 50_000 && flv_bytes.starts_with(b"FLV"),
        "rtmpdump over rtmps wrote {} bytes; guard log:\n{}",
        flv_bytes.len(),
        guard.log_text()
    );

    let status = wait_exit(&mut publisher, Duration::from_secs(20)).expect("publisher finished");
    assert!(
        status.success(),
        "publisher failed: {}",
        std::fs::read_to_string(dir.path().join("publish.log")).unwrap_or_default()
    );
    assert_eq!(nginx.naccepted(), 3, "publisher, ffmpeg player, rtmpdump");
    assert!(guard.metric("rtmp_guard_tls_handshakes_total{result=\"success\"}") >= 3.0);
    assert!(guard.metric("rtmp_guard_bytes_total{direction=\"client_to_upstream\"}") > 100_000.0);
    // Each session's closing line names its transport.
    let closed = wait_for(Duration::from_secs(5), || {
        let log = guard.log_text();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("\"event\":\"session_closed\""))
            .map(str::to_string)
            .collect();
        (lines.len() >= 3).then_some(lines)
    })
    .unwrap_or_default();
    assert!(
        closed.len() >= 3 && closed.iter().all(|l| l.contains("\"transport\":\"rtmps\"")),
        "session_closed lines: {closed:#?}"
    );
}

#[test]
fn plain_rtmp_from_ffmpeg_on_the_rtmps_port_is_refused_as_not_tls() {
    if !have_tools("rtmp_on_rtmps_port", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new();
    let (guard, tls) = guard_for(&nginx, &cert, dir.path());
    let url = format!("rtmp://{tls}/live/wrong");
    let mut publisher = ffmpeg_publish(&url, 3, &dir.path().join("publish.log"));
    let status = wait_exit(&mut publisher, Duration::from_secs(15)).expect("ffmpeg exited");
    assert!(!status.success(), "plain RTMP published on the RTMPS port");
    assert_eq!(
        guard.metric(&common::blocked_sample("handshake", "not_tls")),
        1.0
    );
    assert_eq!(nginx.naccepted(), 0);
}

#[test]
fn the_certificate_is_replaced_under_a_live_rtmps_stream() {
    if !have_tools("rtmps_certificate_reload", &["nginx", "ffmpeg"]) {
        return;
    }
    let nginx = Nginx::start("");
    let dir = tempfile::tempdir().unwrap();
    let first = TestCert::new();
    let (guard, tls) = guard_for(&nginx, &first, dir.path());
    let url = format!("rtmps://{tls}/live/renewed");
    let log = dir.path().join("publish.log");
    let mut publisher = ffmpeg_publish(&url, 12, &log);
    assert!(nginx.wait_publishing("renewed"), "{}", guard.log_text());
    assert!(connect(tls, &first).is_ok());

    // certbot renews: new files, then SIGHUP.
    let second = TestCert::new();
    second.write(dir.path());
    guard.signal("HUP");
    let reloaded = wait_for(Duration::from_secs(5), || {
        (guard.metric("rtmp_guard_config_reloads_total{result=\"success\"}") == 1.0).then_some(())
    });
    assert!(reloaded.is_some(), "{}", guard.log_text());
    assert!(
        connect(tls, &second).is_ok(),
        "new handshakes get the new one"
    );
    assert!(connect(tls, &first).is_err());

    // A broken renewal: the reload fails and the second certificate stays.
    std::fs::write(dir.path().join("cert.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    guard.signal("HUP");
    let failed = wait_for(Duration::from_secs(5), || {
        (guard.metric("rtmp_guard_config_reloads_total{result=\"failure\"}") == 1.0).then_some(())
    });
    assert!(failed.is_some(), "{}", guard.log_text());
    assert!(connect(tls, &second).is_ok());

    // The stream that began on the first certificate never stopped.
    assert!(nginx.publishing("renewed"));
    let status = wait_exit(&mut publisher, Duration::from_secs(25)).expect("publisher finished");
    assert!(
        status.success(),
        "publisher was cut by the reload: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        guard.log_text().contains("cert.pem"),
        "the bad file is named"
    );
}
