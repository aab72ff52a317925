//! rtmp-guard: an inline, RTMP-aware reverse proxy that enforces a streaming
//! host's acceptable-use rules in front of real media servers.
//!
//! A connection travels these stages, each a module:
//!
//! accept ([`listener`]) → handshake → connect → upstream ([`upstream`]) →
//! relay ([`relay`]) → report ([`report`], [`metrics`])
//!
//! [`session`] is the per-connection state machine that ties them together;
//! [`rtmp`] holds the sans-IO protocol code they all use.

pub mod admit;
pub mod callback;
pub mod config;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy_protocol;
pub mod relay;
pub mod report;
pub mod rtmp;
pub mod session;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use admit::Admission;
use config::Config;
use metrics::Metrics;
use upstream::RoundRobin;

/// State shared by every connection.
pub struct Guard {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// One per `config.upstreams` entry, same order.
    pub round_robin: Vec<RoundRobin>,
    /// Permits for `server.max_connections`.
    pub connections: Arc<Semaphore>,
    /// Address rules, rate limits and bans.
    pub admission: Admission,
    /// Live publishers and per-app counts.
    pub streams: Arc<policy::Registry>,
    /// HTTP auth callbacks and their cached answers.
    pub callbacks: callback::Callbacks,
}

/// How often stale address state and expired bans are dropped.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Periodic upkeep of the admission tables, and the gauges that show them.
async fn housekeeping(guard: Arc<Guard>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        guard.admission.sweep(now);
        publish_gauges(&guard);
    }
}

/// Copies table sizes into their gauges.
pub fn publish_gauges(guard: &Guard) {
    let m = &guard.metrics;
    m.tracked_addresses
        .set(guard.admission.tracked_addresses() as i64);
    m.bans_active.set(guard.admission.bans().len() as i64);
    m.pending_connections.set(guard.admission.pending() as i64);
}

/// A started guard: where it listens, and its tasks.
pub struct Running {
    pub guard: Arc<Guard>,
    pub rtmp_addrs: Vec<SocketAddr>,
    pub metrics_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting and serving metrics. Sessions already running end on
    /// their own.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds every listener and starts serving. Must run inside a tokio runtime.
pub async fn start(config: Config) -> std::io::Result<Running> {
    let apps: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    let upstreams: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    let metrics = Metrics::new(&apps, &upstreams).map_err(std::io::Error::other)?;
    let metrics = Arc::new(metrics);

    let listeners = listener::bind(&config.server.listen)?;
    let metrics_listener = metrics::bind(config.metrics.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {}: {e}", config.metrics.listen),
        )
    })?;
    let rtmp_addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let guard = Arc::new(Guard {
        round_robin: config
            .upstreams
            .iter()
            .map(|_| RoundRobin::default())
            .collect(),
        connections: Arc::new(Semaphore::new(config.server.max_connections)),
        admission: Admission::new(&config),
        streams: Arc::new(policy::Registry::default()),
        callbacks: callback::Callbacks::default(),
        metrics: metrics.clone(),
        config,
    });
    let mut tasks = vec![
        tokio::spawn(metrics::serve(metrics_listener, metrics)),
        tokio::spawn(housekeeping(guard.clone())),
    ];
    for l in listeners {
        tasks.push(tokio::spawn(listener::accept_loop(l, guard.clone())));
    }
    Ok(Running {
        guard,
        rtmp_addrs,
        metrics_addr,
        tasks,
    })
}
