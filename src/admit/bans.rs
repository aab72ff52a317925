//! Learning bans: every refusal adds its score to the client's prefix, and
//! a prefix whose score within `window` reaches `threshold` is banned for
//! `duration`. Time is passed in, so the logic is tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ipnet::IpNet;

use crate::verdict::Reason;

/// Recent scored events of one prefix.
#[derive(Debug, Default)]
pub struct Score {
    events: VecDeque<(Instant, u32)>,
    total: u32,
}

impl Score {
    /// Adds an event; returns the score within `window` ending at `now`.
    /// At most `threshold` events are kept: every event scores at least 1,
    /// so older ones could never matter.
    pub fn add(&mut self, now: Instant, points: u32, window: Duration, threshold: u32) -> u32 {
        self.expire(now, window);
        if points == 0 {
            return self.total;
        }
        self.events.push_back((now, points));
        self.total = self.total.saturating_add(points);
        while self.events.len() > threshold.max(1) as usize {
            if let Some((_, p)) = self.events.pop_front() {
                self.total = self.total.saturating_sub(p);
            }
        }
        self.total
    }

    /// Forgets the events; called when the prefix is banned.
    pub fn reset(&mut self) {
        self.events.clear();
        self.total = 0;
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(at, p)) = self.events.front() {
            if now.saturating_duration_since(at) < window {
                break;
            }
            self.events.pop_front();
            self.total = self.total.saturating_sub(p);
        }
    }
}

/// One ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub until: Instant,
    /// The refusal that pushed the score over the threshold.
    pub reason: Reason,
}

/// Banned prefixes, keyed exactly as the address table is.
#[derive(Debug, Default)]
pub struct BanList {
    bans: DashMap<IpNet, Ban>,
}

impl BanList {
    /// Whether `prefix` is banned at `now`; an expired ban is removed.
    pub fn is_banned(&self, prefix: &IpNet, now: Instant) -> bool {
        let active = match self.bans.get(prefix) {
            None => return false,
            Some(ban) => ban.until > now,
        };
        if !active {
            self.bans.remove_if(prefix, |_, b| b.until <= now);
        }
        active
    }

    /// Bans `prefix` until `until`; returns false if it already was.
    pub fn ban(&self, prefix: IpNet, until: Instant, reason: Reason) -> bool {
        let mut fresh = true;
        self.bans
            .entry(prefix)
            .and_modify(|b| {
                fresh = b.until <= Instant::now();
                b.until = b.until.max(until);
            })
            .or_insert(Ban { until, reason });
        fresh
    }

    /// Drops expired bans; returns how many remain.
    pub fn expire(&self, now: Instant) -> usize {
        self.bans.retain(|_, b| b.until > now);
        self.bans.len()
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    /// Lifts the ban on exactly `prefix`; false if there was none.
    pub fn unban(&self, prefix: &IpNet) -> bool {
        self.bans.remove(prefix).is_some()
    }

    pub fn list(&self) -> Vec<(IpNet, Ban)> {
        self.bans.iter().map(|e| (*e.key(), *e.value())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn score_counts_only_events_inside_the_window() {
        let t0 = Instant::now();
        let mut s = Score::default();
        assert_eq!(s.add(t0, 5, WINDOW, 10), 5);
        assert_eq!(s.add(t0 + Duration::from_secs(30), 3, WINDOW, 10), 8);
        // The first event leaves the window at t0 + 60 s. (A zero-point
        // event adds nothing: it reads the score at that time.)
        assert_eq!(s.add(t0 + Duration::from_secs(60), 0, WINDOW, 10), 3);
        assert_eq!(s.add(t0 + Duration::from_secs(91), 0, WINDOW, 10), 0);
    }

    #[test]
    fn score_keeps_a_bounded_number_of_events() {
        let t0 = Instant::now();
        let mut s = Score::default();
        for _ in 0..10_000 {
            s.add(t0, 1, WINDOW, 10);
        }
        assert_eq!(s.events.len(), 10);
        assert_eq!(s.add(t0, 0, WINDOW, 10), 10);
    }

    #[test]
    fn zero_point_events_do_not_count() {
        let mut s = Score::default();
        assert_eq!(s.add(Instant::now(), 0, WINDOW, 10), 0);
        assert!(s.events.is_empty());
    }

    #[test]
    fn bans_expire() {
        let list = BanList::default();
        let net: IpNet = "192.0.2.1/32".parse().unwrap();
        let t0 = Instant::now();
        assert!(list.ban(net, t0 + Duration::from_secs(600), Reason::RateLimited));
        assert!(list.is_banned(&net, t0));
        assert!(list.is_banned(&net, t0 + Duration::from_secs(599)));
        assert!(!list.is_banned(&net, t0 + Duration::from_secs(600)));
        assert!(list.is_empty(), "an expired ban is removed when seen");
        list.ban(net, t0 + Duration::from_secs(1), Reason::RateLimited);
        assert_eq!(list.expire(t0 + Duration::from_secs(2)), 0);
    }
}
