//! Active health checks of upstream servers: every `health_check_interval`,
//! a TCP connect and the start of an RTMP handshake (C0+C1 out, S0+S1
//! back) within `health_check_timeout`. A server that accepts TCP but
//! never answers fails, like one that refuses. Where the upstream sends
//! PROXY headers, the check sends one that names no client (v2 `LOCAL`,
//! v1 `PROXY UNKNOWN`), so an origin that demands a header does not drop
//! it; where the upstream speaks TLS, the check does too.
//!
//! One loop looks at every server of the config current at each tick, so
//! a reload's new servers and intervals take effect by themselves; each
//! check runs in its own task, at most one per server at a time.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use crate::config::{self, ProxyProtocolOut};
use crate::guard::Guard;
use crate::rtmp::handshake::ClientHandshake;
use crate::rtmp::proxy_protocol;
use crate::upstream;

/// How often the loop looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

/// S0 and S1: what a live RTMP server answers C0+C1 with.
const S0_S1: usize = 1 + 1536;

/// Runs the checks until the task is dropped.
pub async fn run(guard: Arc<Guard>) {
    let mut due: HashMap<(String, String), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let config = guard.config();
        let now = Instant::now();
        for up in &config.upstreams {
            if up.health_check_interval.is_zero() {
                continue;
            }
            let Some(pool) = guard.pools.get(&up.name) else {
                continue;
            };
            for server in &pool.servers {
                let key = (up.name.clone(), server.addr.clone());
                let next = due.entry(key).or_insert(now);
                if *next > now || server.checking.swap(true, Ordering::SeqCst) {
                    continue;
                }
                *next = now + up.health_check_interval;
                let (up, server) = (up.clone(), server.clone());
                tokio::spawn(async move {
                    let result = check(&up, &server.addr).await;
                    server.observe(&up, result, true);
                    server.checking.store(false, Ordering::SeqCst);
                });
            }
        }
    }
}

/// One check of `server`: Ok if it answered C0+C1 with S0 (version 3)
/// and S1 within the upstream's `health_check_timeout`.
pub async fn check(up: &config::Upstream, server: &str) -> Result<(), String> {
    let header = match up.proxy_protocol {
        ProxyProtocolOut::Off => Vec::new(),
        ProxyProtocolOut::V1 => proxy_protocol::encode_v1_unknown(),
        ProxyProtocolOut::V2 => proxy_protocol::encode_v2_local(),
    };
    let limit = up.health_check_timeout;
    let probe = async {
        let mut stream = upstream::dial(up, server, &header)
            .await
            .map_err(|u| u.detail)?;
        let (_, c0c1) = ClientHandshake::start().map_err(|e| e.to_string())?;
        stream.write_all(&c0c1).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut answer = vec![0u8; S0_S1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| format!("{server}: no S0+S1: {e}"))?;
        let _ = stream.shutdown().await;
        match answer.first() {
            Some(3) => Ok(()),
            other => Err(format!("{server}: S0 is {other:?}, not RTMP version 3")),
        }
    };
    timeout(limit, probe)
        .await
        .unwrap_or_else(|_| Err(format!("{server}: no handshake answer within {limit:?}")))
}
