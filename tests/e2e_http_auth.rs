//! The HTTP auth callback against a real HTTP auth service implementing
//! nginx-rtmp's `on_publish` contract (form POST; 2xx allows), run by the
//! test. The same service is then given to nginx-rtmp's own `on_publish`,
//! and both must accept and refuse the same streams.
//!
//! Each test prints SKIPPED when a tool is missing, and fails instead under
//! RTMP_GUARD_E2E=require (scripts/test.sh sets it).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::config::GuardConfig;
use common::procs::{ffmpeg_play, ffmpeg_publish, wait_exit, GuardProc, Nginx};
use common::{blocked_sample, form_service, have_tools, wait_for};

/// An auth service: allows a form whose `name` is `good`, refuses any
/// other; records every form it was sent.
struct AuthService {
    addr: SocketAddr,
    forms: Arc<Mutex<Vec<String>>>,
}

impl AuthService {
    fn start() -> AuthService {
        let forms = Arc::new(Mutex::new(Vec::new()));
        let seen = forms.clone();
        let addr = form_service(move |form| {
            let allow = rtmp_guard::policy::parse_query(form)
                .iter()
                .any(|(k, v)| k == "name" && v == "good");
            seen.lock().unwrap().push(form.to_string());
            let status = if allow { "200 OK" } else { "403 Forbidden" };
            status.to_string()
        });
        AuthService { addr, forms }
    }

    fn count(&self, field: &str) -> usize {
        self.forms
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.contains(field))
            .count()
    }
}

fn guard(nginx: &Nginx, url: String, on_error: &'static str) -> GuardProc {
    GuardProc::start(GuardConfig::new().origin(nginx.rtmp).app(
        "live",
        &format!(
            "publish = \"http\"\nplay = \"http\"\n\
             http_auth = {{ url = \"{url}\", timeout = \"1s\", cache = \"30s\", on_error = \"{on_error}\" }}"
        ),
    ))
}

/// Publishes `name` for 2 s; returns whether nginx showed it live.
fn publish(nginx: &Nginx, url: &str, name: &str, dir: &std::path::Path) -> bool {
    let mut p = ffmpeg_publish(url, 4, &dir.join(format!("{name}.log")));
    let live = wait_for(Duration::from_secs(5), || {
        nginx.publishing(name).then_some(())
    })
    .is_some();
    let _ = wait_exit(&mut p, Duration::from_secs(20));
    live
}

#[test]
fn guard_and_nginx_on_publish_agree_on_the_same_service() {
    if !have_tools("http_auth_matches_nginx", &["nginx", "ffmpeg"]) {
        return;
    }
    let service = AuthService::start();
    let url = format!("http://{}/auth", service.addr);
    let nginx = Nginx::start(&format!(
        "application direct {{ live on; on_publish {url}; }}"
    ));
    let guard = guard(&nginx, url, "deny");
    let dir = tempfile::tempdir().unwrap();

    let through_guard = |name: &str| {
        publish(
            &nginx,
            &format!("rtmp://{}/live/{name}?k=v", guard.rtmp),
            name,
            dir.path(),
        )
    };
    let direct = |name: &str| {
        publish(
            &nginx,
            &format!("rtmp://{}/direct/{name}?k=v", nginx.rtmp),
            name,
            dir.path(),
        )
    };
    assert!(
        through_guard("good"),
        "the guard refused what the service allows"
    );
    assert!(
        !through_guard("bad"),
        "the guard allowed what the service refuses"
    );
    assert!(
        direct("good"),
        "nginx's on_publish refused what the service allows"
    );
    assert!(
        !direct("bad"),
        "nginx's on_publish allowed what the service refuses"
    );
    assert_eq!(
        guard.metric(&blocked_sample("session", "unauthorized")),
        1.0
    );

    // The guard sent nginx-rtmp's fields, and the stream's arguments.
    let forms = service.forms.lock().unwrap().clone();
    let ours = forms
        .iter()
        .find(|f| f.contains("app=live"))
        .expect("a form from the guard");
    for field in [
        "call=publish",
        "addr=127.0.0.1",
        "name=",
        "tcurl=",
        "pageurl=",
        "swfurl=",
        "flashver=",
        "k=v",
    ] {
        assert!(ours.contains(field), "{field} missing from {ours}");
    }
}

/// The service allows any form with a `name` of `good`, as a service that
/// takes the first or last of repeated fields would be fooled into doing.
/// A client's own `name=good` (in any spelling) must never reach it.
#[test]
fn client_parameters_cannot_pass_for_the_guards_fields() {
    if !have_tools("http_auth_overrides", &["nginx", "ffmpeg"]) {
        return;
    }
    let service = AuthService::start();
    let nginx = Nginx::start("application other { live on; }");
    let guard = guard(&nginx, format!("http://{}/auth", service.addr), "deny");
    let dir = tempfile::tempdir().unwrap();
    let query = "name=good&Name=good&name%5B%5D=good&call=play&app=other&addr=10.0.0.1\
                 &clientid=1&tcurl=rtmp%3A%2F%2Fx%2Fother&k=v";
    let live = publish(
        &nginx,
        &format!("rtmp://{}/live/bad?{query}", guard.rtmp),
        "bad",
        dir.path(),
    );
    assert!(!live, "a client's name=good got a refused stream published");
    assert_eq!(
        guard.metric(&blocked_sample("session", "unauthorized")),
        1.0
    );
    let forms = service.forms.lock().unwrap().clone();
    assert!(!forms.is_empty(), "the service was never asked");
    for form in &forms {
        let fields = rtmp_guard::policy::parse_query(form);
        let values = |k: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(values("name"), ["bad"], "{form}");
        assert_eq!(values("call"), ["publish"], "{form}");
        assert_eq!(values("app"), ["live"], "{form}");
        assert_eq!(values("addr"), ["127.0.0.1"], "{form}");
        assert!(values("clientid").is_empty(), "{form}");
        assert!(!form.contains("name%5B%5D"), "{form}");
        assert_eq!(values("tcurl").len(), 1, "{form}");
        assert!(!values("tcurl")[0].contains("other"), "{form}");
        assert_eq!(values("k"), ["v"], "{form}");
    }
}

#[test]
fn answers_are_cached() {
    if !have_tools("http_auth_cache", &["nginx", "ffmpeg"]) {
        return;
    }
    let service = AuthService::start();
    let nginx = Nginx::start("");
    let guard = guard(&nginx, format!("http://{}/auth", service.addr), "deny");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rtmp://{}/live/good", guard.rtmp);
    let mut p = ffmpeg_publish(&url, 10, &dir.path().join("p.log"));
    assert!(nginx.wait_publishing("good"));
    for _ in 0..2 {
        assert!(
            ffmpeg_play(&url, 2).0 > 0,
            "a player the service allows got nothing"
        );
    }
    // Two identical plays: one question.
    assert_eq!(service.count("call=play"), 1);
    let _ = wait_exit(&mut p, Duration::from_secs(20));
}

#[test]
fn an_unreachable_service_follows_on_error() {
    if !have_tools("http_auth_on_error", &["nginx", "ffmpeg"]) {
        return;
    }
    let dead = format!("http://127.0.0.1:{}/auth", common::free_port());
    let dir = tempfile::tempdir().unwrap();

    let nginx = Nginx::start("");
    let strict = guard(&nginx, dead.clone(), "deny");
    let live = publish(
        &nginx,
        &format!("rtmp://{}/live/s1", strict.rtmp),
        "s1",
        dir.path(),
    );
    assert!(!live, "on_error = deny let a publisher in");
    assert_eq!(
        strict.metric(&blocked_sample("session", "auth_unavailable")),
        1.0
    );
    let log = std::fs::read_to_string(dir.path().join("s1.log")).unwrap_or_default();
    assert!(log.contains("authorization unavailable"), "{log}");

    let lenient = guard(&nginx, dead, "allow");
    let live = publish(
        &nginx,
        &format!("rtmp://{}/live/s2", lenient.rtmp),
        "s2",
        dir.path(),
    );
    assert!(live, "on_error = allow refused a publisher");
    assert_eq!(
        lenient.metric(&blocked_sample("session", "auth_unavailable")),
        0.0
    );
}
