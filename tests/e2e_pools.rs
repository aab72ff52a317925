//! Upstream pools end to end: two nginx-rtmp origins behind the guard,
//! ffmpeg publishers through it. Stopping one origin sends every new
//! publisher to the other within fail_threshold × health_check_interval,
//! and the metric shows it down; started again, it comes back.
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::time::Duration;

use common::procs::{ffmpeg_publish, GuardProc, Nginx, Proc};
use common::{have_tools, hostile, wait_for};

fn up_sample(nginx_rtmp: std::net::SocketAddr) -> String {
    format!("rtmp_guard_upstream_server_up{{server=\"{nginx_rtmp}\",upstream=\"origin\"}}")
}

/// Publishes `name` through the guard for a few seconds.
fn publish(guard: &GuardProc, name: &str, dir: &std::path::Path) -> Proc {
    let url = format!("rtmp://{}/live/{name}", guard.rtmp);
    ffmpeg_publish(&url, 8, &dir.join(format!("{name}.log")))
}

#[test]
fn a_stopped_origin_is_marked_down_and_new_publishers_land_on_the_other_until_it_returns() {
    if !have_tools("pool_failover", &["nginx", "ffmpeg"]) {
        return;
    }
    let a = Nginx::start("");
    let b = Nginx::start("");
    let guard = GuardProc::start(
        hostile::guard_config()
            .origin(a.rtmp)
            .origin(b.rtmp)
            .origin_connect_timeout("2s")
            .origin_tls(
                "health_check_interval = \"500ms\"\nhealth_check_timeout = \"500ms\"\n\
                 fail_threshold = 2\nrise_threshold = 2",
            )
            .live(),
    );
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(guard.metric(&up_sample(a.rtmp)), 1.0);

    // Stop `a`: within fail_threshold × interval (plus a check's timeout
    // and the scrape), the metric shows it down.
    let a_port = a.rtmp.port();
    drop(a);
    let down = wait_for(Duration::from_secs(3), || {
        (guard.metric(&up_sample(common::loopback(a_port))) == 0.0).then_some(())
    });
    assert!(down.is_some(), "{}", guard.log_text());

    // Every new publisher lands on `b`, and none is refused.
    let names = ["p1", "p2", "p3"];
    let _publishers: Vec<Proc> = names
        .iter()
        .map(|n| publish(&guard, n, dir.path()))
        .collect();
    for name in names {
        assert!(
            b.wait_publishing(name),
            "{name} not on b: {}",
            guard.log_text()
        );
    }
    assert_eq!(
        guard.metric(
            "rtmp_guard_upstream_errors_total{kind=\"connect_refused\",upstream=\"origin\"}"
        ),
        0.0,
        "a publisher was sent to the stopped origin"
    );

    // Start `a` again where it was: it comes back, and takes new sessions.
    let a = Nginx::start_on(a_port, "", "");
    let up = wait_for(Duration::from_secs(5), || {
        (guard.metric(&up_sample(a.rtmp)) == 1.0).then_some(())
    });
    assert!(up.is_some(), "{}", guard.log_text());
    let more = ["q1", "q2", "q3", "q4"];
    let _more: Vec<Proc> = more
        .iter()
        .map(|n| publish(&guard, n, dir.path()))
        .collect();
    let on_a = wait_for(Duration::from_secs(10), || {
        more.iter().any(|n| a.publishing(n)).then_some(())
    });
    assert!(
        on_a.is_some(),
        "no publisher returned to a: {}",
        guard.log_text()
    );
}
