//! Publish/play decisions per second under `key` and `token` (no HTTP),
//! and refusals (a wrong key, a token for the other role): a decision must
//! cost microseconds.
//!
//! ```text
//! cargo bench --bench decisions
//! ```

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rtmp_guard::config::Config;
use rtmp_guard::policy::{token, Registry, StreamPolicy};
use rtmp_guard::rtmp::amf0::Amf0Value;
use rtmp_guard::rtmp::command::{Command, ConnectRequest};
use rtmp_guard::verdict::Kind;

const SECRET: &str = "a-secret-for-the-benchmark";

fn policy(mode: &str) -> StreamPolicy {
    let dir = std::env::temp_dir().join(format!("rtmp-guard-bench-secret-{}", std::process::id()));
    std::fs::write(&dir, SECRET).expect("secret file");
    let text = format!(
        "[[upstream]]\nname = \"o\"\nservers = [\"h:1\"]\n[[app]]\nname = \"live\"\nupstream = \"o\"\n\
         publish = \"{mode}\"\nplay = \"{mode}\"\nkeys = {{ cam1 = \"s3cret\" }}\ntoken_secret_file = \"{}\"\n\
         blocked_streams = [\"pirated-*\", \"dmca-*\"]\n",
        dir.display()
    );
    let config = Config::parse(&text, "bench.toml").expect("config");
    let connect =
        ConnectRequest::with(&[("app", "live"), ("tcUrl", "rtmp://h/live")]).expect("connect");
    StreamPolicy::new(
        &config.apps[0],
        Arc::new(Registry::default()),
        "192.0.2.7".parse().expect("ip"),
        &connect,
    )
}

/// `releaseStream` runs every check a publish does (content blocks,
/// address rules, the key or token) without claiming the name, so each
/// iteration is the same decision.
fn prelude(stream: &str) -> Command {
    Command {
        name: "releaseStream".into(),
        transaction_id: 4.0,
        object: Amf0Value::Null,
        arguments: vec![Amf0Value::String(stream.into())],
    }
}

fn bench(c: &mut Criterion) {
    let mut key = policy("key");
    let keyed = prelude("cam1?key=s3cret");
    c.bench_function("decision/key", |b| {
        b.iter(|| {
            black_box(key.on_command(black_box(&keyed), 1, rtmp_guard::control::unix_now())).is_ok()
        })
    });
    let mut tok = policy("token");
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let signed = prelude(&format!(
        "cam1?{}",
        token::sign(
            SECRET.as_bytes(),
            "live",
            "cam1",
            expires,
            None,
            Kind::Publish
        )
    ));
    c.bench_function("decision/token", |b| {
        b.iter(|| {
            black_box(tok.on_command(black_box(&signed), 1, rtmp_guard::control::unix_now()))
                .is_ok()
        })
    });
    // A viewer's play URL offered to publish: verified, then refused.
    let mut viewer = policy("token");
    let play_url = prelude(&format!(
        "cam1?{}",
        token::sign(SECRET.as_bytes(), "live", "cam1", expires, None, Kind::Play)
    ));
    c.bench_function("decision/token_wrong_role", |b| {
        b.iter(|| {
            black_box(viewer.on_command(black_box(&play_url), 1, rtmp_guard::control::unix_now()))
                .is_err()
        })
    });
    let mut bad = policy("key");
    let wrong = prelude("cam1?key=nope");
    c.bench_function("decision/key_refused", |b| {
        b.iter(|| {
            black_box(bad.on_command(black_box(&wrong), 1, rtmp_guard::control::unix_now()))
                .is_err()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
