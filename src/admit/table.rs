//! Per-prefix state: the connection-rate limiter's GCRA cell, open
//! connections, the ban score and when the prefix was last seen.
//!
//! The table is bounded: stale entries are dropped by [`AddressTable::sweep`]
//! and, when `max_tracked` is reached, the least recently seen idle entries
//! go first. An entry with open connections is never evicted, so per-prefix
//! counts stay exact (their number is bounded by `max_connections`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::DefaultClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use super::bans::Score;

/// State of one prefix.
#[derive(Debug)]
pub struct Entry {
    gcra: InMemoryState,
    pub concurrent: AtomicU32,
    /// Milliseconds since the table's epoch.
    last_seen: AtomicU64,
    pub score: Mutex<Score>,
}

impl Entry {
    fn new(now_ms: u64) -> Entry {
        Entry {
            gcra: InMemoryState::default(),
            concurrent: AtomicU32::new(0),
            last_seen: AtomicU64::new(now_ms),
            score: Mutex::new(Score::default()),
        }
    }
}

type Map = DashMap<IpNet, Arc<Entry>>;

/// governor's view of the table: the GCRA cell of each prefix's entry.
#[derive(Debug, Clone)]
pub struct PrefixStore(Arc<Map>);

impl StateStore for PrefixStore {
    type Key = IpNet;

    fn measure_and_replace<T, F, E>(&self, key: &IpNet, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The entry normally exists (the table creates it first); if an
        // eviction raced us, a fresh cell is the right answer.
        let entry = match self.0.get(key) {
            Some(e) => e.value().clone(),
            None => Arc::new(Entry::new(0)),
        };
        entry.gcra.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

pub type Limiter = RateLimiter<IpNet, PrefixStore, DefaultClock, NoOpMiddleware>;

pub struct AddressTable {
    map: Arc<Map>,
    limiter: Limiter,
    max_tracked: usize,
    /// How long an idle entry takes to be indistinguishable from a new one.
    refill: Duration,
    epoch: Instant,
}

impl AddressTable {
    pub fn new(quota: Quota, max_tracked: usize) -> AddressTable {
        let map: Arc<Map> = Arc::new(DashMap::new());
        let refill = quota
            .replenish_interval()
            .saturating_mul(quota.burst_size().get());
        AddressTable {
            limiter: RateLimiter::new(quota, PrefixStore(map.clone()), DefaultClock::default()),
            map,
            max_tracked,
            refill,
            epoch: Instant::now(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The entry for `prefix`, created (evicting if full) when new.
    pub fn entry(&self, prefix: IpNet, now: Instant) -> Arc<Entry> {
        let now_ms = self.ms(now);
        if let Some(e) = self.map.get(&prefix) {
            e.last_seen.store(now_ms, Ordering::Relaxed);
            return e.value().clone();
        }
        if self.map.len() >= self.max_tracked {
            self.evict_oldest();
        }
        self.map
            .entry(prefix)
            .or_insert_with(|| Arc::new(Entry::new(now_ms)))
            .value()
            .clone()
    }

    /// Takes one cell from the prefix's connection-rate bucket.
    pub fn allow_connection(&self, prefix: &IpNet) -> bool {
        self.limiter.check_key(prefix).is_ok()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops entries that no longer hold anything: no open connection,
    /// a full rate bucket and no score left in the ban window.
    pub fn sweep(&self, now: Instant, ban_window: Duration) {
        let now_ms = self.ms(now);
        let keep_ms = self.refill.max(ban_window).as_millis() as u64;
        self.map.retain(|_, e| {
            e.concurrent.load(Ordering::Relaxed) > 0
                || now_ms.saturating_sub(e.last_seen.load(Ordering::Relaxed)) < keep_ms
        });
    }

    /// Removes the least recently seen eighth of the table's idle entries.
    fn evict_oldest(&self) {
        let mut idle: Vec<(u64, IpNet)> = self
            .map
            .iter()
            .filter(|e| e.concurrent.load(Ordering::Relaxed) == 0)
            .map(|e| (e.last_seen.load(Ordering::Relaxed), *e.key()))
            .collect();
        let n = (self.max_tracked / 8).max(1).min(idle.len());
        if n == 0 {
            return;
        }
        if n < idle.len() {
            idle.select_nth_unstable(n);
        }
        for (_, key) in idle.iter().take(n) {
            self.map
                .remove_if(key, |_, e| e.concurrent.load(Ordering::Relaxed) == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota::per_second(NonZeroU32::new(per_second).unwrap())
            .allow_burst(NonZeroU32::new(burst).unwrap())
    }

    fn net(i: u32) -> IpNet {
        IpNet::from(std::net::IpAddr::from(i.to_be_bytes()))
    }

    #[test]
    fn rate_limit_allows_the_burst_then_refuses() {
        let t = AddressTable::new(quota(1, 3), 100);
        let now = Instant::now();
        t.entry(net(1), now);
        t.entry(net(2), now);
        let allowed = (0..10).filter(|_| t.allow_connection(&net(1))).count();
        assert_eq!(allowed, 3);
        assert!(
            t.allow_connection(&net(2)),
            "another prefix has its own bucket"
        );
    }

    #[test]
    fn table_never_grows_past_max_tracked() {
        let t = AddressTable::new(quota(5, 20), 1000);
        let now = Instant::now();
        for i in 0..100_000 {
            t.entry(net(i), now + Duration::from_millis(u64::from(i)));
            assert!(t.len() <= 1000);
        }
        // The newest survive; the oldest went first.
        assert!(t.map.contains_key(&net(99_999)));
        assert!(!t.map.contains_key(&net(0)));
    }

    #[test]
    fn entries_with_open_connections_are_never_evicted() {
        let t = AddressTable::new(quota(5, 20), 16);
        let now = Instant::now();
        let held = t.entry(net(7), now);
        held.concurrent.fetch_add(1, Ordering::Relaxed);
        for i in 100..10_000 {
            t.entry(net(i), now + Duration::from_secs(1));
        }
        assert!(t.map.contains_key(&net(7)));
        t.sweep(now + Duration::from_secs(3600), Duration::from_secs(60));
        assert!(t.map.contains_key(&net(7)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn sweep_right_after_start_keeps_fresh_entries() {
        // An entry seen at the table's epoch is fresh, not "seen at 0".
        let t = AddressTable::new(quota(5, 20), 100);
        t.entry(net(1), t.epoch);
        t.sweep(t.epoch, Duration::from_secs(60));
        assert!(t.map.contains_key(&net(1)));
    }

    #[test]
    fn sweep_drops_stale_entries_only() {
        let t = AddressTable::new(quota(5, 20), 100);
        let now = Instant::now();
        t.entry(net(1), now);
        t.entry(net(2), now + Duration::from_secs(100));
        t.sweep(now + Duration::from_secs(100), Duration::from_secs(60));
        assert!(!t.map.contains_key(&net(1)));
        assert!(t.map.contains_key(&net(2)));
    }
}
