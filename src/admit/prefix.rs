//! Client addresses aggregated to the prefix every limit and ban is keyed
//! on: one IPv4 address (/32) or one IPv6 site (/64) by default, because a
//! single IPv6 client can rotate through 2^64 addresses.

use std::net::IpAddr;

use ipnet::IpNet;

/// How addresses are aggregated (`[limits.per_ip]` prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixRule {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl PrefixRule {
    /// The network `addr` belongs to. IPv4-mapped IPv6 addresses count as
    /// IPv4, so a dual-stack listener cannot be used to dodge the limits.
    pub fn key(&self, addr: IpAddr) -> IpNet {
        let addr = canonical(addr);
        let len = match addr {
            IpAddr::V4(_) => self.ipv4.min(32),
            IpAddr::V6(_) => self.ipv6.min(128),
        };
        // The length is within range, so this cannot fail; fall back to
        // the host itself rather than panic.
        IpNet::new(addr, len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(addr))
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// Whether `addr` is in any of `nets`.
pub fn in_any(nets: &[IpNet], addr: IpAddr) -> bool {
    let addr = canonical(addr);
    nets.iter().any(|n| n.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> PrefixRule {
        PrefixRule { ipv4: 32, ipv6: 64 }
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_key() {
        let a = rule().key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = rule().key("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap());
        let c = rule().key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn ipv4_is_per_host_by_default_and_can_be_widened() {
        assert_eq!(
            rule().key("192.0.2.9".parse().unwrap()).to_string(),
            "192.0.2.9/32"
        );
        let wide = PrefixRule { ipv4: 24, ipv6: 64 };
        assert_eq!(
            wide.key("192.0.2.9".parse().unwrap()).to_string(),
            "192.0.2.0/24"
        );
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let mapped = rule().key("::ffff:192.0.2.9".parse().unwrap());
        assert_eq!(mapped.to_string(), "192.0.2.9/32");
        assert!(in_any(
            &["192.0.2.0/24".parse().unwrap()],
            "::ffff:192.0.2.9".parse().unwrap()
        ));
    }
}
