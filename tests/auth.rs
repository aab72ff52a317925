//! Stream authorisation by client address, in-process: clients bind their
//! own loopback addresses (127.0.0.x) to show `publish_allow`, `play_deny`
//! and address-bound tokens deciding by address; and signed URLs opening
//! only the role they were issued for.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::client::{commands_in, status_code, Closed, RawClient};
use common::config::GuardConfig;
use common::origin::Harness;
use rtmp_guard::verdict::{Kind, Reason, Stage};

const SECRET: &str = "a-secret-of-sufficient-length";

fn harness() -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s");
    std::fs::write(&secret, SECRET).unwrap();
    let h = Harness::with_config(|origin| {
        GuardConfig::new()
            .origin(origin)
            .app(
                "live",
                "publish = \"none\"\npublish_allow = [\"127.0.0.31/32\"]\nplay_deny = [\"127.0.0.32/32\"]",
            )
            .app(
                "tok",
                &format!(
                    "publish = \"token\"\nplay = \"token\"\ntoken_secret_file = \"{}\"",
                    secret.display()
                ),
            )
    });
    (h, dir)
}

/// Opens a stream from `source`; returns the status code the guard sent
/// back (None if the session stayed up).
fn attempt(h: &Harness, source: &str, app: &str, command: &str, name: &str) -> Option<String> {
    let mut c = RawClient::handshaken_from(h.addr(), source);
    c.open_stream(app, command, name);
    match c.wait_closed(Duration::from_secs(3)) {
        Closed::Within(_, got) => commands_in(&got)
            .iter()
            .filter(|c| c.name == "onStatus")
            .find_map(status_code),
        Closed::StillOpen => None,
    }
}

#[test]
fn publish_allow_and_play_deny_decide_by_address() {
    let (h, _dir) = harness();
    assert_eq!(
        attempt(&h, "127.0.0.30", "live", "publish", "cam").as_deref(),
        Some("NetStream.Publish.BadName")
    );
    assert_eq!(attempt(&h, "127.0.0.31", "live", "publish", "cam"), None);
    assert_eq!(
        attempt(&h, "127.0.0.32", "live", "play", "cam").as_deref(),
        Some("NetStream.Play.Failed")
    );
    assert_eq!(attempt(&h, "127.0.0.33", "live", "play", "cam"), None);
    assert_eq!(h.blocked(Stage::Session, Reason::ForbiddenIp), 2);
}

#[test]
fn address_bound_tokens_play_only_from_their_address() {
    let (h, _dir) = harness();
    let bound = "127.0.0.34".parse().ok();
    let query = signed("show", bound, Kind::Play);
    let name = format!("show?{query}");
    assert_eq!(attempt(&h, "127.0.0.34", "tok", "play", &name), None);
    assert_eq!(
        attempt(&h, "127.0.0.35", "tok", "play", &name).as_deref(),
        Some("NetStream.Play.Failed")
    );
    assert_eq!(h.blocked(Stage::Session, Reason::Unauthorized), 1);
    // The origin received the allowed play and never the refused one.
    let plays: Vec<usize> = h
        .origin
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|bytes| {
            commands_in(bytes)
                .iter()
                .filter(|c| c.name == "play")
                .count()
        })
        .collect();
    assert_eq!(plays.iter().sum::<usize>(), 1, "{plays:?}");
}

/// The query of a URL for `tok/STREAM`, valid for ten minutes.
fn signed(stream: &str, ip: Option<std::net::IpAddr>, role: Kind) -> String {
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    rtmp_guard::policy::token::sign(SECRET.as_bytes(), "tok", stream, expires, ip, role)
}

/// Every command name the origin received, over all its connections.
fn origin_commands(h: &Harness) -> Vec<String> {
    h.origin
        .received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|bytes| commands_in(bytes).into_iter().map(|c| c.name))
        .collect()
}

#[test]
fn a_viewers_url_cannot_publish_nor_a_publishers_url_play() {
    let (h, _dir) = harness();
    let play = format!("show?{}", signed("show", None, Kind::Play));
    let publish = format!("show?{}", signed("show", None, Kind::Publish));
    // Crossed roles are refused like a bad token, from fresh addresses so
    // the scores never add up to a ban.
    assert_eq!(
        attempt(&h, "127.0.0.40", "tok", "publish", &play).as_deref(),
        Some("NetStream.Publish.BadName")
    );
    assert_eq!(
        attempt(&h, "127.0.0.41", "tok", "play", &publish).as_deref(),
        Some("NetStream.Play.Failed")
    );
    // A role rewritten in the URL breaks the signature.
    let forged = play.replace("role=play", "role=publish");
    assert_eq!(
        attempt(&h, "127.0.0.42", "tok", "publish", &forged).as_deref(),
        Some("NetStream.Publish.BadName")
    );
    assert_eq!(h.blocked(Stage::Session, Reason::Unauthorized), 3);
    let sent = origin_commands(&h);
    assert!(
        !sent.iter().any(|c| c == "publish" || c == "play"),
        "the origin was asked {sent:?}"
    );

    // Each URL opens its own role.
    assert_eq!(attempt(&h, "127.0.0.43", "tok", "publish", &publish), None);
    assert_eq!(attempt(&h, "127.0.0.44", "tok", "play", &play), None);
    let sent = origin_commands(&h);
    assert_eq!(
        sent.iter().filter(|c| *c == "publish").count(),
        1,
        "{sent:?}"
    );
    assert_eq!(sent.iter().filter(|c| *c == "play").count(), 1, "{sent:?}");
    assert_eq!(h.blocked(Stage::Session, Reason::Unauthorized), 3);
}

/// Scores at their defaults, with `[bans] threshold = 3` so that a few
/// refusals show whether they score: app `live` takes publishers only from
/// 127.0.0.31 and blocks `pirated-*` and `film-*`; app `cap` lets anyone
/// publish and one viewer play.
fn scoring_harness() -> Harness {
    Harness::with_config(|origin| {
        GuardConfig::new()
            .tables("[bans]\nthreshold = 3\nwindow = \"60s\"\nduration = \"10m\"")
            .origin(origin)
            .app(
                "live",
                "publish = \"none\"\npublish_allow = [\"127.0.0.31/32\"]\n\
                 blocked_streams = [\"pirated-*\"]",
            )
            .app("cap", "publish = \"none\"\nmax_viewers = 1")
    })
}

fn banned(h: &Harness, source: &str) -> bool {
    let prefix = format!("{source}/32");
    h.guard
        .guard
        .admission
        .bans()
        .list()
        .iter()
        .any(|(p, _)| p.to_string() == prefix)
}

/// A client from `source` relaying `command` `name` on `app`.
fn live(h: &Harness, source: &str, app: &str, command: &str, name: &str) -> RawClient {
    let sessions = &h.guard.guard.sessions;
    let newest = || sessions.list().last().map_or(0, |s| s.id);
    let before = newest();
    let mut c = RawClient::handshaken_from(h.addr(), source);
    c.open_stream(app, command, name);
    common::wait_for(Duration::from_secs(5), || {
        let s = sessions.list().into_iter().find(|s| s.id > before)?;
        (!s.streams().is_empty()).then_some(())
    })
    .expect("session relaying its stream");
    c
}

#[test]
fn hammering_a_forbidden_address_or_a_blocked_name_bans() {
    let h = scoring_harness();
    // forbidden_ip scores 2: the second refusal reaches 3.
    for n in 0..2 {
        assert!(!banned(&h, "127.0.0.50"), "banned after {n}");
        assert_eq!(
            attempt(&h, "127.0.0.50", "live", "publish", "cam").as_deref(),
            Some("NetStream.Publish.BadName")
        );
    }
    assert!(banned(&h, "127.0.0.50"), "forbidden_ip never banned");
    // content_blocked scores 1: the third.
    for n in 0..3 {
        assert!(!banned(&h, "127.0.0.51"), "banned after {n}");
        assert_eq!(
            attempt(&h, "127.0.0.51", "live", "play", "pirated-film").as_deref(),
            Some("NetStream.Play.Failed")
        );
    }
    assert!(banned(&h, "127.0.0.51"), "content_blocked never banned");
    assert_eq!(h.blocked(Stage::Session, Reason::ForbiddenIp), 2);
    assert_eq!(h.blocked(Stage::Session, Reason::ContentBlocked), 3);
    // A banned address is refused at accept.
    let mut c = RawClient::tcp_from(h.addr(), "127.0.0.50");
    assert!(matches!(
        c.wait_closed(Duration::from_secs(2)),
        Closed::Within(..)
    ));
    assert_eq!(h.blocked(Stage::Accept, Reason::Banned), 1);
}

#[test]
fn a_busy_name_or_a_full_app_never_bans() {
    let h = scoring_harness();
    let _publisher = live(&h, "127.0.0.52", "cap", "publish", "cam");
    let _viewer = live(&h, "127.0.0.52", "cap", "play", "cam");
    // An encoder reconnecting, and viewers behind one NAT, again and again.
    for _ in 0..4 {
        assert_eq!(
            attempt(&h, "127.0.0.53", "cap", "publish", "cam").as_deref(),
            Some("NetStream.Publish.BadName")
        );
        assert_eq!(
            attempt(&h, "127.0.0.53", "cap", "play", "cam").as_deref(),
            Some("NetStream.Play.Failed")
        );
    }
    assert_eq!(h.blocked(Stage::Session, Reason::StreamBusy), 4);
    assert_eq!(h.blocked(Stage::Session, Reason::QuotaExceeded), 4);
    assert!(!banned(&h, "127.0.0.53"));
    assert_eq!(h.blocked(Stage::Accept, Reason::Banned), 0);
    // Once there is room, the same address plays.
    drop(_viewer);
    let _next = live(&h, "127.0.0.53", "cap", "play", "cam");
}

#[test]
fn sessions_ended_by_an_operators_block_score_nothing() {
    let h = scoring_harness();
    // Four viewers behind one address; scored, their ends would ban it.
    let viewers: Vec<RawClient> = (0..4)
        .map(|_| live(&h, "127.0.0.54", "live", "play", "film-1"))
        .collect();
    let ended = h
        ._rt
        .block_on(rtmp_guard::control::remedies::block(
            &h.guard.guard,
            "live",
            "film-*",
            "dmca",
        ))
        .unwrap();
    assert_eq!(ended, 4);
    common::wait_for(Duration::from_secs(5), || {
        (h.blocked(Stage::Session, Reason::ContentBlocked) == 4).then_some(())
    })
    .expect("the four sessions were ended and counted");
    drop(viewers);
    assert!(!banned(&h, "127.0.0.54"));
    let _still_welcome = live(&h, "127.0.0.54", "live", "play", "news");
}
