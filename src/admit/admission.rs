//! The admission tables: who may connect at all, decided from the client's
//! address alone. Address rules, bans, the per-prefix connection rate and
//! concurrency, and the global pending limit, in that order.
//!
//! Everything here decides and counts, with time passed in; nothing does
//! I/O. The admit stage ([`super::admit`]) turns a refusal into a report.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use governor::Quota;
use ipnet::IpNet;

use crate::config::Config;
use crate::control::{unix_now, ManualBan};
use crate::verdict::Reason;

use super::bans::BanList;
use super::prefix::{self, PrefixRule};
use super::table::{AddressTable, Entry};

/// A ban that just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    pub prefix: IpNet,
    pub reason: Reason,
    pub duration: Duration,
}

pub struct Admission {
    /// What the config says; swapped whole on reload.
    rules: ArcSwap<Rules>,
    /// Rate and concurrency state; replaced only when a reload changes
    /// its shape (rate, burst, prefix lengths, size).
    table: ArcSwap<AddressTable>,
    bans: BanList,
    /// Prefixes the operator banned, with when each ban ends.
    manual: ArcSwap<Vec<ManualBan>>,
    pending: Arc<AtomicUsize>,
}

/// The admission settings from one config.
struct Rules {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    rule: PrefixRule,
    max_concurrent: u32,
    max_pending: usize,
    auto_ban: bool,
    threshold: u32,
    window: Duration,
    ban_for: Duration,
    /// What the address table was built from.
    table_shape: (u32, u32, u8, u8, usize),
}

impl Rules {
    fn new(config: &Config) -> Rules {
        let per_ip = &config.limits.per_ip;
        Rules {
            deny: config.access.deny.clone(),
            allow: config.access.allow.clone(),
            trusted_proxies: config.proxy_protocol.trusted.clone(),
            rule: PrefixRule {
                ipv4: per_ip.ipv4_prefix,
                ipv6: per_ip.ipv6_prefix,
            },
            max_concurrent: per_ip.max_concurrent,
            max_pending: config.limits.global.max_pending,
            auto_ban: config.bans.auto,
            threshold: config.bans.threshold,
            window: config.bans.window,
            ban_for: config.bans.duration,
            table_shape: (
                per_ip.connections_per_second,
                per_ip.burst,
                per_ip.ipv4_prefix,
                per_ip.ipv6_prefix,
                per_ip.max_tracked,
            ),
        }
    }

    fn table(&self) -> AddressTable {
        let (rate, burst, _, _, max_tracked) = self.table_shape;
        let one = NonZeroU32::MIN;
        let quota = Quota::per_second(NonZeroU32::new(rate).unwrap_or(one))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(one));
        AddressTable::new(quota, max_tracked)
    }
}

/// One connection counted against `max_pending` until it drops.
pub struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection that was admitted (or, in dry run, would have been
/// refused): it holds the prefix's concurrency slot and, until the
/// client's `connect` is accepted, a pending slot.
pub struct Ticket {
    pub prefix: IpNet,
    entry: Arc<Entry>,
    pending: Option<PendingSlot>,
}

impl Ticket {
    /// The client got past `connect`; it no longer counts as pending.
    pub fn connected(&mut self) {
        self.pending = None;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.entry.concurrent.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(config: &Config) -> Admission {
        let rules = Rules::new(config);
        Admission {
            table: ArcSwap::from_pointee(rules.table()),
            rules: ArcSwap::from_pointee(rules),
            bans: BanList::default(),
            manual: ArcSwap::default(),
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Applies a reloaded config. Rate state starts afresh only if the
    /// table's shape changed; bans and open connections carry over.
    pub fn reconfigure(&self, config: &Config) {
        let rules = Rules::new(config);
        if rules.table_shape != self.rules.load().table_shape {
            self.table.store(Arc::new(rules.table()));
        }
        self.rules.store(Arc::new(rules));
    }

    /// Replaces the operator's bans.
    pub fn set_manual_bans(&self, bans: Vec<ManualBan>) {
        self.manual.store(Arc::new(bans));
    }

    fn manually_banned(&self, client: IpAddr) -> bool {
        let manual = self.manual.load();
        if manual.is_empty() {
            return false;
        }
        let now = unix_now();
        manual.iter().any(|b| b.covers(client, now))
    }

    /// Whether `peer` is a load balancer whose PROXY header is required.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        prefix::in_any(&self.rules.load().trusted_proxies, peer)
    }

    /// Decides on a new connection from `client`. Address rules and bans
    /// are checked first, without touching the address table, so a denied
    /// or banned flood costs a lookup. With `keep_refused` (dry run) a
    /// ticket is returned even for a refusal, so the connection can go on
    /// with its slots counted; dropping a ticket releases them.
    ///
    /// `slot` is a pending slot already reserved at accept (for a trusted
    /// proxy's connection, admitted once its header names the client).
    pub fn admit(
        &self,
        client: IpAddr,
        now: Instant,
        keep_refused: bool,
        slot: Option<PendingSlot>,
    ) -> (Option<Ticket>, Option<Reason>) {
        let rules = self.rules.load();
        let table = self.table.load();
        let prefix = rules.rule.key(client);
        let early = if prefix::in_any(&rules.deny, client)
            || (!rules.allow.is_empty() && !prefix::in_any(&rules.allow, client))
        {
            Some(Reason::IpDenied)
        } else if self.bans.is_banned(&prefix, now) || self.manually_banned(client) {
            Some(Reason::Banned)
        } else {
            None
        };
        if early.is_some() && !keep_refused {
            return (None, early);
        }
        let entry = table.entry(prefix, now);
        let open = entry.concurrent.fetch_add(1, Ordering::Relaxed);
        let (slot, overloaded) = match slot {
            Some(slot) => (slot, false),
            None => self.reserve_pending(),
        };
        let ticket = Ticket {
            prefix,
            entry,
            pending: Some(slot),
        };
        let refusal = early.or(if !table.allow_connection(&prefix) {
            Some(Reason::RateLimited)
        } else if open >= rules.max_concurrent {
            Some(Reason::TooManyConnections)
        } else if overloaded {
            Some(Reason::Overloaded)
        } else {
            None
        });
        (Some(ticket), refusal)
    }

    /// Counts one more pending connection; true in the second place when
    /// that is more than `max_pending` (the slot is still held).
    pub fn reserve_pending(&self) -> (PendingSlot, bool) {
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        (
            PendingSlot(self.pending.clone()),
            before >= self.rules.load().max_pending,
        )
    }

    /// Adds a refusal's score (`points`, from the refused session's config)
    /// to the client's prefix; returns the ban it caused, if any.
    pub fn record(
        &self,
        client: IpAddr,
        reason: Reason,
        points: u32,
        now: Instant,
    ) -> Option<NewBan> {
        let rules = self.rules.load();
        if points == 0 || !rules.auto_ban {
            return None;
        }
        let prefix = rules.rule.key(client);
        if self.bans.is_banned(&prefix, now) {
            return None;
        }
        let entry = self.table.load().entry(prefix, now);
        let mut score = entry.score.lock().unwrap_or_else(|p| p.into_inner());
        if score.add(now, points, rules.window, rules.threshold) < rules.threshold {
            return None;
        }
        score.reset();
        self.bans
            .ban(prefix, now + rules.ban_for, reason)
            .then_some(NewBan {
                prefix,
                reason,
                duration: rules.ban_for,
            })
    }

    /// Periodic upkeep: drops stale address state and expired bans.
    pub fn sweep(&self, now: Instant) {
        self.table.load().sweep(now, self.rules.load().window);
        self.bans.expire(now);
    }

    pub fn tracked_addresses(&self) -> usize {
        self.table.load().len()
    }

    /// Lifts an automatic ban on exactly `prefix`.
    pub fn unban(&self, prefix: &IpNet) -> bool {
        self.bans.unban(prefix)
    }

    pub fn bans(&self) -> &BanList {
        &self.bans
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(extra: &str) -> Admission {
        Admission::new(&Config::parse(extra, "t.toml").unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn denied_and_not_allowed_addresses_are_refused() {
        let a = admission("[access]\ndeny = [\"192.0.2.0/24\"]\n");
        assert_eq!(
            a.admit(ip("192.0.2.9"), Instant::now(), false, None).1,
            Some(Reason::IpDenied)
        );
        assert_eq!(
            a.admit(ip("198.51.100.1"), Instant::now(), false, None).1,
            None
        );
        let a = admission("[access]\nallow = [\"10.0.0.0/8\"]\n");
        assert_eq!(
            a.admit(ip("192.0.2.9"), Instant::now(), false, None).1,
            Some(Reason::IpDenied)
        );
        assert_eq!(a.admit(ip("10.1.2.3"), Instant::now(), false, None).1, None);
    }

    #[test]
    fn connection_rate_is_per_prefix() {
        let a = admission("[limits.per_ip]\nconnections_per_second = 1\nburst = 2\n");
        let now = Instant::now();
        let results: Vec<_> = (0..4)
            .map(|_| a.admit(ip("192.0.2.1"), now, false, None).1)
            .collect();
        assert_eq!(
            results,
            vec![
                None,
                None,
                Some(Reason::RateLimited),
                Some(Reason::RateLimited)
            ]
        );
        assert_eq!(a.admit(ip("192.0.2.2"), now, false, None).1, None);
    }

    #[test]
    fn concurrency_is_per_prefix_and_released_on_drop() {
        let a = admission("[limits.per_ip]\nmax_concurrent = 2\nburst = 100\n");
        let now = Instant::now();
        let (t1, r1) = a.admit(ip("2001:db8::1"), now, false, None);
        let (_t2, r2) = a.admit(ip("2001:db8::2"), now, false, None);
        let (_t3, r3) = a.admit(ip("2001:db8::3"), now, false, None);
        assert_eq!((r1, r2, r3), (None, None, Some(Reason::TooManyConnections)));
        drop(t1);
        drop(_t3);
        assert_eq!(a.admit(ip("2001:db8::4"), now, false, None).1, None);
    }

    #[test]
    fn pending_connections_are_shed_past_max_pending() {
        let a = admission("[limits.global]\nmax_pending = 2\n[limits.per_ip]\nburst = 100\n");
        let now = Instant::now();
        let (t1, _) = a.admit(ip("192.0.2.1"), now, false, None);
        let mut t1 = t1.unwrap();
        let (_t2, _) = a.admit(ip("192.0.2.2"), now, false, None);
        assert_eq!(
            a.admit(ip("192.0.2.3"), now, false, None).1,
            Some(Reason::Overloaded)
        );
        t1.connected();
        assert_eq!(a.pending(), 1);
        assert_eq!(a.admit(ip("192.0.2.4"), now, false, None).1, None);
    }

    #[test]
    fn repeated_refusals_ban_the_prefix_for_the_duration() {
        let a = admission("[bans]\nthreshold = 10\nwindow = \"60s\"\nduration = \"10m\"\n");
        let now = Instant::now();
        let client = ip("2001:db8:1:2::99");
        assert_eq!(
            a.record(
                client,
                Reason::NotRtmp,
                Reason::NotRtmp.default_ban_score(),
                now
            ),
            None
        );
        let ban = a
            .record(
                ip("2001:db8:1:2::7"),
                Reason::ProtocolViolation,
                Reason::ProtocolViolation.default_ban_score(),
                now,
            )
            .unwrap();
        assert_eq!(ban.prefix.to_string(), "2001:db8:1:2::/64");
        assert_eq!(ban.reason, Reason::ProtocolViolation);
        assert_eq!(a.admit(client, now, false, None).1, Some(Reason::Banned));
        assert_eq!(
            a.admit(client, now + Duration::from_secs(601), false, None)
                .1,
            None
        );
    }

    #[test]
    fn scores_outside_the_window_do_not_add_up() {
        let a = admission("[bans]\nthreshold = 10\nwindow = \"60s\"\n");
        let now = Instant::now();
        for i in 0..5 {
            let at = now + Duration::from_secs(61 * i);
            assert_eq!(
                a.record(
                    ip("192.0.2.1"),
                    Reason::NotRtmp,
                    Reason::NotRtmp.default_ban_score(),
                    at
                ),
                None
            );
        }
    }

    #[test]
    fn auto_off_and_zero_scores_never_ban() {
        let a = admission("[bans]\nauto = false\n");
        for _ in 0..100 {
            assert_eq!(
                a.record(
                    ip("192.0.2.1"),
                    Reason::NotRtmp,
                    Reason::NotRtmp.default_ban_score(),
                    Instant::now()
                ),
                None
            );
        }
        let a = admission("");
        for _ in 0..100 {
            assert_eq!(
                a.record(ip("192.0.2.1"), Reason::NotRtmp, 0, Instant::now()),
                None
            );
        }
        let a = admission("");
        for _ in 0..100 {
            assert_eq!(
                a.record(
                    ip("192.0.2.1"),
                    Reason::Overloaded,
                    Reason::Overloaded.default_ban_score(),
                    Instant::now()
                ),
                None
            );
        }
    }
}
