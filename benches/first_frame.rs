//! Time to first frame for a player, through the guard with `play = "none"`
//! and with `play = "token"`, against nginx-rtmp played directly.
//!
//! One nginx-rtmp origin gets a video-only, all-intra ffmpeg stream (every
//! frame a key frame, 25 fps). Two guard binaries front it, one per play
//! mode. A raw player (handshake, then `connect`, `createStream` and `play`
//! sent at once, as players pipeline them) times, from before its TCP
//! connect:
//!
//! - `NetStream.Play.Start`, which follows the guard's decision;
//! - the first video message (nginx sends the sequence header together
//!   with the next picture, and every picture is a key frame).
//!
//! The three paths are alternated trial by trial and medians are printed.
//!
//! ```text
//! cargo bench --bench first_frame            # 150 trials per path
//! cargo bench --bench first_frame -- 400     # trials per path
//! ```
//!
//! Under `cargo test` (no `--bench` argument) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::client::{command_bytes, command_on, connect_values, status_code};
use common::config::GuardConfig;
use common::procs::{GuardProc, Nginx, Proc};
use rtmp_guard::policy::token;
use rtmp_guard::rtmp::amf0::Amf0Value;
use rtmp_guard::rtmp::chunk::ChunkParser;
use rtmp_guard::rtmp::command;
use rtmp_guard::rtmp::handshake::ClientHandshake;
use rtmp_guard::verdict::Kind;

const SECRET: &str = "first-frame-bench-secret";
const STREAM: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let trials: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(150);
    if !common::have_tools("first_frame bench", &["ffmpeg", "nginx"]) {
        return;
    }
    println!(
        "machine: {} cpus",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let nginx = Nginx::start("");
    let _publisher = publish_all_intra(nginx.rtmp);
    common::wait_for(Duration::from_secs(15), || {
        nginx.publishing(STREAM).then_some(())
    })
    .expect("publisher reached nginx");
    std::thread::sleep(Duration::from_secs(1));

    let dir = tempfile::tempdir().expect("temp dir");
    let secret_path = dir.path().join("live.secret");
    std::fs::write(&secret_path, SECRET).expect("write secret");
    let open = guard(nginx.rtmp, "play = \"none\"\n");
    let signed = guard(
        nginx.rtmp,
        &format!(
            "play = \"token\"\ntoken_secret_file = \"{}\"\n",
            secret_path.display()
        ),
    );
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let query = token::sign(SECRET.as_bytes(), "live", STREAM, expires, None, Kind::Play);
    let signed_name = format!("{STREAM}?{query}");

    let paths: [(&str, SocketAddr, &str); 3] = [
        ("nginx direct", nginx.rtmp, STREAM),
        ("guard, play = none", open.rtmp, STREAM),
        ("guard, play = token", signed.rtmp, &signed_name),
    ];
    let mut started = vec![Vec::new(); paths.len()];
    let mut video = vec![Vec::new(); paths.len()];
    for trial in 0..trials {
        for (i, (label, addr, name)) in paths.iter().enumerate() {
            // Start at a different point of the 40 ms frame interval each
            // time, or trials lock to the publisher's frame clock.
            std::thread::sleep(Duration::from_micros(
                ((trial * 7 + i * 13) % 40) as u64 * 1000,
            ));
            match first_frames(*addr, name) {
                Some((h, p)) => {
                    started[i].push(h);
                    video[i].push(p);
                }
                None => eprintln!("{label}: a trial got no video within 5 s"),
            }
        }
    }
    println!("trials per path: {trials}; times from TCP connect, medians (p10–p90)");
    for (i, (label, ..)) in paths.iter().enumerate() {
        println!(
            "{label:>22}: Play.Start {}  first video {}",
            summary(&mut started[i]),
            summary(&mut video[i])
        );
    }
    let added = median(&mut started[2]) - median(&mut started[1]);
    println!("token minus none, Play.Start:  {:+.3} ms", added * 1e3);
    let added = median(&mut video[2]) - median(&mut video[1]);
    println!("token minus none, first video: {:+.3} ms", added * 1e3);
}

/// A guard binary in front of `origin` whose app `live` has `play_lines`.
fn guard(origin: SocketAddr, play_lines: &str) -> GuardProc {
    GuardProc::start(
        GuardConfig::new()
            .tables("[limits.per_ip]\nconnections_per_second = 100000\nburst = 100000")
            .origin(origin)
            .app("live", &format!("publish = \"deny\"\n{play_lines}")),
    )
}

/// ffmpeg publishing video only, every frame a key frame, straight to nginx.
fn publish_all_intra(origin: SocketAddr) -> Proc {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-t", "3600", "-c:v", "libx264", "-preset", "ultrafast"])
        .args(["-tune", "zerolatency", "-g", "1", "-an", "-f", "flv"])
        .arg(format!("rtmp://{origin}/live/{STREAM}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg");
    Proc {
        child,
        name: "ffmpeg-publish",
    }
}

/// Seconds from TCP connect to `NetStream.Play.Start` and to the first
/// video message.
fn first_frames(addr: SocketAddr, name: &str) -> Option<(f64, f64)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let (mut hs, c0c1) = ClientHandshake::start().ok()?;
    s.write_all(&c0c1).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut rest = loop {
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        let step = hs.feed(&buf[..n]).ok()?;
        if step.done {
            let mut out = step.response;
            out.extend(command_bytes(&connect_values("live")));
            out.extend(command_bytes(&[
                Amf0Value::String("createStream".into()),
                Amf0Value::Number(2.0),
                Amf0Value::Null,
            ]));
            out.extend(command_on(
                1,
                &[
                    Amf0Value::String("play".into()),
                    Amf0Value::Number(3.0),
                    Amf0Value::Null,
                    Amf0Value::String(name.into()),
                ],
            ));
            s.write_all(&out).ok()?;
            break buf[step.consumed..n].to_vec();
        }
    };
    let mut parser = ChunkParser::new(common::config::chunk_limits());
    let mut play_start = None;
    loop {
        let mut pos = 0;
        while pos < rest.len() {
            let before = parser.media_started();
            let progress = parser.advance(&rest[pos..]).ok()?;
            pos += progress.consumed;
            let now = start.elapsed().as_secs_f64();
            if let Some(m) = progress.message {
                let started = command::decode(m.header.type_id, m.payload, 64)
                    .ok()
                    .and_then(|c| status_code(&c))
                    .is_some_and(|code| code == "NetStream.Play.Start");
                if started {
                    play_start = Some(now);
                }
            }
            if parser.media_started() > before {
                return Some((play_start?, now));
            }
        }
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        rest = buf[..n].to_vec();
    }
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50)
}

fn percentile(v: &mut [f64], p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) * p / 100]
}

fn summary(v: &mut [f64]) -> String {
    format!(
        "{:.2} ms ({:.2}–{:.2})",
        median(v) * 1e3,
        percentile(v, 10) * 1e3,
        percentile(v, 90) * 1e3
    )
}
