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

pub mod admin;
pub mod admit;
pub mod audit;
pub mod callback;
pub mod config;
pub mod control;
pub mod lifecycle;
pub mod line_writer;
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
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use admit::Admission;
use config::Config;
use control::sessions::Sessions;
use control::Remedies;
use metrics::Metrics;
use upstream::RoundRobin;

/// State shared by every connection.
pub struct Guard {
    /// The config new connections use; a session keeps the one it began
    /// with, so a reload never disturbs it.
    pub config: ArcSwap<Config>,
    /// The file the config came from; `None`: the embedded default.
    pub config_path: Option<PathBuf>,
    pub metrics: Arc<Metrics>,
    /// Round-robin position per upstream name.
    round_robin: DashMap<String, Arc<RoundRobin>>,
    /// Permits for `server.max_connections`.
    pub connections: Arc<Semaphore>,
    /// Address rules, rate limits and bans.
    pub admission: Admission,
    /// Live publishers and per-app counts.
    pub streams: Arc<policy::Registry>,
    /// HTTP auth callbacks and their cached answers.
    pub callbacks: callback::Callbacks,
    /// The operator's bans, blocks and suspensions.
    pub remedies: ArcSwap<Remedies>,
    /// Serialises changes to `remedies` and their state-file writes.
    pub remedies_write: tokio::sync::Mutex<()>,
    /// Sessions relaying now.
    pub sessions: Sessions,
    pub audit: audit::Audit,
    /// False once draining: `/readyz` fails and nothing new is accepted.
    pub ready: AtomicBool,
}

impl Guard {
    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The round-robin state of upstream `name`.
    pub fn round_robin(&self, name: &str) -> Arc<RoundRobin> {
        // Look up first: the common case allocates no key.
        if let Some(rr) = self.round_robin.get(name) {
            return rr.clone();
        }
        self.round_robin
            .entry(name.to_string())
            .or_default()
            .clone()
    }
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
        admin::actions::expire_bans(&guard).await;
        publish_gauges(&guard);
    }
}

/// Copies table sizes into their gauges.
pub fn publish_gauges(guard: &Guard) {
    let m = &guard.metrics;
    m.tracked_addresses
        .set(guard.admission.tracked_addresses() as i64);
    let manual = guard.remedies.load().bans.len();
    m.bans_active
        .set((guard.admission.bans().len() + manual) as i64);
    m.pending_connections.set(guard.admission.pending() as i64);
}

/// A started guard: where it listens, and its tasks.
pub struct Running {
    pub guard: Arc<Guard>,
    pub rtmp_addrs: Vec<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The RTMP accept loops, stopped first when draining.
    listeners: std::sync::Mutex<Vec<JoinHandle<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting new RTMP connections, and returns once every
    /// listening socket is closed; then `/readyz` fails. Sessions go on.
    pub async fn stop_accepting(&self) {
        let listeners = std::mem::take(&mut *self.lock_listeners());
        for task in &listeners {
            task.abort();
        }
        for task in listeners {
            let _ = task.await;
        }
        self.guard
            .ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops accepting and serving metrics and the admin API, without
    /// waiting. Sessions already running end on their own.
    pub fn stop(&self) {
        self.guard
            .ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.lock_listeners().iter().chain(&self.tasks) {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prefixes a start-up error with what could not be done.
fn cannot(what: String) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |e| std::io::Error::new(e.kind(), format!("cannot {what}: {e}"))
}

/// Binds every listener and starts serving, on a config that did not come
/// from a file. Must run inside a tokio runtime.
pub async fn start(config: Config) -> std::io::Result<Running> {
    start_from(config, None).await
}

/// As [`start`], remembering the file to reload the config from.
pub async fn start_from(config: Config, path: Option<PathBuf>) -> std::io::Result<Running> {
    let apps: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    let upstreams: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    let metrics = Metrics::new(&apps, &upstreams).map_err(std::io::Error::other)?;
    let metrics = Arc::new(metrics);
    metrics.loaded();

    let listeners = listener::bind(&config.server.listen)?;
    let metrics_listener = metrics::bind(config.metrics.listen)
        .await
        .map_err(cannot(format!(
            "serve metrics on {}",
            config.metrics.listen
        )))?;
    let admin_listener = match &config.admin {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a.listen)
                .await
                .map_err(cannot(format!("serve the admin API on {}", a.listen)))?,
        ),
        None => None,
    };
    let audit = match &config.audit {
        Some(a) => audit::Audit::open(&a.path)
            .map_err(cannot(format!("open the audit log {}", a.path.display())))?,
        None => audit::Audit::default(),
    };
    let rtmp_addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let guard = Arc::new(Guard {
        round_robin: DashMap::new(),
        connections: Arc::new(Semaphore::new(config.server.max_connections)),
        admission: Admission::new(&config),
        streams: Arc::new(policy::Registry::default()),
        callbacks: callback::Callbacks::default(),
        metrics: metrics.clone(),
        remedies: ArcSwap::default(),
        remedies_write: tokio::sync::Mutex::new(()),
        sessions: Sessions::default(),
        audit,
        ready: AtomicBool::new(false),
        config: ArcSwap::from_pointee(config),
        config_path: path,
    });
    lifecycle::load_state(&guard);
    let mut tasks = vec![
        tokio::spawn(metrics::serve(metrics_listener, metrics)),
        tokio::spawn(housekeeping(guard.clone())),
    ];
    if let Some(l) = admin_listener {
        tasks.push(tokio::spawn(admin::serve(l, guard.clone())));
    }
    let listeners = listeners
        .into_iter()
        .map(|l| tokio::spawn(listener::accept_loop(l, guard.clone())))
        .collect();
    guard.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(Running {
        guard,
        rtmp_addrs,
        metrics_addr,
        admin_addr,
        listeners: std::sync::Mutex::new(listeners),
        tasks,
    })
}
