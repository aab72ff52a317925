//! Starting the guard: bind every listener, build the shared [`Guard`],
//! restore the operator's remedies, put the bans in the kernel (with
//! `[bans.kernel]`), and spawn the accept loops, the metrics and admin
//! servers and the periodic upkeep.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::Config;
use crate::guard::Guard;
use crate::metrics::Metrics;
use crate::transport::Kind;
use crate::workers::Workers;
use crate::{accept, admin, audit, control, fleet, health, kernel, metrics};

/// How often stale address state and expired bans are dropped.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Periodic upkeep of the admission tables, and the gauges that show them.
async fn housekeeping(guard: Arc<Guard>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        guard.admission.sweep(now);
        control::remedies::expire_bans(&guard).await;
        guard.publish_gauges();
    }
}

/// A started guard: where it listens, and its tasks.
pub struct Running {
    pub guard: Arc<Guard>,
    pub rtmp_addrs: Vec<SocketAddr>,
    /// The `[tls] listen` addresses, bound.
    pub rtmps_addrs: Vec<SocketAddr>,
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

    /// Stops accepting, lets live sessions go on for up to `timeout`, then
    /// returns (the caller exits, closing what is left).
    pub async fn drain(&self, timeout: std::time::Duration) {
        self.stop_accepting().await;
        let guard = &self.guard;
        tracing::info!(
            event = "draining",
            connections = guard.open.get(),
            timeout_seconds = timeout.as_secs(),
            "draining"
        );
        let _ = tokio::time::timeout(timeout, guard.open.all_closed()).await;
        let left = guard.open.get();
        if left > 0 {
            tracing::warn!(
                event = "drain_timeout",
                connections = left,
                "drain timeout: closing the sessions left"
            );
        }
        // The kernel's refusals end with the guard: its table goes once
        // the sessions have.
        guard.kernel.stop().await;
        // Waiting for the disk is blocking work: off the runtime's workers.
        let flushing = guard.clone();
        let _ = tokio::task::spawn_blocking(move || flushing.audit.flush()).await;
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
    start_with(config, path, Workers::default()).await
}

/// As [`start_from`], running sessions on `workers`.
pub async fn start_with(
    config: Config,
    path: Option<PathBuf>,
    workers: Workers,
) -> std::io::Result<Running> {
    let apps: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    let upstreams: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    let metrics = Metrics::new(&apps, &upstreams).map_err(std::io::Error::other)?;
    let metrics = Arc::new(metrics);
    metrics.loaded();

    let mut listeners = accept::bind(&config.server.listen, Kind::Rtmp)?;
    let tls_listeners = match &config.tls {
        Some(tls) => accept::bind(&tls.listen, Kind::Rtmps)?,
        None => Vec::new(),
    };
    let rtmps_addrs = tls_listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
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
    listeners.extend(tls_listeners);
    let metrics_addr = metrics_listener.local_addr()?;
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    // Fixed for the life of the process: a reload cannot remove the token.
    let admin_token_required = config.admin.as_ref().is_some_and(|a| a.token.is_some());
    let mut guard = Guard::new(config, path, metrics.clone(), audit);
    guard.workers = Arc::new(workers);
    let guard = Arc::new(guard);
    control::remedies::load_state(&guard);
    let mut tasks = vec![
        tokio::spawn(metrics::serve(metrics_listener, metrics)),
        tokio::spawn(housekeeping(guard.clone())),
        tokio::spawn(health::run(guard.clone())),
    ];
    let ports: Vec<u16> = rtmp_addrs
        .iter()
        .chain(&rtmps_addrs)
        .map(|a| a.port())
        .collect();
    if let Some(task) = kernel::worker::start(&guard, &ports).await {
        tasks.push(task);
    }
    if guard.fleet.is_some() {
        tasks.push(tokio::spawn(fleet::run(guard.clone())));
    }
    if let Some(l) = admin_listener {
        tasks.push(tokio::spawn(admin::serve(
            l,
            guard.clone(),
            admin_token_required,
        )));
    }
    let listeners = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept::accept_loop(l, guard.clone())))
        .collect();
    guard.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(Running {
        guard,
        rtmp_addrs,
        rtmps_addrs,
        metrics_addr,
        admin_addr,
        listeners: std::sync::Mutex::new(listeners),
        tasks,
    })
}
