//! The guard's nftables table, as the `nftables` crate's JSON objects: built
//! here without running anything, applied by [`super::nft`].
//!
//! ```text
//! table inet rtmp_guard {
//!     set banned_ipv4 { type ipv4_addr; flags interval, timeout; }
//!     set banned_ipv6 { type ipv6_addr; flags interval, timeout; }
//!     chain input {
//!         type filter hook input priority -10; policy accept;
//!         tcp dport { 1935, 443 } tcp flags & (fin|syn|rst|ack) == syn ip saddr @banned_ipv4 counter reject with tcp reset
//!         tcp dport { 1935, 443 } tcp flags & (fin|syn|rst|ack) == syn ip6 saddr @banned_ipv6 counter reject with tcp reset
//!     }
//! }
//! ```
//!
//! The rules match a connection's first packet (a SYN without ACK) to the
//! guard's own ports only: sessions already relaying from a newly banned
//! prefix go on, and nothing else on the machine is touched. No conntrack
//! is needed. The chain's policy is accept: other tables decide the rest.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{self, Expression, NamedExpression};
use nftables::schema::{self, FlushObject, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{self, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::sync::{Diff, Expiry};
use crate::config::KernelAction;

/// The set of each family, in [`crate::metrics::family::ALL`] order.
pub const SETS: [&str; 2] = ["banned_ipv4", "banned_ipv6"];
/// The base chain.
pub const CHAIN: &str = "input";
/// Before the usual filter chains (priority 0), so a refused SYN costs
/// them nothing.
pub const PRIORITY: i32 = -10;

/// The table the guard owns, and what its rules refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub table: String,
    /// The guard's listen ports, RTMP and RTMPS.
    pub ports: Vec<u16>,
    pub action: KernelAction,
}

fn family_of(prefix: &IpNet) -> usize {
    match prefix {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

impl Spec {
    fn table(&self) -> schema::Table<'static> {
        schema::Table {
            family: NfFamily::INet,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }
    }

    fn set(&self, family: usize, elem: Option<Vec<Expression<'static>>>) -> schema::Set<'static> {
        schema::Set {
            family: NfFamily::INet,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(SETS[family]),
            set_type: schema::SetTypeValue::Single(if family == 0 {
                schema::SetType::Ipv4Addr
            } else {
                schema::SetType::Ipv6Addr
            }),
            flags: Some(HashSet::from([
                schema::SetFlag::Interval,
                schema::SetFlag::Timeout,
            ])),
            elem: elem.map(Cow::Owned),
            ..schema::Set::default()
        }
    }

    fn chain(&self) -> schema::Chain<'static> {
        schema::Chain {
            family: NfFamily::INet,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(CHAIN),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Input),
            prio: Some(PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..schema::Chain::default()
        }
    }

    /// The rule refusing `family`'s set on the guard's ports.
    fn rule(&self, family: usize) -> schema::Rule<'static> {
        let field = |protocol: &'static str, field: &'static str| {
            Expression::Named(NamedExpression::Payload(expr::Payload::PayloadField(
                expr::PayloadField {
                    protocol: Cow::Borrowed(protocol),
                    field: Cow::Borrowed(field),
                },
            )))
        };
        let ports = match self.ports.as_slice() {
            [one] => Expression::Number(u32::from(*one)),
            many => Expression::Named(NamedExpression::Set(
                many.iter()
                    .map(|p| expr::SetItem::Element(Expression::Number(u32::from(*p))))
                    .collect(),
            )),
        };
        let is = |left, right| {
            Statement::Match(stmt::Match {
                left,
                right,
                op: stmt::Operator::EQ,
            })
        };
        let flag = |f: &'static str| Expression::String(Cow::Borrowed(f));
        let first_packet = Expression::BinaryOperation(Box::new(expr::BinaryOperation::AND(
            field("tcp", "flags"),
            Expression::List(vec![flag("fin"), flag("syn"), flag("rst"), flag("ack")]),
        )));
        let saddr = field(if family == 0 { "ip" } else { "ip6" }, "saddr");
        let verdict = match self.action {
            KernelAction::Reset => Statement::Reject(Some(stmt::Reject::new(
                Some(stmt::RejectType::TCPReset),
                None,
            ))),
            KernelAction::Drop => Statement::Drop(Some(stmt::Drop {})),
        };
        schema::Rule {
            family: NfFamily::INet,
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Borrowed(CHAIN),
            expr: Cow::Owned(vec![
                is(field("tcp", "dport"), ports),
                is(first_packet, flag("syn")),
                is(
                    saddr,
                    Expression::String(Cow::Owned(format!("@{}", SETS[family]))),
                ),
                Statement::Counter(stmt::Counter::Anonymous(Some(
                    stmt::AnonymousCounter::default(),
                ))),
                verdict,
            ]),
            ..schema::Rule::default()
        }
    }

    fn elements(&self, family: usize, items: Vec<Expression<'static>>) -> NfListObject<'static> {
        NfListObject::Element(schema::Element {
            family: NfFamily::INet,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(SETS[family]),
            elem: Cow::Owned(items),
        })
    }
}

/// A prefix as nft writes it: the bare address for a single host.
fn value(prefix: &IpNet) -> Expression<'static> {
    let addr = Expression::String(Cow::Owned(prefix.addr().to_string()));
    if prefix.prefix_len() == prefix.max_prefix_len() {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(expr::Prefix {
            addr: Box::new(addr),
            len: u32::from(prefix.prefix_len()),
        }))
    }
}

/// A set element: the prefix, with its timeout when it has an end.
fn element(prefix: &IpNet, expiry: Expiry, now: Instant) -> Expression<'static> {
    match expiry.timeout_secs(now) {
        None => value(prefix),
        Some(timeout) => Expression::Named(NamedExpression::Elem(expr::Elem {
            val: Box::new(value(prefix)),
            timeout: Some(timeout),
            ..expr::Elem::default()
        })),
    }
}

/// `elements` split by family, as set elements.
fn by_family<'a>(
    elements: impl IntoIterator<Item = (&'a IpNet, Expiry)>,
    now: Instant,
) -> [Vec<Expression<'static>>; 2] {
    let mut out = [Vec::new(), Vec::new()];
    for (prefix, expiry) in elements {
        out[family_of(prefix)].push(element(prefix, expiry, now));
    }
    out
}

/// The whole table in one transaction, holding `elements`. A table of that
/// name left from an earlier run (a crash) is deleted first, in the same
/// transaction: adding a table that exists is no error, so the take-over
/// works whether or not it is there.
pub fn create(spec: &Spec, elements: &BTreeMap<IpNet, Expiry>, now: Instant) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(spec.table()));
    batch.delete(NfListObject::Table(spec.table()));
    batch.add(NfListObject::Table(spec.table()));
    let [v4, v6] = by_family(elements.iter().map(|(p, e)| (p, *e)), now);
    for (family, items) in [v4, v6].into_iter().enumerate() {
        let items = (!items.is_empty()).then_some(items);
        batch.add(NfListObject::Set(Box::new(spec.set(family, items))));
    }
    batch.add(NfListObject::Chain(spec.chain()));
    for family in 0..2 {
        batch.add(NfListObject::Rule(spec.rule(family)));
    }
    batch.to_nftables()
}

/// Both sets emptied and filled with `elements`, in one transaction; the
/// rules and their counters stay.
pub fn refill(spec: &Spec, elements: &BTreeMap<IpNet, Expiry>, now: Instant) -> Nftables<'static> {
    let mut batch = Batch::new();
    let [v4, v6] = by_family(elements.iter().map(|(p, e)| (p, *e)), now);
    for (family, items) in [v4, v6].into_iter().enumerate() {
        batch.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(
            spec.set(family, None),
        ))));
        if !items.is_empty() {
            batch.add(spec.elements(family, items));
        }
    }
    batch.to_nftables()
}

/// `diff` in one transaction: deletions first, so a prefix whose end
/// changed is deleted and added again.
pub fn update(spec: &Spec, diff: &Diff, now: Instant) -> Nftables<'static> {
    let mut batch = Batch::new();
    let mut gone = [Vec::new(), Vec::new()];
    for prefix in &diff.delete {
        gone[family_of(prefix)].push(value(prefix));
    }
    for (family, items) in gone.into_iter().enumerate() {
        if !items.is_empty() {
            batch.delete(spec.elements(family, items));
        }
    }
    let came = by_family(diff.add.iter().map(|(p, e)| (p, *e)), now);
    for (family, items) in came.into_iter().enumerate() {
        if !items.is_empty() {
            batch.add(spec.elements(family, items));
        }
    }
    batch.to_nftables()
}

/// Deletes the table, its sets, chain and counters.
pub fn delete(spec: &Spec) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.delete(NfListObject::Table(spec.table()));
    batch.to_nftables()
}

/// What a listing of the table says, by family.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Packets the family's rule refused (its counter).
    pub refused: [u64; 2],
    /// Elements in the family's set.
    pub entries: [u64; 2],
}

/// Reads the counters and set sizes from `nft -j list table inet NAME`.
pub fn stats(listing: &Nftables<'_>) -> Stats {
    let mut out = Stats::default();
    for object in listing.objects.iter() {
        match object {
            NfObject::ListObject(NfListObject::Set(set)) => {
                if let Some(family) = SETS.iter().position(|s| *s == set.name) {
                    out.entries[family] = set.elem.as_ref().map_or(0, |e| e.len() as u64);
                }
            }
            NfObject::ListObject(NfListObject::Rule(rule)) => {
                let family = rule.expr.iter().find_map(|s| match s {
                    Statement::Match(m) => match &m.right {
                        Expression::String(r) => {
                            SETS.iter().position(|s| r.strip_prefix('@') == Some(*s))
                        }
                        _ => None,
                    },
                    _ => None,
                });
                let packets = rule.expr.iter().find_map(|s| match s {
                    Statement::Counter(stmt::Counter::Anonymous(Some(c))) => c.packets,
                    _ => None,
                });
                if let (Some(family), Some(packets)) = (family, packets) {
                    out.refused[family] = packets as u64;
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(action: KernelAction) -> Spec {
        Spec {
            table: "rtmp_guard".to_string(),
            ports: vec![1935, 443],
            action,
        }
    }

    fn json(n: &Nftables<'_>) -> serde_json::Value {
        serde_json::to_value(n).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn the_table_is_taken_over_then_built_with_its_sets_chain_and_rules() {
        let now = Instant::now();
        let elements = BTreeMap::from([
            (
                net("192.0.2.7/32"),
                Expiry::At(now + Duration::from_secs(600)),
            ),
            (net("198.51.100.0/24"), Expiry::Never),
        ]);
        let j = json(&create(&spec(KernelAction::Reset), &elements, now));
        let cmds = j["nftables"].as_array().unwrap();
        let verbs: Vec<String> = cmds
            .iter()
            .map(|c| {
                let (verb, body) = c.as_object().unwrap().iter().next().unwrap();
                let kind = body.as_object().unwrap().keys().next().unwrap();
                format!("{verb} {kind}")
            })
            .collect();
        assert_eq!(
            verbs,
            [
                "add table",
                "delete table",
                "add table",
                "add set",
                "add set",
                "add chain",
                "add rule",
                "add rule"
            ]
        );
        let v4 = &cmds[3]["add"]["set"];
        assert_eq!(v4["name"], "banned_ipv4");
        assert_eq!(v4["type"], "ipv4_addr");
        let mut flags: Vec<&str> = v4["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        flags.sort();
        assert_eq!(flags, ["interval", "timeout"]);
        let elem = v4["elem"].as_array().unwrap();
        assert_eq!(elem[0]["elem"]["val"], "192.0.2.7");
        assert_eq!(elem[0]["elem"]["timeout"], 600);
        assert_eq!(elem[1]["prefix"]["addr"], "198.51.100.0");
        assert_eq!(elem[1]["prefix"]["len"], 24);
        assert!(cmds[4]["add"]["set"].get("elem").is_none());
        let chain = &cmds[5]["add"]["chain"];
        assert_eq!(
            (
                &chain["hook"],
                &chain["type"],
                &chain["prio"],
                &chain["policy"]
            ),
            (
                &"input".into(),
                &"filter".into(),
                &PRIORITY.into(),
                &"accept".into()
            )
        );
        let rule = cmds[7]["add"]["rule"]["expr"].as_array().unwrap();
        assert_eq!(rule[0]["match"]["left"]["payload"]["field"], "dport");
        assert_eq!(
            rule[0]["match"]["right"]["set"],
            serde_json::json!([1935, 443])
        );
        assert_eq!(rule[1]["match"]["right"], "syn");
        assert_eq!(rule[2]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(rule[2]["match"]["right"], "@banned_ipv6");
        assert!(rule[3].get("counter").is_some());
        assert_eq!(rule[4]["reject"]["type"], "tcp reset");
        let drop = json(&create(&spec(KernelAction::Drop), &BTreeMap::new(), now));
        let rule = &drop["nftables"][6]["add"]["rule"]["expr"];
        assert!(rule[4].get("drop").is_some(), "{rule}");
    }

    #[test]
    fn an_update_deletes_before_it_adds_each_family_in_one_command() {
        let now = Instant::now();
        let diff = Diff {
            delete: vec![net("192.0.2.7/32"), net("2001:db8::/64")],
            add: vec![
                (net("192.0.2.7/32"), Expiry::Never),
                (net("192.0.2.8/32"), Expiry::Never),
            ],
        };
        let j = json(&update(&spec(KernelAction::Reset), &diff, now));
        let cmds = j["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0]["delete"]["element"]["name"], "banned_ipv4");
        assert_eq!(cmds[1]["delete"]["element"]["name"], "banned_ipv6");
        assert_eq!(cmds[1]["delete"]["element"]["elem"][0]["prefix"]["len"], 64);
        assert_eq!(
            cmds[2]["add"]["element"]["elem"],
            serde_json::json!(["192.0.2.7", "192.0.2.8"])
        );
    }

    #[test]
    fn a_refill_flushes_both_sets_and_keeps_the_rules() {
        let now = Instant::now();
        let elements = BTreeMap::from([(net("2001:db8::/64"), Expiry::Never)]);
        let j = json(&refill(&spec(KernelAction::Reset), &elements, now));
        let cmds = j["nftables"].as_array().unwrap();
        assert_eq!(cmds[0]["flush"]["set"]["name"], "banned_ipv4");
        assert_eq!(cmds[1]["flush"]["set"]["name"], "banned_ipv6");
        assert_eq!(cmds[2]["add"]["element"]["name"], "banned_ipv6");
        assert_eq!(cmds.len(), 3);
    }

    #[test]
    fn counters_and_set_sizes_are_read_from_a_listing() {
        // As `nft -j list table inet rtmp_guard` prints it.
        let listing = r#"{"nftables": [
          {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "rtmp_guard", "handle": 3}},
          {"set": {"family": "inet", "name": "banned_ipv4", "table": "rtmp_guard", "type": "ipv4_addr", "handle": 1, "flags": ["interval", "timeout"],
                   "elem": [{"elem": {"val": "127.0.0.9", "timeout": 600, "expires": 598}}, {"prefix": {"addr": "198.51.100.0", "len": 24}}]}},
          {"set": {"family": "inet", "name": "banned_ipv6", "table": "rtmp_guard", "type": "ipv6_addr", "handle": 2, "flags": ["interval", "timeout"]}},
          {"chain": {"family": "inet", "table": "rtmp_guard", "name": "input", "handle": 3, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
          {"rule": {"family": "inet", "table": "rtmp_guard", "chain": "input", "handle": 4, "expr": [
             {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 1935}},
             {"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["fin", "syn", "rst", "ack"]]}, "right": "syn"}},
             {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@banned_ipv4"}},
             {"counter": {"packets": 5000000000, "bytes": 300000000000}},
             {"reject": {"type": "tcp reset"}}]}},
          {"rule": {"family": "inet", "table": "rtmp_guard", "chain": "input", "handle": 5, "expr": [
             {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 1935}},
             {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@banned_ipv6"}},
             {"counter": {"packets": 2, "bytes": 120}},
             {"drop": null}]}}
        ]}"#;
        let listing: Nftables = serde_json::from_str(listing).unwrap();
        assert_eq!(
            stats(&listing),
            Stats {
                refused: [5_000_000_000, 2],
                entries: [2, 0],
            }
        );
    }
}
