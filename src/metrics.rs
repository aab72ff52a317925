//! Prometheus metrics, and the HTTP endpoint that serves them.
//!
//! Metric names and labels are an interface: dashboards and alerts depend on
//! them. Every label value comes from a fixed set (stage and reason enums,
//! configured app and upstream names), never from what a client sent.

use std::net::SocketAddr;

use axum::{http::header, response::IntoResponse, routing::get, Router};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::verdict::{Reason, Stage};

/// Kinds of upstream failure: the `kind` label.
pub mod upstream_kind {
    pub const CONNECT_REFUSED: &str = "connect_refused";
    pub const CONNECT_TIMEOUT: &str = "connect_timeout";
    pub const HANDSHAKE_FAILED: &str = "handshake_failed";
    pub const PROTOCOL_VIOLATION: &str = "protocol_violation";
    pub const IO_ERROR: &str = "io_error";
    /// No server of the upstream was up (and not drained).
    pub const UNAVAILABLE: &str = "unavailable";
    pub const ALL: [&str; 6] = [
        CONNECT_REFUSED,
        CONNECT_TIMEOUT,
        HANDSHAKE_FAILED,
        PROTOCOL_VIOLATION,
        IO_ERROR,
        UNAVAILABLE,
    ];
}

/// Outcomes of a client's TLS handshake: the `result` label.
pub mod tls_result {
    pub const SUCCESS: &str = "success";
    /// rustls refused it, or the client closed during it.
    pub const FAILURE: &str = "failure";
    pub const TIMEOUT: &str = "timeout";
    pub const ALL: [&str; 3] = [SUCCESS, FAILURE, TIMEOUT];
}

/// Address families: the `family` label.
pub mod family {
    pub const IPV4: &str = "ipv4";
    pub const IPV6: &str = "ipv6";
    pub const ALL: [&str; 2] = [IPV4, IPV6];
}

/// Work to do before each scrape renders (reading the kernel's counters):
/// a future, so the scrape awaits it without blocking a worker thread.
pub type BeforeScrape =
    Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

pub struct Metrics {
    pub registry: Registry,
    pub connections_total: IntCounter,
    pub connections_active: IntGauge,
    pub sessions_active: IntGaugeVec,
    pub sessions_total: IntCounterVec,
    /// Children of the (stage, reason) counters, resolved once: a flood
    /// of refusals must not pay for a label lookup each.
    blocked: ReasonCounters,
    would_block: ReasonCounters,
    upstream_errors_total: IntCounterVec,
    pub tracked_addresses: IntGauge,
    pub pending_connections: IntGauge,
    pub bans_active: IntGauge,
    /// 1 while the fleet's Redis answers; registered only with `[fleet]`.
    pub fleet_redis_up: IntGauge,
    bans_total: IntCounterVec,
    pub bytes_client_to_upstream: IntCounter,
    pub bytes_upstream_to_client: IntCounter,
    pub handshake_duration: Histogram,
    pub upstream_connect_duration: Histogram,
    config_reloads_total: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    pub state_file_quarantined_total: IntCounter,
    pub state_file_write_errors_total: IntCounter,
    admin_actions_total: IntCounterVec,
    tls_handshakes_total: IntCounterVec,
    upstream_server_up: IntGaugeVec,
    upstream_sessions: IntGaugeVec,
    /// 1 while bans are enforced in the kernel too.
    pub kernel_bans_enabled: IntGauge,
    /// Elements in the kernel's ban sets, by family, as last read.
    pub kernel_ban_entries: IntGaugeVec,
    /// The kernel rules' refusal counters, by family ([`family::ALL`]
    /// order), as last read; exported as counters.
    pub kernel_refused: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// Run before each scrape renders; set at most once, at start.
    pub before_scrape: std::sync::OnceLock<BeforeScrape>,
}

/// Values of the `action` label of `rtmp_guard_admin_actions_total`.
pub const ADMIN_ACTIONS: [&str; 11] = [
    "kick", "ban", "unban", "block", "unblock", "suspend", "resume", "reload", "drain", "undrain",
    "denied",
];

impl Metrics {
    /// Shows `rtmp_guard_fleet_redis_up` (fleet mode only).
    pub fn enable_fleet(&self) {
        let _ = self
            .registry
            .register(Box::new(self.fleet_redis_up.clone()));
    }

    /// Builds and registers every metric. `apps` and `upstreams` are the
    /// configured names, pre-created so dashboards show zeros, not gaps.
    pub fn new(apps: &[&str], upstreams: &[&str]) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let connections_total = IntCounter::new(
            "rtmp_guard_connections_total",
            "TCP connections accepted on the RTMP listeners.",
        )?;
        let connections_active = IntGauge::new(
            "rtmp_guard_connections_active",
            "Client connections open now, at any stage.",
        )?;
        let sessions_active = IntGaugeVec::new(
            Opts::new(
                "rtmp_guard_sessions_active",
                "Sessions relaying to an upstream, by configured app.",
            ),
            &["app"],
        )?;
        let sessions_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_sessions_total",
                "Sessions that reached the relay, by configured app.",
            ),
            &["app"],
        )?;
        let blocked_sessions_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_blocked_sessions_total",
                "Connections the guard refused, by stage and reason.",
            ),
            &["stage", "reason"],
        )?;
        let would_block_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_would_block_total",
                "Connections dry-run mode let through that enforce mode would refuse.",
            ),
            &["stage", "reason"],
        )?;
        let tracked_addresses = IntGauge::new(
            "rtmp_guard_tracked_addresses",
            "Client prefixes with rate, concurrency or ban-score state.",
        )?;
        let pending_connections = IntGauge::new(
            "rtmp_guard_pending_connections",
            "Connections not yet past connect (limited by max_pending).",
        )?;
        let bans_active = IntGauge::new("rtmp_guard_bans_active", "Prefixes banned now.")?;
        let fleet_redis_up = IntGauge::new(
            "rtmp_guard_fleet_redis_up",
            "1 while the fleet's Redis answers, 0 while the guard runs on its last known state.",
        )?;
        let bans_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_bans_total",
                "Bans started, by the refusal reason that triggered them.",
            ),
            &["reason"],
        )?;
        let upstream_errors_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_upstream_errors_total",
                "Failed attempts to reach or talk to an upstream server.",
            ),
            &["upstream", "kind"],
        )?;
        let bytes_total = IntCounterVec::new(
            Opts::new("rtmp_guard_bytes_total", "Bytes relayed, by direction."),
            &["direction"],
        )?;
        let handshake_duration = Histogram::with_opts(
            HistogramOpts::new(
                "rtmp_guard_handshake_duration_seconds",
                "Time from accept to a completed client handshake.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let upstream_connect_duration = Histogram::with_opts(
            HistogramOpts::new(
                "rtmp_guard_upstream_connect_duration_seconds",
                "Time to connect and handshake with an upstream server.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let config_reloads_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_config_reloads_total",
                "Config reloads (SIGHUP or the admin API), by result: success or failure.",
            ),
            &["result"],
        )?;
        let config_last_reload_success = IntGauge::new(
            "rtmp_guard_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that succeeded (the start counts).",
        )?;
        let state_file_quarantined_total = IntCounter::new(
            "rtmp_guard_state_file_quarantined_total",
            "Unreadable or corrupt state files moved aside at start.",
        )?;
        let state_file_write_errors_total = IntCounter::new(
            "rtmp_guard_state_file_write_errors_total",
            "Failed writes of the state file (the change was not applied).",
        )?;
        let admin_actions_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_admin_actions_total",
                "Admin API actions, by action; denied counts refused credentials.",
            ),
            &["action"],
        )?;
        let tls_handshakes_total = IntCounterVec::new(
            Opts::new(
                "rtmp_guard_tls_handshakes_total",
                "TLS handshakes on the RTMPS listeners, by result.",
            ),
            &["result"],
        )?;
        let upstream_server_up = IntGaugeVec::new(
            Opts::new(
                "rtmp_guard_upstream_server_up",
                "1 while an upstream server is up (by its health checks), 0 while down.",
            ),
            &["upstream", "server"],
        )?;
        let upstream_sessions = IntGaugeVec::new(
            Opts::new(
                "rtmp_guard_upstream_sessions",
                "Sessions relaying to each upstream server now.",
            ),
            &["upstream", "server"],
        )?;
        let kernel_bans_enabled = IntGauge::new(
            "rtmp_guard_kernel_bans_enabled",
            "1 while bans are also enforced in the kernel ([bans.kernel]), 0 otherwise.",
        )?;
        let kernel_ban_entries = IntGaugeVec::new(
            Opts::new(
                "rtmp_guard_kernel_ban_entries",
                "Prefixes in the kernel's ban sets, by address family, read at scrape time.",
            ),
            &["family"],
        )?;
        let kernel_refused: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]> =
            std::sync::Arc::default();
        let build_info = IntGaugeVec::new(
            Opts::new("rtmp_guard_build_info", "Always 1; the version is a label."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(sessions_total.clone()))?;
        registry.register(Box::new(blocked_sessions_total.clone()))?;
        registry.register(Box::new(would_block_total.clone()))?;
        registry.register(Box::new(tracked_addresses.clone()))?;
        registry.register(Box::new(pending_connections.clone()))?;
        registry.register(Box::new(bans_active.clone()))?;
        registry.register(Box::new(bans_total.clone()))?;
        registry.register(Box::new(upstream_errors_total.clone()))?;
        registry.register(Box::new(bytes_total.clone()))?;
        registry.register(Box::new(handshake_duration.clone()))?;
        registry.register(Box::new(upstream_connect_duration.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(config_reloads_total.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(state_file_quarantined_total.clone()))?;
        registry.register(Box::new(state_file_write_errors_total.clone()))?;
        registry.register(Box::new(admin_actions_total.clone()))?;
        registry.register(Box::new(tls_handshakes_total.clone()))?;
        registry.register(Box::new(upstream_server_up.clone()))?;
        registry.register(Box::new(upstream_sessions.clone()))?;
        for result in tls_result::ALL {
            tls_handshakes_total.with_label_values(&[result]);
        }
        registry.register(Box::new(ReadAtScrape::new(
            "rtmp_guard_log_lines_dropped_total",
            "Main log lines dropped because the log writer fell behind (the audit log never drops).",
            crate::logging::lines_dropped,
        )?))?;
        registry.register(Box::new(kernel_bans_enabled.clone()))?;
        registry.register(Box::new(kernel_ban_entries.clone()))?;
        registry.register(Box::new(FamilyCounters::new(
            "rtmp_guard_kernel_refused_total",
            "New connections the kernel refused from banned or denied prefixes, by address \
             family, read from the rule counters at scrape time.",
            kernel_refused.clone(),
        )?))?;
        for f in family::ALL {
            kernel_ban_entries.with_label_values(&[f]);
        }
        for result in ["success", "failure"] {
            config_reloads_total.with_label_values(&[result]);
        }
        for action in ADMIN_ACTIONS {
            admin_actions_total.with_label_values(&[action]);
        }

        for stage in Stage::ALL {
            for reason in Reason::ALL {
                blocked_sessions_total.with_label_values(&[stage.as_str(), reason.as_str()]);
                would_block_total.with_label_values(&[stage.as_str(), reason.as_str()]);
            }
        }
        for reason in Reason::ALL {
            bans_total.with_label_values(&[reason.as_str()]);
        }
        for app in apps {
            sessions_active.with_label_values(&[app]);
            sessions_total.with_label_values(&[app]);
        }
        for upstream in upstreams {
            for kind in upstream_kind::ALL {
                upstream_errors_total.with_label_values(&[upstream, kind]);
            }
        }
        Ok(Metrics {
            registry,
            connections_total,
            connections_active,
            sessions_active,
            sessions_total,
            blocked: ReasonCounters::new(&blocked_sessions_total),
            would_block: ReasonCounters::new(&would_block_total),
            upstream_errors_total,
            tracked_addresses,
            pending_connections,
            bans_active,
            fleet_redis_up,
            bans_total,
            bytes_client_to_upstream: bytes_total.with_label_values(&["client_to_upstream"]),
            bytes_upstream_to_client: bytes_total.with_label_values(&["upstream_to_client"]),
            handshake_duration,
            upstream_connect_duration,
            config_reloads_total,
            config_last_reload_success,
            state_file_quarantined_total,
            state_file_write_errors_total,
            admin_actions_total,
            tls_handshakes_total,
            upstream_server_up,
            upstream_sessions,
            kernel_bans_enabled,
            kernel_ban_entries,
            kernel_refused,
            before_scrape: std::sync::OnceLock::new(),
        })
    }

    /// Counts a reload; `ok` also stamps the success time.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads_total.with_label_values(&[result]).inc();
        if ok {
            self.loaded();
        }
    }

    /// Stamps the time of a good config load: the start, or a reload. The
    /// start is not counted as a reload, so `rtmp_guard_config_reloads_total`
    /// counts exactly the SIGHUPs and API calls.
    pub fn loaded(&self) {
        self.config_last_reload_success
            .set(crate::control::unix_now() as i64);
    }

    /// `action` must be one of [`ADMIN_ACTIONS`].
    pub fn admin_action(&self, action: &'static str) {
        self.admin_actions_total.with_label_values(&[action]).inc();
    }

    /// Makes sure an app's session series exist (after a reload adds one).
    pub fn ensure_app(&self, app: &str) {
        self.sessions_active.with_label_values(&[app]);
        self.sessions_total.with_label_values(&[app]);
    }

    /// The up and sessions gauges of one configured server.
    pub fn upstream_server(&self, upstream: &str, server: &str) -> (IntGauge, IntGauge) {
        (
            self.upstream_server_up
                .with_label_values(&[upstream, server]),
            self.upstream_sessions
                .with_label_values(&[upstream, server]),
        )
    }

    /// Drops the series of a server a reload removed.
    pub fn forget_upstream_server(&self, upstream: &str, server: &str) {
        let _ = self
            .upstream_server_up
            .remove_label_values(&[upstream, server]);
        let _ = self
            .upstream_sessions
            .remove_label_values(&[upstream, server]);
    }

    /// `result` must be one of [`tls_result::ALL`].
    pub fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes_total.with_label_values(&[result]).inc();
    }

    pub fn blocked(&self, stage: Stage, reason: Reason) {
        self.blocked.get(stage, reason).inc();
    }

    pub fn would_block(&self, stage: Stage, reason: Reason) {
        self.would_block.get(stage, reason).inc();
    }

    pub fn would_block_count(&self, stage: Stage, reason: Reason) -> u64 {
        self.would_block.get(stage, reason).get()
    }

    pub fn banned(&self, reason: Reason) {
        self.bans_total.with_label_values(&[reason.as_str()]).inc();
        self.bans_active.inc();
    }

    pub fn blocked_count(&self, stage: Stage, reason: Reason) -> u64 {
        self.blocked.get(stage, reason).get()
    }

    /// `upstream` must be a configured upstream name; `kind` one of
    /// [`upstream_kind::ALL`].
    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        self.upstream_errors_total
            .with_label_values(&[upstream, kind])
            .inc();
    }

    pub fn upstream_error_count(&self, upstream: &str, kind: &'static str) -> u64 {
        self.upstream_errors_total
            .with_label_values(&[upstream, kind])
            .get()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A counter whose value is kept elsewhere and read at each scrape: the
/// main log's dropped lines, counted by a writer that starts before any
/// registry (and is one per process, however many guards a test starts).
struct ReadAtScrape {
    name: &'static str,
    help: &'static str,
    template: IntCounter,
    read: fn() -> u64,
}

impl ReadAtScrape {
    fn new(
        name: &'static str,
        help: &'static str,
        read: fn() -> u64,
    ) -> Result<ReadAtScrape, prometheus::Error> {
        Ok(ReadAtScrape {
            name,
            help,
            template: IntCounter::new(name, help)?,
            read,
        })
    }
}

impl Collector for ReadAtScrape {
    fn desc(&self) -> Vec<&Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match IntCounter::new(self.name, self.help) {
            Ok(counter) => {
                counter.inc_by((self.read)());
                counter.collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Counters by `family` whose values are kept elsewhere (the kernel's
/// rule counters, copied in before each scrape) and read at each scrape.
struct FamilyCounters {
    template: IntCounterVec,
    values: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl FamilyCounters {
    fn new(
        name: &'static str,
        help: &'static str,
        values: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    ) -> Result<FamilyCounters, prometheus::Error> {
        Ok(FamilyCounters {
            template: IntCounterVec::new(Opts::new(name, help), &["family"])?,
            values,
        })
    }
}

impl Collector for FamilyCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.template.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let fresh = self.template.clone();
        fresh.reset();
        for (i, f) in family::ALL.iter().enumerate() {
            let value = self.values[i].load(std::sync::atomic::Ordering::Relaxed);
            fresh.with_label_values(&[f]).inc_by(value);
        }
        fresh.collect()
    }
}

/// One counter per (stage, reason), indexed without hashing. The arrays
/// are sized by the enums, so every discriminant is in range.
struct ReasonCounters([[IntCounter; Reason::ALL.len()]; Stage::ALL.len()]);

impl ReasonCounters {
    fn new(vec: &IntCounterVec) -> ReasonCounters {
        ReasonCounters(std::array::from_fn(|s| {
            std::array::from_fn(|r| {
                vec.with_label_values(&[Stage::ALL[s].as_str(), Reason::ALL[r].as_str()])
            })
        }))
    }

    fn get(&self, stage: Stage, reason: Reason) -> &IntCounter {
        &self.0[stage as usize][reason as usize]
    }
}

/// Serves `/metrics` on an already-bound listener until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                if let Some(before) = metrics.before_scrape.get() {
                    before().await;
                }
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
                    .into_response()
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_kept_elsewhere_is_read_at_each_scrape() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static KEPT: AtomicU64 = AtomicU64::new(0);
        let registry = Registry::new();
        let counter = ReadAtScrape::new("rtmp_guard_test_total", "Test.", || {
            KEPT.load(Ordering::Relaxed)
        })
        .unwrap();
        registry.register(Box::new(counter)).unwrap();
        let render = || {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(render().contains("\nrtmp_guard_test_total 0\n"));
        KEPT.store(7, Ordering::Relaxed);
        let text = render();
        assert!(
            text.contains("# TYPE rtmp_guard_test_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nrtmp_guard_test_total 7\n"), "{text}");
    }

    #[test]
    fn kernel_refusals_are_exported_by_family_as_last_read() {
        let m = Metrics::new(&[], &[]).unwrap();
        let text = m.render();
        assert!(
            text.contains("\nrtmp_guard_kernel_bans_enabled 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE rtmp_guard_kernel_refused_total counter\n"));
        assert!(text.contains("\nrtmp_guard_kernel_refused_total{family=\"ipv6\"} 0\n"));
        m.kernel_refused[0].store(12, std::sync::atomic::Ordering::Relaxed);
        m.kernel_ban_entries
            .with_label_values(&[family::IPV4])
            .set(3);
        let text = m.render();
        assert!(text.contains("\nrtmp_guard_kernel_refused_total{family=\"ipv4\"} 12\n"));
        assert!(text.contains("\nrtmp_guard_kernel_ban_entries{family=\"ipv4\"} 3\n"));
    }

    #[test]
    fn the_main_logs_dropped_lines_are_exported() {
        let m = Metrics::new(&[], &[]).unwrap();
        let dropped = crate::logging::lines_dropped();
        assert!(m
            .render()
            .contains(&format!("\nrtmp_guard_log_lines_dropped_total {dropped}\n")));
    }
}
