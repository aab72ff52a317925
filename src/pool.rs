//! Upstream pools: for each configured upstream, which of its servers are
//! up, which the operator drained, and how many sessions each relays now.
//!
//! A server is up until `fail_threshold` consecutive failures (active
//! checks, or connects and handshakes of sessions) mark it down, and down
//! until `rise_threshold` consecutive good checks bring it back
//! ([`Health`], a state machine without I/O or clock). With active checks
//! off (`health_check_interval = "0s"`) nothing could bring a server back,
//! so failures never mark one down: it is only skipped for the session at
//! hand, as before pools existed.
//!
//! New sessions go only to servers that are up and not drained, by the
//! upstream's `balance`. Sessions count from the moment a server is chosen
//! (a [`Lease`]), so a burst of connects spreads too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use prometheus::IntGauge;

use crate::config::{Balance, Config, Upstream};
use crate::metrics::Metrics;

/// Consecutive results, and what they make of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    fails: u32,
    rises: u32,
}

impl Default for Health {
    /// A server is presumed up until it fails.
    fn default() -> Self {
        Health {
            up: true,
            fails: 0,
            rises: 0,
        }
    }
}

impl Health {
    /// Records one result; returns the new state if it changed.
    pub fn observe(&mut self, ok: bool, fail_threshold: u32, rise_threshold: u32) -> Option<bool> {
        if ok {
            self.fails = 0;
            if !self.up {
                self.rises += 1;
                if self.rises >= rise_threshold {
                    self.up = true;
                    self.rises = 0;
                    return Some(true);
                }
            }
        } else {
            self.rises = 0;
            if self.up {
                self.fails += 1;
                if self.fails >= fail_threshold {
                    self.up = false;
                    self.fails = 0;
                    return Some(false);
                }
            }
        }
        None
    }
}

/// One server of one upstream.
pub struct Server {
    pub upstream: String,
    pub addr: String,
    health: Mutex<Health>,
    drained: AtomicBool,
    sessions: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// A check of it is running (the checker starts one at a time).
    pub checking: AtomicBool,
    up_gauge: IntGauge,
    sessions_gauge: IntGauge,
}

impl Server {
    fn new(upstream: &str, addr: &str, metrics: &Metrics) -> Server {
        let (up_gauge, sessions_gauge) = metrics.upstream_server(upstream, addr);
        up_gauge.set(1);
        Server {
            upstream: upstream.to_string(),
            addr: addr.to_string(),
            health: Mutex::new(Health::default()),
            drained: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            checking: AtomicBool::new(false),
            up_gauge,
            sessions_gauge,
        }
    }

    pub fn is_up(&self) -> bool {
        self.lock_health().up
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::SeqCst);
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a check or connect result under `up`'s thresholds. Passive
    /// results (`active` false) count only while active checks run.
    pub fn observe(&self, up: &Upstream, result: Result<(), String>, active: bool) {
        if !active && up.health_check_interval.is_zero() {
            if let Err(why) = result {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
            return;
        }
        let ok = result.is_ok();
        if let Err(why) = &result {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        }
        let changed = self
            .lock_health()
            .observe(ok, up.fail_threshold, up.rise_threshold);
        if let Some(now_up) = changed {
            self.up_gauge.set(i64::from(now_up));
            if now_up {
                tracing::info!(event = "upstream_server_up", upstream = %self.upstream, server = %self.addr, "upstream server is up");
            } else {
                tracing::warn!(
                    event = "upstream_server_down",
                    upstream = %self.upstream,
                    server = %self.addr,
                    error = result.err().unwrap_or_default().as_str(),
                    "upstream server is down"
                );
            }
        }
    }

    /// Counts a session on this server until the lease drops.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        self.sessions_gauge.inc();
        Lease(self.clone())
    }
}

/// One session's place on a server.
pub struct Lease(Arc<Server>);

impl Lease {
    pub fn server(&self) -> &Arc<Server> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
        self.0.sessions_gauge.dec();
    }
}

/// The servers of one upstream, in config order.
#[derive(Default)]
pub struct Pool {
    pub servers: Vec<Arc<Server>>,
    next: AtomicUsize,
}

impl Pool {
    /// The servers a new session may try, in the order to try them: up and
    /// not drained, by `balance`.
    pub fn candidates(&self, balance: Balance) -> Vec<Arc<Server>> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<Arc<Server>> = (0..n)
            .filter_map(|i| self.servers.get(start.wrapping_add(i) % n.max(1)))
            .filter(|s| s.is_up() && !s.is_drained())
            .cloned()
            .collect();
        if balance == Balance::LeastConnections {
            // Stable: equal counts keep their round-robin order.
            order.sort_by_key(|s| s.sessions());
        }
        order
    }

    pub fn server(&self, addr: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.addr == addr)
    }
}

/// Every upstream's pool, kept in step with the config.
#[derive(Default)]
pub struct Pools {
    by_name: DashMap<String, Arc<Pool>>,
}

impl Pools {
    pub fn get(&self, upstream: &str) -> Option<Arc<Pool>> {
        self.by_name.get(upstream).map(|p| p.clone())
    }

    /// Builds the pools for `config`: a server that stays keeps its state
    /// and sessions; a new one starts up; `drained` lists the (upstream,
    /// server) pairs the operator drained. A removed server's series go.
    pub fn sync(&self, config: &Config, drained: &[(String, String)], metrics: &Metrics) {
        let mut kept: HashMap<(String, String), Arc<Server>> = HashMap::new();
        for entry in self.by_name.iter() {
            for s in &entry.value().servers {
                kept.insert((s.upstream.clone(), s.addr.clone()), s.clone());
            }
        }
        let mut names = Vec::new();
        for up in &config.upstreams {
            let servers = up
                .servers
                .iter()
                .map(|addr| {
                    let key = (up.name.clone(), addr.clone());
                    let server = kept
                        .remove(&key)
                        .unwrap_or_else(|| Arc::new(Server::new(&up.name, addr, metrics)));
                    server.set_drained(drained.contains(&key));
                    server
                })
                .collect();
            self.by_name.insert(
                up.name.clone(),
                Arc::new(Pool {
                    servers,
                    next: AtomicUsize::new(0),
                }),
            );
            names.push(up.name.clone());
        }
        self.by_name.retain(|name, _| names.contains(name));
        for (upstream, addr) in kept.keys() {
            metrics.forget_upstream_server(upstream, addr);
        }
    }

    /// Every pool, by upstream name.
    pub fn all(&self) -> Vec<(String, Arc<Pool>)> {
        let mut all: Vec<_> = self
            .by_name
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_goes_down_after_fail_threshold_and_up_after_rise_threshold() {
        let mut h = Health::default();
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert!(!h.up);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        // A failure in between starts the rise over.
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));
        // A success in between starts the fall over.
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert!(h.up);
    }

    fn pool(balance_servers: &[&str]) -> (Pool, Metrics) {
        let metrics = Metrics::new(&[], &["o"]).unwrap();
        let servers = balance_servers
            .iter()
            .map(|a| Arc::new(Server::new("o", a, &metrics)))
            .collect();
        (
            Pool {
                servers,
                next: AtomicUsize::new(0),
            },
            metrics,
        )
    }

    #[test]
    fn least_connections_picks_the_emptiest_and_skips_down_and_drained_servers() {
        let (p, _m) = pool(&["a:1", "b:1", "c:1"]);
        let mut leases = Vec::new();
        for _ in 0..6 {
            let first = p.candidates(Balance::LeastConnections)[0].clone();
            leases.push(first.lease());
        }
        let counts: Vec<usize> = p.servers.iter().map(|s| s.sessions()).collect();
        assert_eq!(counts, [2, 2, 2]);
        p.servers[1].set_drained(true);
        *p.servers[2].lock_health() = Health {
            up: false,
            fails: 0,
            rises: 0,
        };
        let only: Vec<String> = p
            .candidates(Balance::RoundRobin)
            .iter()
            .map(|s| s.addr.clone())
            .collect();
        assert_eq!(only, ["a:1"]);
        drop(leases);
        assert_eq!(p.servers[0].sessions(), 0);
    }
}
