//! A real Prometheus server (Debian's package) on loopback, on the shipped
//! scrape config and alert rules, scraping a live guard binary.
//!
//! Prints SKIPPED when prometheus is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::client::{connect_bytes, Closed, RawClient};
use common::config::GuardConfig;
use common::procs::{GuardProc, Proc};
use common::{free_port, have_tools, http_get, wait_for};

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Prometheus on the shipped config, its target pointed at `metrics` and
/// its intervals shortened so the test need not wait 15 s a scrape.
fn prometheus(metrics: SocketAddr, dir: &Path) -> (Proc, SocketAddr) {
    let shipped = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    assert!(
        shipped.contains("127.0.0.1:9935"),
        "the shipped target moved"
    );
    let config = shipped
        .replace("127.0.0.1:9935", &metrics.to_string())
        .replace("15s", "1s")
        .replace(
            "rtmp-guard.rules.yml",
            &deploy("prometheus/rtmp-guard.rules.yml")
                .display()
                .to_string(),
        );
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn prometheus");
    (
        Proc {
            child,
            name: "prometheus",
        },
        web,
    )
}

/// The first value of an instant query, if any series matched.
fn query(web: SocketAddr, promql: &str) -> Option<f64> {
    let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let body = http_get(web, &format!("/api/v1/query?query={q}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_guard_and_sees_its_refusals() {
    if !have_tools("prometheus", &["prometheus"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guard = GuardProc::start(GuardConfig::new().origin("127.0.0.1:9").app("live", ""));
    let (_prom, web) = prometheus(guard.metrics, dir.path());
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    wait_for(Duration::from_secs(30), || {
        (query(web, "up{job=\"rtmp-guard\"}")? == 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("prometheus never scraped the guard:\n{}", log()));

    // Drive three refusals (unknown app; a fourth would get 127.0.0.1
    // banned), then see them in Prometheus.
    for _ in 0..3 {
        let mut c = RawClient::handshaken(guard.rtmp);
        c.send(&connect_bytes("nope"));
        assert!(matches!(
            c.wait_closed(Duration::from_secs(3)),
            Closed::Within(..)
        ));
    }
    let seen = wait_for(Duration::from_secs(20), || {
        let v = query(
            web,
            "sum(rtmp_guard_blocked_sessions_total{stage=\"connect\",reason=\"unknown_app\"})",
        )?;
        (v == 3.0).then_some(v)
    });
    assert_eq!(seen, Some(3.0), "prometheus log:\n{}", log());

    // The shipped rules loaded and evaluate without errors.
    let rules = http_get(web, "/api/v1/rules").expect("rules API");
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "rtmp-guard");
    let loaded = group["rules"].as_array().unwrap();
    assert_eq!(loaded.len(), 8);
    wait_for(Duration::from_secs(10), || {
        let rules = http_get(web, "/api/v1/rules")?;
        let rules: serde_json::Value = serde_json::from_str(&rules).ok()?;
        let all = rules["data"]["groups"][0]["rules"].as_array()?.clone();
        all.iter().all(|r| r["health"] == "ok").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a rule is unhealthy: {}",
            http_get(web, "/api/v1/rules").unwrap_or_default()
        )
    });
}
