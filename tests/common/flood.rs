//! A bounded connection flood from one loopback source address, in the
//! modes an attacker uses against RTMP servers. Count and time are both
//! capped; every connection is dropped within `hold`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmp_guard::rtmp::handshake::ClientHandshake;

use super::client::connect_from;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Connect and send nothing.
    Idle,
    /// Connect and send random bytes.
    Junk,
    /// A valid C0+C1, then nothing.
    C0C1Stall,
    /// A full handshake, then no `connect`.
    HandshakeNoConnect,
}

#[derive(Debug, Default)]
pub struct FloodStats {
    pub attempted: u64,
    pub connected: u64,
    pub elapsed: Duration,
}

/// Opens `rate` connections per second for `seconds` from `source` to
/// `target`, each doing `mode` and held at most `hold`. Runs on `workers`
/// threads so slow connections cannot slow the pace.
pub fn run(
    target: SocketAddr,
    source: &'static str,
    mode: Mode,
    rate: u32,
    seconds: u32,
    hold: Duration,
) -> FloodStats {
    let total = u64::from(rate) * u64::from(seconds);
    // Enough threads that connections held open cannot slow the pace.
    let workers = ((f64::from(rate) * hold.as_secs_f64()) as usize + 16).min(1500);
    let next = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let interval = Duration::from_secs(1) / rate.max(1);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let next = next.clone();
            let connected = connected.clone();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                // Pace: connection i starts at i * interval.
                let due = start + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if one(target, source, mode, hold, i) {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    FloodStats {
        attempted: total,
        connected: connected.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

/// One flood connection. Returns whether TCP connected.
fn one(target: SocketAddr, source: &str, mode: Mode, hold: Duration, i: u64) -> bool {
    let Ok(mut s) = connect_from(target, source) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(hold));
    let _ = s.set_write_timeout(Some(hold));
    match mode {
        Mode::Idle => {}
        Mode::Junk => {
            let junk: Vec<u8> = (0..512u64)
                .map(|j| (i.wrapping_mul(2654435761).wrapping_add(j * 97) >> 3) as u8 | 0x80)
                .collect();
            let _ = s.write_all(&junk);
        }
        Mode::C0C1Stall | Mode::HandshakeNoConnect => {
            let Ok((mut hs, c0c1)) = ClientHandshake::start() else {
                return true;
            };
            if s.write_all(&c0c1).is_err() {
                return true;
            }
            if mode == Mode::HandshakeNoConnect {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    match hs.feed(&buf[..n]) {
                        Ok(step) if step.done => {
                            let _ = s.write_all(&step.response);
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
    }
    // Hold until the guard closes it or `hold` passes.
    let mut buf = [0u8; 256];
    let until = Instant::now() + hold;
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    true
}
