//! What the kernel's ban sets should hold, decided without nftables.
//!
//! The sources are the automatic and operator bans, `[access] deny`,
//! `[proxy_protocol] trusted` and the mode; the answer is a set of
//! prefixes, each with when it leaves by itself. The kernel's sets are
//! interval sets, which refuse overlapping elements, so the plan never
//! holds two prefixes where one covers the other: the wider one goes in,
//! and a narrower one that outlives it is put in when it ends
//! ([`Plan::replan_at`]). Then [`diff`] says which elements to delete and
//! add to turn what the kernel holds into the plan. Time is passed in.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use ipnet::IpNet;

/// When an element leaves the kernel by itself. `At` sorts before `Never`,
/// and two `At`s by time, so the later end is the greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expiry {
    At(Instant),
    Never,
}

impl Expiry {
    pub fn is_over(self, now: Instant) -> bool {
        matches!(self, Expiry::At(t) if t <= now)
    }

    /// The element's timeout in whole seconds, rounded up (the kernel's
    /// unit): `None` for an element that never leaves.
    pub fn timeout_secs(self, now: Instant) -> Option<u32> {
        match self {
            Expiry::Never => None,
            Expiry::At(t) => {
                let left = t.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX))
            }
        }
    }
}

/// One prefix a source refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub prefix: IpNet,
    pub expiry: Expiry,
}

/// Everything the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Automatic and operator bans.
    pub bans: &'a [Wanted],
    /// `[access] deny`: in for good.
    pub deny: &'a [IpNet],
    /// `[proxy_protocol] trusted`: never refused in the kernel.
    pub trusted: &'a [IpNet],
    pub dry_run: bool,
}

/// What the kernel's sets should hold now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Non-overlapping prefixes, each with its end.
    pub elements: BTreeMap<IpNet, Expiry>,
    /// Prefixes kept out of the kernel because they cover, or fall inside,
    /// a trusted proxy's range: the kernel would see only the proxy.
    pub shielded: Vec<IpNet>,
    /// When a prefix left out for a wider one must go in, as that one ends.
    pub replan_at: Option<Instant>,
}

/// Whether two prefixes share an address (of one family, one holds the
/// other's network address).
fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The plan for `inputs` at `now`. Nothing in dry run; expired bans
/// dropped; a prefix named twice keeps its later end.
pub fn plan(inputs: &Inputs<'_>, now: Instant) -> Plan {
    let mut out = Plan::default();
    if inputs.dry_run {
        return out;
    }
    let denies = inputs.deny.iter().map(|&prefix| Wanted {
        prefix,
        expiry: Expiry::Never,
    });
    let mut merged: HashMap<IpNet, Expiry> = HashMap::new();
    for w in inputs.bans.iter().copied().chain(denies) {
        if w.expiry.is_over(now) {
            continue;
        }
        let prefix = w.prefix.trunc();
        if inputs.trusted.iter().any(|t| overlap(t, &prefix)) {
            if !out.shielded.contains(&prefix) {
                out.shielded.push(prefix);
            }
            continue;
        }
        let e = merged.entry(prefix).or_insert(w.expiry);
        *e = (*e).max(w.expiry);
    }
    let mut by_width: Vec<(IpNet, Expiry)> = merged.into_iter().collect();
    by_width.sort_by_key(|(p, _)| (p.prefix_len(), *p));
    for (prefix, expiry) in by_width {
        // Kept prefixes never overlap, so at most one covers this one.
        let cover = (0..prefix.prefix_len())
            .filter_map(|len| IpNet::new(prefix.addr(), len).ok())
            .find_map(|wider| out.elements.get(&wider.trunc()).copied());
        match cover {
            None => {
                out.elements.insert(prefix, expiry);
            }
            Some(wider) if wider >= expiry => {}
            Some(wider) => {
                if let Expiry::At(t) = wider {
                    out.replan_at = Some(out.replan_at.map_or(t, |r| r.min(t)));
                }
            }
        }
    }
    out.shielded.sort();
    out
}

/// Element changes that turn `held` (what the kernel was last given) into
/// `wanted`. Elements of `held` that are over have left the kernel by
/// themselves. A changed end is a delete and an add.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub delete: Vec<IpNet>,
    pub add: Vec<(IpNet, Expiry)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }
}

pub fn diff(
    held: &BTreeMap<IpNet, Expiry>,
    wanted: &BTreeMap<IpNet, Expiry>,
    now: Instant,
) -> Diff {
    let live = |e: &Expiry| !e.is_over(now);
    let delete = held
        .iter()
        .filter(|(p, e)| live(e) && wanted.get(p) != Some(e))
        .map(|(p, _)| *p)
        .collect();
    let add = wanted
        .iter()
        .filter(|(p, e)| held.get(p).filter(|h| live(h)) != Some(e))
        .map(|(p, e)| (*p, *e))
        .collect();
    Diff { delete, add }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ban(s: &str, expiry: Expiry) -> Wanted {
        Wanted {
            prefix: net(s),
            expiry,
        }
    }

    fn inputs<'a>(bans: &'a [Wanted], deny: &'a [IpNet], trusted: &'a [IpNet]) -> Inputs<'a> {
        Inputs {
            bans,
            deny,
            trusted,
            dry_run: false,
        }
    }

    fn names(plan: &Plan) -> Vec<String> {
        plan.elements.keys().map(|p| p.to_string()).collect()
    }

    #[test]
    fn bans_and_denies_go_in_with_their_ends_and_denies_for_good() {
        let now = Instant::now();
        let end = Expiry::At(now + Duration::from_secs(600));
        let bans = [
            ban("192.0.2.7/32", end),
            ban("2001:db8:1:2::/64", Expiry::Never),
        ];
        let deny = [net("198.51.100.0/24")];
        let p = plan(&inputs(&bans, &deny, &[]), now);
        assert_eq!(p.elements[&net("192.0.2.7/32")], end);
        assert_eq!(p.elements[&net("2001:db8:1:2::/64")], Expiry::Never);
        assert_eq!(p.elements[&net("198.51.100.0/24")], Expiry::Never);
        assert_eq!(p.replan_at, None);
    }

    #[test]
    fn nothing_goes_in_the_kernel_in_dry_run() {
        let now = Instant::now();
        let bans = [ban("192.0.2.7/32", Expiry::Never)];
        let deny = [net("198.51.100.0/24")];
        let mut i = inputs(&bans, &deny, &[]);
        i.dry_run = true;
        assert_eq!(plan(&i, now), Plan::default());
    }

    #[test]
    fn a_prefix_covering_or_inside_a_trusted_proxy_never_goes_in() {
        let now = Instant::now();
        let bans = [
            ban("10.0.0.0/8", Expiry::Never),
            ban("10.1.2.3/32", Expiry::Never),
            ban("192.0.2.7/32", Expiry::Never),
        ];
        let deny = [net("0.0.0.0/0"), net("2001:db8::/32")];
        let trusted = [net("10.1.2.0/24")];
        let p = plan(&inputs(&bans, &deny, &trusted), now);
        assert_eq!(names(&p), ["192.0.2.7/32", "2001:db8::/32"]);
        assert_eq!(
            p.shielded,
            [net("0.0.0.0/0"), net("10.0.0.0/8"), net("10.1.2.3/32")]
        );
    }

    #[test]
    fn expired_bans_stay_out_and_a_prefix_named_twice_keeps_its_later_end() {
        let now = Instant::now();
        let soon = Expiry::At(now + Duration::from_secs(5));
        let later = Expiry::At(now + Duration::from_secs(500));
        let bans = [
            ban("192.0.2.1/32", Expiry::At(now)),
            ban("192.0.2.7/32", soon),
            ban("192.0.2.7/32", later),
            // Host bits are dropped: the same prefix.
            ban("198.51.100.9/24", soon),
            ban("198.51.100.0/24", later),
        ];
        let p = plan(&inputs(&bans, &[], &[]), now);
        assert_eq!(names(&p), ["192.0.2.7/32", "198.51.100.0/24"]);
        assert!(p.elements.values().all(|e| *e == later));
    }

    #[test]
    fn overlapping_prefixes_go_in_as_the_widest_and_the_narrower_when_it_ends() {
        let now = Instant::now();
        let at = |s| Expiry::At(now + Duration::from_secs(s));
        let bans = [
            // Inside a deny: redundant for good.
            ban("198.51.100.7/32", at(60)),
            // Inside a ban that ends sooner: in once the wider one ends.
            ban("192.0.2.0/24", at(60)),
            ban("192.0.2.7/32", at(600)),
            // Inside a ban that ends later: redundant.
            ban("192.0.2.9/32", at(30)),
            ban("2001:db8::/48", at(100)),
            ban("2001:db8::1/128", Expiry::Never),
        ];
        let deny = [net("198.51.100.0/24")];
        let p = plan(&inputs(&bans, &deny, &[]), now);
        assert_eq!(
            names(&p),
            ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/48"]
        );
        assert_eq!(p.replan_at, Some(now + Duration::from_secs(60)));
        // At that time, the narrower one goes in.
        let later = now + Duration::from_secs(60);
        let p = plan(&inputs(&bans, &deny, &[]), later);
        assert_eq!(
            names(&p),
            ["192.0.2.7/32", "198.51.100.0/24", "2001:db8::/48"]
        );
        assert_eq!(p.replan_at, Some(now + Duration::from_secs(100)));
        for a in p.elements.keys() {
            for b in p.elements.keys() {
                assert!(a == b || !overlap(a, b), "{a} and {b} overlap");
            }
        }
    }

    #[test]
    fn the_diff_deletes_what_went_adds_what_came_and_renews_a_changed_end() {
        let now = Instant::now();
        let at = |s| Expiry::At(now + Duration::from_secs(s));
        let held: BTreeMap<IpNet, Expiry> = [
            (net("192.0.2.1/32"), at(100)),
            (net("192.0.2.2/32"), at(100)),
            (net("192.0.2.3/32"), at(100)),
            (net("192.0.2.4/32"), Expiry::At(now)),
        ]
        .into();
        let wanted: BTreeMap<IpNet, Expiry> = [
            (net("192.0.2.1/32"), at(100)),
            (net("192.0.2.2/32"), at(900)),
            (net("192.0.2.4/32"), at(50)),
            (net("192.0.2.5/32"), Expiry::Never),
        ]
        .into();
        let d = diff(&held, &wanted, now);
        // .3 was unbanned; .2's ban was extended; .4 had expired (the
        // kernel dropped it), so it is only added.
        assert_eq!(d.delete, [net("192.0.2.2/32"), net("192.0.2.3/32")]);
        assert_eq!(
            d.add,
            [
                (net("192.0.2.2/32"), at(900)),
                (net("192.0.2.4/32"), at(50)),
                (net("192.0.2.5/32"), Expiry::Never)
            ]
        );
        assert!(diff(&wanted, &wanted, now).is_empty());
    }

    #[test]
    fn timeouts_are_whole_seconds_rounded_up() {
        let now = Instant::now();
        assert_eq!(Expiry::Never.timeout_secs(now), None);
        let at = |ms| Expiry::At(now + Duration::from_millis(ms));
        assert_eq!(at(600_000).timeout_secs(now), Some(600));
        assert_eq!(at(599_001).timeout_secs(now), Some(600));
        assert_eq!(at(10).timeout_secs(now), Some(1));
    }
}
