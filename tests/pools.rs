//! Upstream pools in-process: active checks mark a silent origin down,
//! least_connections spreads sessions evenly, a pool with no server up
//! answers NetConnection.Connect.Failed without blocking the client, and
//! drained servers take no new sessions, across a restart.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::client::{commands_in, connect_bytes, status_code, Closed, RawClient};
use common::config::GuardConfig;
use common::origin::TestOrigin;
use common::{http, wait_for};
use rtmp_guard::config::Config;
use rtmp_guard::verdict::{Reason, Stage};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start(rt: &tokio::runtime::Runtime, text: &str) -> rtmp_guard::Running {
    rt.block_on(rtmp_guard::start(Config::parse(text, "t.toml").unwrap()))
        .unwrap()
}

fn gauge(guard: &rtmp_guard::Running, name: &str, server: impl std::fmt::Display) -> f64 {
    let text = guard.guard.metrics.render();
    let sample = format!("{name}{{server=\"{server}\",upstream=\"origin\"}}");
    common::metric(&text, &sample).unwrap_or(-1.0)
}

/// A TCP server that accepts and never says a word.
fn silent_origin(rt: &tokio::runtime::Runtime) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        addr
    })
}

/// `n` clients that connect to `live` and stay.
fn sessions(addr: SocketAddr, n: usize) -> Vec<RawClient> {
    (0..n)
        .map(|_| {
            let mut c = RawClient::handshaken(addr);
            c.send(&connect_bytes("live"));
            c
        })
        .collect()
}

#[test]
fn an_origin_that_accepts_and_says_nothing_is_marked_down_by_the_active_check() {
    let rt = runtime();
    let silent = silent_origin(&rt);
    let good = rt.block_on(TestOrigin::start());
    let text = GuardConfig::new()
        .origin(silent)
        .origin(good.addr)
        .origin_tls(
            "health_check_interval = \"200ms\"\nhealth_check_timeout = \"300ms\"\n\
             fail_threshold = 2\nrise_threshold = 2",
        )
        .live()
        .build();
    let guard = start(&rt, &text);
    assert_eq!(gauge(&guard, "rtmp_guard_upstream_server_up", silent), 1.0);
    // Two failed checks: about 2 × (interval + timeout).
    let down = wait_for(Duration::from_secs(3), || {
        (gauge(&guard, "rtmp_guard_upstream_server_up", silent) == 0.0).then_some(())
    });
    assert!(down.is_some(), "the silent origin was never marked down");
    assert_eq!(
        gauge(&guard, "rtmp_guard_upstream_server_up", good.addr),
        1.0
    );
    let before = good.accepted();
    let _clients = sessions(guard.rtmp_addrs[0], 6);
    let all_on_good = wait_for(Duration::from_secs(5), || {
        (gauge(&guard, "rtmp_guard_upstream_sessions", good.addr) == 6.0).then_some(())
    });
    assert!(
        all_on_good.is_some(),
        "sessions did not all land on the good origin"
    );
    // Sessions count from the moment a server is chosen; the origin's
    // accepts follow.
    let accepted = wait_for(Duration::from_secs(5), || {
        (good.accepted() >= before + 6).then_some(())
    });
    assert!(accepted.is_some());
    assert_eq!(gauge(&guard, "rtmp_guard_upstream_sessions", silent), 0.0);
    guard.stop();
}

#[test]
fn least_connections_spreads_20_sessions_10_10() {
    let rt = runtime();
    let a = rt.block_on(TestOrigin::start());
    let b = rt.block_on(TestOrigin::start());
    let text = GuardConfig::new()
        .origin(a.addr)
        .origin(b.addr)
        .origin_tls("balance = \"least_connections\"\nhealth_check_interval = \"0s\"")
        .live()
        .build();
    let guard = start(&rt, &text);
    let addr = guard.rtmp_addrs[0];
    // A long session on `a` first, then one that ends: least_connections
    // balances what is live, not what was.
    let _long = sessions(addr, 1);
    assert!(a.reaches(1, Duration::from_secs(5)) || b.reaches(1, Duration::from_secs(5)));
    let clients = sessions(addr, 19);
    let even = wait_for(Duration::from_secs(10), || {
        let (na, nb) = (
            gauge(&guard, "rtmp_guard_upstream_sessions", a.addr),
            gauge(&guard, "rtmp_guard_upstream_sessions", b.addr),
        );
        (na + nb == 20.0).then_some((na, nb))
    });
    assert_eq!(even, Some((10.0, 10.0)));
    assert_eq!((a.accepted(), b.accepted()), (10, 10));
    drop(clients);
    let gone = wait_for(Duration::from_secs(5), || {
        (gauge(&guard, "rtmp_guard_upstream_sessions", a.addr)
            + gauge(&guard, "rtmp_guard_upstream_sessions", b.addr)
            == 1.0)
            .then_some(())
    });
    assert!(gone.is_some(), "sessions were not given back");
    guard.stop();
}

#[test]
fn with_no_server_up_the_client_gets_connect_failed_and_is_not_blocked() {
    let rt = runtime();
    let dead = format!("127.0.0.1:{}", common::free_port());
    let text = GuardConfig::new()
        .origin(&dead)
        .origin_tls("health_check_interval = \"100ms\"\nhealth_check_timeout = \"200ms\"")
        .live()
        .build();
    let guard = start(&rt, &text);
    let down = wait_for(Duration::from_secs(3), || {
        (gauge(&guard, "rtmp_guard_upstream_server_up", &dead) == 0.0).then_some(())
    });
    assert!(down.is_some());
    let mut c = RawClient::handshaken(guard.rtmp_addrs[0]);
    c.send(&connect_bytes("live"));
    let Closed::Within(_, sent) = c.wait_closed(Duration::from_secs(5)) else {
        panic!("still open");
    };
    let codes: Vec<String> = commands_in(&sent).iter().filter_map(status_code).collect();
    assert_eq!(codes, ["NetConnection.Connect.Failed"]);
    let m = &guard.guard.metrics;
    assert_eq!(m.upstream_error_count("origin", "unavailable"), 1);
    // Not tried: the server was known down.
    assert_eq!(m.upstream_error_count("origin", "connect_refused"), 0);
    for stage in Stage::ALL {
        for reason in Reason::ALL {
            assert_eq!(m.blocked_count(stage, reason), 0, "{stage:?} {reason}");
        }
    }
    guard.stop();
}

#[test]
fn a_drained_server_takes_no_new_sessions_and_stays_drained_across_a_restart() {
    let rt = runtime();
    let a = rt.block_on(TestOrigin::start());
    let b = rt.block_on(TestOrigin::start());
    let dir = tempfile::tempdir().unwrap();
    let text = GuardConfig::new()
        .origin(a.addr)
        .origin(b.addr)
        .origin_tls("health_check_interval = \"0s\"")
        .tables("[admin]\nlisten = \"127.0.0.1:0\"\n")
        .state(&dir.path().join("state.json"))
        .live()
        .build();
    let guard = start(&rt, &text);
    let api = guard.admin_addr.unwrap();
    let path = format!("/api/v1/upstreams/origin/servers/{}/drain", a.addr);
    assert_eq!(http(api, "POST", &path, None, "").0, 200);
    let unknown = "/api/v1/upstreams/origin/servers/127.0.0.1:1/drain";
    assert_eq!(http(api, "POST", unknown, None, "").0, 404);
    let (status, body) = http(api, "GET", "/api/v1/upstreams", None, "");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["upstreams"][0]["servers"][0]["state"], "drained", "{v}");
    assert_eq!(v["upstreams"][0]["servers"][1]["state"], "up", "{v}");

    let _clients = sessions(guard.rtmp_addrs[0], 4);
    assert!(b.reaches(4, Duration::from_secs(5)));
    assert_eq!(a.accepted(), 0);
    guard.stop();
    drop(guard);

    // A restart on the same state file: still drained.
    let guard = start(&rt, &text);
    let api = guard.admin_addr.unwrap();
    let _more = sessions(guard.rtmp_addrs[0], 2);
    assert!(b.reaches(6, Duration::from_secs(5)));
    assert_eq!(a.accepted(), 0);
    let path = format!("/api/v1/upstreams/origin/servers/{}/undrain", a.addr);
    assert_eq!(http(api, "POST", &path, None, "").0, 200);
    let _after = sessions(guard.rtmp_addrs[0], 2);
    assert!(
        a.reaches(1, Duration::from_secs(5)),
        "undrained server unused"
    );
    guard.stop();
}
