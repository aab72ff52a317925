//! Time to first frame for a player through the guard, with `play = "none"`
//! against `play = "token"`, alternated on the same publisher.
//!
//! ffmpeg publishes an all-intra stream (every frame a keyframe, so the
//! player never waits for a GOP) through the guard to nginx-rtmp; each
//! sample is the wall time of `ffmpeg -i URL -frames:v 1 -f null -`.
//!
//! ```text
//! cargo bench --bench ttff
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::procs::{GuardProc, Nginx, Proc};

const SAMPLES: usize = 15;
const SECRET: &str = "a-secret-for-the-ttff-benchmark";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let nginx = Nginx::start("application tok { live on; }");
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let origin = nginx.rtmp;
    let secret = secret.display().to_string();
    let guard = GuardProc::start(move |listen| {
        format!(
            "[server]\nlisten = [\"{listen}\"]\n[limits.per_ip]\nconnections_per_second = 1000\nburst = 1000\n\
             [[upstream]]\nname = \"origin\"\nservers = [\"{origin}\"]\n\
             [[app]]\nname = \"live\"\nupstream = \"origin\"\npublish = \"none\"\nplay = \"none\"\n\
             [[app]]\nname = \"tok\"\nupstream = \"origin\"\npublish = \"none\"\nplay = \"token\"\n\
             token_secret_file = \"{secret}\"\n"
        )
    });
    let _live = publisher(&format!("rtmp://{}/live/s", guard.rtmp));
    let _tok = publisher(&format!("rtmp://{}/tok/s", guard.rtmp));
    std::thread::sleep(Duration::from_secs(3));

    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let query = rtmp_guard::policy::token::sign(SECRET.as_bytes(), "tok", "s", expires, None);
    let none_url = format!("rtmp://{}/live/s", guard.rtmp);
    let token_url = format!("rtmp://{}/tok/s?{query}", guard.rtmp);
    let (mut none, mut token) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        let (a, b) = if i % 2 == 0 {
            (first_frame(&none_url), first_frame(&token_url))
        } else {
            let b = first_frame(&token_url);
            (first_frame(&none_url), b)
        };
        none.push(a);
        token.push(b);
    }
    let (n, t) = (median(none), median(token));
    println!("time to first frame, {SAMPLES} samples each, medians:");
    println!("| play mode | ms |\n|---|---|");
    println!("| none | {n:.1} |\n| token | {t:.1} |");
    println!("token adds {:.1} ms", t - n);
}

fn publisher(url: &str) -> Proc {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-t",
            "120",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "1",
            "-f",
            "flv",
            url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg");
    Proc {
        child,
        name: "ffmpeg-publish",
    }
}

/// Milliseconds for a player to connect and decode one frame.
fn first_frame(url: &str) -> f64 {
    let start = Instant::now();
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i", url])
        .args(["-frames:v", "1", "-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "player failed on {url}");
    start.elapsed().as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
