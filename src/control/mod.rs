//! The provider's remedies, applied at run time: bans by CIDR, content
//! blocks, app suspensions; and the registry of live sessions they act on.
//!
//! [`Remedies`] is plain data with the decisions on it (no I/O), so the
//! admin API, the state file and the session stages all share one copy of
//! the rules. [`state`] keeps it on disk; [`sessions`] tracks who is live.

pub mod changes;
pub mod remedies;
pub mod sessions;
pub mod state;

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::glob;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    unix(SystemTime::now())
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Everything the operator decided at run time. Serialized as the state
/// file, so field names are an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remedies {
    #[serde(default)]
    pub bans: Vec<ManualBan>,
    #[serde(default)]
    pub blocks: Vec<ContentBlock>,
    #[serde(default)]
    pub suspensions: Vec<Suspension>,
    /// Upstream servers taken out of rotation for maintenance.
    #[serde(default)]
    pub drained: Vec<Drained>,
    /// Fleet mode: remedies lifted, remembered so that a copy of the
    /// lifted one elsewhere (Redis, another guard's state) does not bring
    /// it back. Empty without `[fleet]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tombstones: Vec<Tombstone>,
}

/// An upstream server that takes no new sessions; live ones stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drained {
    pub upstream: String,
    pub server: String,
    pub created: u64,
}

/// A prefix the operator banned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualBan {
    pub cidr: IpNet,
    /// Unix time the ban ends; `None`: until lifted.
    pub until: Option<u64>,
    pub reason: String,
    pub created: u64,
    /// Fleet mode: when and by which guard it was made (the later change
    /// to the same remedy wins). Absent without `[fleet]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<Stamp>,
}

/// Streams of an app that may not be published or played.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentBlock {
    pub app: String,
    /// A glob on the stream name, without its query string.
    pub stream: String,
    pub reason: String,
    pub created: u64,
    /// Fleet mode: when and by which guard it was made (the later change
    /// to the same remedy wins). Absent without `[fleet]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<Stamp>,
}

/// An app whose new connects are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    pub app: String,
    pub reason: String,
    pub created: u64,
    /// Fleet mode: when and by which guard it was made (the later change
    /// to the same remedy wins). Absent without `[fleet]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<Stamp>,
}

/// When, and by which guard, a change was made. Ordered by time, then by
/// guard name, so two guards always agree on which of two changes is the
/// later one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub guard: String,
}

impl Stamp {
    /// The stamp as Redis compares it: as a string, byte by byte, in the
    /// same order as the stamps themselves.
    pub fn sortable(&self) -> String {
        format!("{:020}|{}", self.at_ms, self.guard)
    }
}

/// What a change is to: one ban, one block, one suspension.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RemedyKey {
    Ban { cidr: IpNet },
    Block { app: String, stream: String },
    Suspension { app: String },
}

impl RemedyKey {
    /// The key as a Redis hash field: its JSON.
    pub fn field(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A remedy lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    pub key: RemedyKey,
    pub stamp: Stamp,
    /// Unix time after which it may be forgotten; `None`: never (the
    /// lifting of a ban that had no end).
    pub until: Option<u64>,
}

impl ManualBan {
    pub fn active(&self, now: u64) -> bool {
        self.until.is_none_or(|u| u > now)
    }

    /// Whether the ban is in force for `ip` at `now` (Unix seconds).
    pub fn covers(&self, ip: IpAddr, now: u64) -> bool {
        self.active(now) && self.cidr.contains(&ip)
    }
}

impl ContentBlock {
    /// Whether the block covers `stream` (no query string) in `app`.
    pub fn matches(&self, app: &str, stream: &str) -> bool {
        self.app == app && glob::matches(&self.stream, stream)
    }
}

impl Remedies {
    /// The drained servers as (upstream, server) pairs.
    pub fn drained_pairs(&self) -> Vec<(String, String)> {
        self.drained
            .iter()
            .map(|d| (d.upstream.clone(), d.server.clone()))
            .collect()
    }

    /// Drains `server` of `upstream`; false if it already was.
    pub fn drain(&mut self, upstream: &str, server: &str, now: u64) -> bool {
        if self
            .drained
            .iter()
            .any(|d| d.upstream == upstream && d.server == server)
        {
            return false;
        }
        self.drained.push(Drained {
            upstream: upstream.to_string(),
            server: server.to_string(),
            created: now,
        });
        true
    }

    /// Puts `server` of `upstream` back in rotation; false if it was not
    /// drained.
    pub fn undrain(&mut self, upstream: &str, server: &str) -> bool {
        let before = self.drained.len();
        self.drained
            .retain(|d| !(d.upstream == upstream && d.server == server));
        self.drained.len() != before
    }

    pub fn suspension(&self, app: &str) -> Option<&Suspension> {
        self.suspensions.iter().find(|s| s.app == app)
    }

    /// Adds or replaces the ban on exactly `ban.cidr`.
    pub fn add_ban(&mut self, ban: ManualBan) {
        self.bans.retain(|b| b.cidr != ban.cidr);
        self.bans.push(ban);
    }

    /// Lifts the ban on exactly `cidr`; false if there was none.
    pub fn remove_ban(&mut self, cidr: &IpNet) -> bool {
        let before = self.bans.len();
        self.bans.retain(|b| b.cidr != *cidr);
        self.bans.len() != before
    }

    /// Adds or replaces the block on exactly (`app`, `stream`).
    pub fn add_block(&mut self, block: ContentBlock) {
        self.blocks
            .retain(|b| !(b.app == block.app && b.stream == block.stream));
        self.blocks.push(block);
    }

    pub fn remove_block(&mut self, app: &str, stream: &str) -> bool {
        let before = self.blocks.len();
        self.blocks
            .retain(|b| !(b.app == app && b.stream == stream));
        self.blocks.len() != before
    }

    pub fn suspend(&mut self, suspension: Suspension) {
        self.suspensions.retain(|s| s.app != suspension.app);
        self.suspensions.push(suspension);
    }

    pub fn resume(&mut self, app: &str) -> bool {
        let before = self.suspensions.len();
        self.suspensions.retain(|s| s.app != app);
        self.suspensions.len() != before
    }

    /// Drops bans that ended; true if any did.
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.bans.len();
        self.bans.retain(|b| b.active(now));
        self.bans.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(cidr: &str, until: Option<u64>) -> ManualBan {
        ManualBan {
            cidr: cidr.parse().unwrap(),
            until,
            reason: "test".into(),
            created: 0,
            stamp: None,
        }
    }

    #[test]
    fn bans_cover_their_prefix_until_they_end() {
        let mut r = Remedies::default();
        r.add_ban(ban("192.0.2.0/24", Some(100)));
        r.add_ban(ban("2001:db8::/32", None));
        let banned = |r: &Remedies, ip: &str, now| {
            let ip = ip.parse::<IpAddr>().unwrap();
            r.bans.iter().any(|b| b.covers(ip, now))
        };
        assert!(banned(&r, "192.0.2.7", 99));
        assert!(!banned(&r, "192.0.2.7", 100));
        assert!(!banned(&r, "192.0.3.7", 0));
        assert!(banned(&r, "2001:db8::1", u64::MAX));
        assert!(r.expire(100));
        assert_eq!(r.bans.len(), 1);
        assert!(r.remove_ban(&"2001:db8::/32".parse().unwrap()));
        assert!(!r.remove_ban(&"2001:db8::/32".parse().unwrap()));
    }

    #[test]
    fn a_second_ban_on_the_same_prefix_replaces_the_first() {
        let mut r = Remedies::default();
        r.add_ban(ban("192.0.2.0/24", Some(100)));
        r.add_ban(ban("192.0.2.0/24", None));
        assert_eq!(r.bans, vec![ban("192.0.2.0/24", None)]);
    }

    #[test]
    fn blocks_match_app_and_glob_case_sensitively() {
        let mut r = Remedies::default();
        let block = |stream: &str| ContentBlock {
            app: "live".into(),
            stream: stream.into(),
            reason: "dmca".into(),
            created: 0,
            stamp: None,
        };
        let blocked = |r: &Remedies, app, stream| r.blocks.iter().any(|b| b.matches(app, stream));
        r.add_block(block("film-*"));
        r.add_block(block("film-*"));
        assert_eq!(r.blocks.len(), 1);
        assert!(blocked(&r, "live", "film-1"));
        assert!(!blocked(&r, "live", "Film-1"));
        assert!(!blocked(&r, "other", "film-1"));
        assert!(r.remove_block("live", "film-*"));
        assert!(!blocked(&r, "live", "film-1"));
    }

    #[test]
    fn suspensions_are_per_app() {
        let mut r = Remedies::default();
        r.suspend(Suspension {
            app: "live".into(),
            reason: "abuse".into(),
            created: 0,
            stamp: None,
        });
        assert!(r.suspension("live").is_some());
        assert!(r.suspension("vod").is_none());
        assert!(r.resume("live"));
        assert!(!r.resume("live"));
    }
}
