//! Changes to the remedies as a fleet of guards exchanges them.
//!
//! Every ban, block and suspension, and every lifting of one, is a
//! [`Change`] to one [`RemedyKey`], stamped with when and by which guard it
//! was made. Guards and Redis may see the same changes in any order, or
//! twice: the one with the later [`Stamp`] wins wherever it lands, so they
//! all end up with the same remedies. A lifting is kept as a
//! [`Tombstone`] until the remedy it lifted would have ended, so that an
//! old copy of it (in a guard that was cut off, or in a state file) never
//! brings it back.
//!
//! Plain data and decisions, no I/O: the fleet task moves changes between
//! Redis and [`super::remedies`], which applies them.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ContentBlock, ManualBan, Remedies, Suspension};
pub use super::{RemedyKey, Stamp, Tombstone};

/// How long the lifting of a block or suspension is remembered: they have
/// no end of their own.
pub const TOMBSTONE_KEEP_SECS: u64 = 7 * 24 * 3600;

/// A remedy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Remedy {
    Ban(ManualBan),
    Block(ContentBlock),
    Suspension(Suspension),
}

impl Remedy {
    pub fn key(&self) -> RemedyKey {
        match self {
            Remedy::Ban(b) => RemedyKey::Ban { cidr: b.cidr },
            Remedy::Block(b) => RemedyKey::Block {
                app: b.app.clone(),
                stream: b.stream.clone(),
            },
            Remedy::Suspension(s) => RemedyKey::Suspension { app: s.app.clone() },
        }
    }

    /// Unix time it ends; `None`: never.
    fn until(&self) -> Option<u64> {
        match self {
            Remedy::Ban(b) => b.until,
            _ => None,
        }
    }
}

/// One change, as it travels between guards and is kept in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub key: RemedyKey,
    pub stamp: Stamp,
    /// The remedy now in force; `None`: lifted.
    pub remedy: Option<Remedy>,
    /// For a lifting: until when it is remembered (see [`Tombstone`]).
    #[serde(default)]
    pub until: Option<u64>,
    /// For a suspension: whether it ends the app's live sessions.
    #[serde(default)]
    pub terminate: bool,
}

/// Why a change from elsewhere is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    #[error("its key and its remedy disagree")]
    KeyMismatch,
    #[error("a ban on {0} is broader than /8 (IPv4) or /32 (IPv6)")]
    TooBroad(IpNet),
    #[error("a block or suspension with an empty app or stream")]
    Empty,
}

/// Whether a ban on `cidr` covers more than a /8 of IPv4 or a /32 of
/// IPv6: refused unless the operator insists through the API.
pub fn too_broad(cidr: &IpNet) -> bool {
    match cidr {
        IpNet::V4(n) => n.prefix_len() < 8,
        IpNet::V6(n) => n.prefix_len() < 32,
    }
}

impl Change {
    /// Checks a change read from Redis or another guard before it is
    /// applied. A ban broader than /8 or /32 is refused from there, even
    /// one a guard was told to make with `force`: Redis is a trust root,
    /// but its contents are checked as if it were not.
    pub fn check(&self) -> Result<(), Unfit> {
        match (&self.key, &self.remedy) {
            (RemedyKey::Ban { cidr }, _) if too_broad(cidr) && self.remedy.is_some() => {
                Err(Unfit::TooBroad(*cidr))
            }
            (RemedyKey::Block { app, stream }, _) if app.is_empty() || stream.is_empty() => {
                Err(Unfit::Empty)
            }
            (RemedyKey::Suspension { app }, _) if app.is_empty() => Err(Unfit::Empty),
            (key, Some(r)) if r.key() != *key => Err(Unfit::KeyMismatch),
            _ => Ok(()),
        }
    }

    /// Whether Redis and the guards may forget it at `now` (Unix seconds):
    /// a ban that ended, a tombstone past its time.
    pub fn expired(&self, now: u64) -> bool {
        let until = match &self.remedy {
            Some(r) => r.until(),
            None => self.until,
        };
        until.is_some_and(|u| u <= now)
    }

    /// A lifting of `key`, which was `lifted` (the remedy in force, if
    /// this guard knew one).
    pub fn lift(key: RemedyKey, stamp: Stamp, lifted: Option<&Remedy>, now: u64) -> Change {
        let until = match (&key, lifted) {
            (RemedyKey::Ban { .. }, Some(r)) => r.until(),
            // A ban this guard did not know: keep the tombstone as long
            // as any ban could have lasted.
            (RemedyKey::Ban { .. }, None) => None,
            _ => Some(now.saturating_add(TOMBSTONE_KEEP_SECS)),
        };
        Change {
            key,
            stamp,
            remedy: None,
            until,
            terminate: false,
        }
    }
}

/// What applying a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The guard already had it, or a later change to the same remedy.
    Stale,
    /// The remedy is now in force.
    Set(Remedy),
    /// The remedy is lifted.
    Lifted(RemedyKey),
}

impl Remedies {
    /// The remedy in force for `key`, with its stamp (an entry made
    /// without one counts as made at its `created` second by no guard).
    pub fn entry(&self, key: &RemedyKey) -> Option<(Remedy, Stamp)> {
        let legacy = |created: u64| Stamp {
            at_ms: created.saturating_mul(1000),
            guard: String::new(),
        };
        match key {
            RemedyKey::Ban { cidr } => self.bans.iter().find(|b| b.cidr == *cidr).map(|b| {
                let s = b.stamp.clone().unwrap_or_else(|| legacy(b.created));
                (Remedy::Ban(b.clone()), s)
            }),
            RemedyKey::Block { app, stream } => self
                .blocks
                .iter()
                .find(|b| b.app == *app && b.stream == *stream)
                .map(|b| {
                    let s = b.stamp.clone().unwrap_or_else(|| legacy(b.created));
                    (Remedy::Block(b.clone()), s)
                }),
            RemedyKey::Suspension { app } => {
                self.suspensions.iter().find(|s| s.app == *app).map(|s| {
                    let st = s.stamp.clone().unwrap_or_else(|| legacy(s.created));
                    (Remedy::Suspension(s.clone()), st)
                })
            }
        }
    }

    /// The latest stamp this guard knows for `key`: its entry's or its
    /// tombstone's.
    pub fn stamp_of(&self, key: &RemedyKey) -> Option<Stamp> {
        let entry = self.entry(key).map(|(_, s)| s);
        let tomb = self
            .tombstones
            .iter()
            .filter(|t| t.key == *key)
            .map(|t| t.stamp.clone())
            .max();
        entry.max(tomb)
    }

    /// Applies `change` if it is later than what this guard knows of its
    /// remedy (last writer wins).
    pub fn apply(&mut self, change: &Change) -> Applied {
        if self
            .stamp_of(&change.key)
            .is_some_and(|known| known >= change.stamp)
        {
            return Applied::Stale;
        }
        self.tombstones.retain(|t| t.key != change.key);
        match &change.remedy {
            Some(remedy) => {
                let mut remedy = remedy.clone();
                match &mut remedy {
                    Remedy::Ban(b) => {
                        b.stamp = Some(change.stamp.clone());
                        self.add_ban(b.clone());
                    }
                    Remedy::Block(b) => {
                        b.stamp = Some(change.stamp.clone());
                        self.add_block(b.clone());
                    }
                    Remedy::Suspension(s) => {
                        s.stamp = Some(change.stamp.clone());
                        self.suspend(s.clone());
                    }
                }
                Applied::Set(remedy)
            }
            None => {
                match &change.key {
                    RemedyKey::Ban { cidr } => {
                        self.remove_ban(cidr);
                    }
                    RemedyKey::Block { app, stream } => {
                        self.remove_block(app, stream);
                    }
                    RemedyKey::Suspension { app } => {
                        self.resume(app);
                    }
                }
                self.tombstones.push(Tombstone {
                    key: change.key.clone(),
                    stamp: change.stamp.clone(),
                    until: change.until,
                });
                Applied::Lifted(change.key.clone())
            }
        }
    }

    /// Every remedy in force and every tombstone, as changes: what this
    /// guard gives Redis when it (re)connects. Ended ones are left out.
    pub fn changes(&self, now: u64) -> Vec<Change> {
        let mut keys: Vec<RemedyKey> = self
            .bans
            .iter()
            .map(|b| RemedyKey::Ban { cidr: b.cidr })
            .collect();
        keys.extend(self.blocks.iter().map(|b| RemedyKey::Block {
            app: b.app.clone(),
            stream: b.stream.clone(),
        }));
        keys.extend(
            self.suspensions
                .iter()
                .map(|s| RemedyKey::Suspension { app: s.app.clone() }),
        );
        let mut out: Vec<Change> = keys
            .into_iter()
            .filter_map(|k| self.entry(&k))
            .map(|(remedy, stamp)| Change {
                key: remedy.key(),
                stamp,
                remedy: Some(remedy),
                until: None,
                terminate: false,
            })
            .collect();
        out.extend(self.tombstones.iter().map(|t| Change {
            key: t.key.clone(),
            stamp: t.stamp.clone(),
            remedy: None,
            until: t.until,
            terminate: false,
        }));
        out.retain(|c| !c.expired(now));
        out
    }

    /// Drops tombstones past their time; true if any were.
    pub fn expire_tombstones(&mut self, now: u64) -> bool {
        let before = self.tombstones.len();
        self.tombstones.retain(|t| t.until.is_none_or(|u| u > now));
        self.tombstones.len() != before
    }
}

/// Whether `remedy`, newly in force, covers a live session from `client`
/// in `app` with `streams`, and ends it.
pub fn ends(remedy: &Remedy, client: IpAddr, app: &str, streams: &[String], now: u64) -> bool {
    match remedy {
        Remedy::Ban(b) => b.covers(client, now),
        Remedy::Block(b) => streams.iter().any(|s| b.matches(app, s)),
        Remedy::Suspension(s) => s.app == app,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(at_ms: u64, guard: &str) -> Stamp {
        Stamp {
            at_ms,
            guard: guard.into(),
        }
    }

    fn ban(cidr: &str, until: Option<u64>, s: Stamp) -> Change {
        let cidr: IpNet = cidr.parse().unwrap();
        Change {
            key: RemedyKey::Ban { cidr },
            stamp: s.clone(),
            remedy: Some(Remedy::Ban(ManualBan {
                cidr,
                until,
                reason: "t".into(),
                created: s.at_ms / 1000,
                stamp: Some(s),
            })),
            until: None,
            terminate: false,
        }
    }

    #[test]
    fn the_later_change_wins_whatever_the_order_it_arrives_in() {
        let set = ban("192.0.2.0/24", None, stamp(1_000, "a"));
        let lift = Change::lift(set.key.clone(), stamp(2_000, "b"), set.remedy.as_ref(), 1);
        let mut one = Remedies::default();
        assert!(matches!(one.apply(&set), Applied::Set(_)));
        assert!(matches!(one.apply(&lift), Applied::Lifted(_)));
        let mut other = Remedies::default();
        assert!(matches!(other.apply(&lift), Applied::Lifted(_)));
        assert_eq!(
            other.apply(&set),
            Applied::Stale,
            "the lifted ban never comes back"
        );
        assert_eq!(one, other);
        assert!(one.bans.is_empty());
        assert_eq!(one.apply(&lift), Applied::Stale, "twice is once");
    }

    #[test]
    fn equal_times_are_ordered_by_guard_name() {
        let a = ban("192.0.2.0/24", Some(50), stamp(1_000, "a"));
        let b = ban("192.0.2.0/24", Some(99), stamp(1_000, "b"));
        let mut r = Remedies::default();
        r.apply(&b);
        assert_eq!(r.apply(&a), Applied::Stale);
        assert_eq!(r.bans[0].until, Some(99));
        assert!(stamp(1_000, "b").sortable() > stamp(1_000, "a").sortable());
        assert!(stamp(999, "z").sortable() < stamp(1_000, "a").sortable());
    }

    #[test]
    fn a_ban_tombstone_lasts_as_long_as_the_ban_would_have() {
        let set = ban("192.0.2.0/24", Some(600), stamp(1_000, "a"));
        let lift = Change::lift(set.key.clone(), stamp(2_000, "a"), set.remedy.as_ref(), 2);
        assert_eq!(lift.until, Some(600));
        let mut r = Remedies::default();
        r.apply(&set);
        r.apply(&lift);
        assert_eq!(r.changes(599).len(), 1);
        assert!(r.changes(600).is_empty());
        assert!(!r.expire_tombstones(599));
        assert!(r.expire_tombstones(600));
        let forever = Change::lift(set.key.clone(), stamp(3_000, "a"), None, 2);
        assert_eq!(forever.until, None);
    }

    #[test]
    fn bans_broader_than_a_slash_8_or_32_are_refused_from_the_fleet() {
        assert!(ban("10.0.0.0/8", None, stamp(1, "a")).check().is_ok());
        assert_eq!(
            ban("10.0.0.0/7", None, stamp(1, "a")).check(),
            Err(Unfit::TooBroad("10.0.0.0/7".parse().unwrap()))
        );
        assert!(ban("2001:db8::/32", None, stamp(1, "a")).check().is_ok());
        assert!(ban("2001::/31", None, stamp(1, "a")).check().is_err());
        assert!(ban("0.0.0.0/0", None, stamp(1, "a")).check().is_err());
        let mut mismatch = ban("192.0.2.0/24", None, stamp(1, "a"));
        mismatch.key = RemedyKey::Ban {
            cidr: "198.51.100.0/24".parse().unwrap(),
        };
        assert_eq!(mismatch.check(), Err(Unfit::KeyMismatch));
    }

    #[test]
    fn entries_without_a_stamp_count_as_made_at_their_second() {
        let mut r = Remedies::default();
        r.add_ban(ManualBan {
            cidr: "192.0.2.0/24".parse().unwrap(),
            until: None,
            reason: "old".into(),
            created: 5,
            stamp: None,
        });
        assert_eq!(
            ban("192.0.2.0/24", None, stamp(4_999, "a"))
                .stamp
                .cmp(&stamp(5_000, "")),
            std::cmp::Ordering::Less
        );
        assert_eq!(
            r.apply(&ban("192.0.2.0/24", None, stamp(4_999, "a"))),
            Applied::Stale
        );
        assert!(matches!(
            r.apply(&ban("192.0.2.0/24", None, stamp(5_001, "a"))),
            Applied::Set(_)
        ));
    }
}
