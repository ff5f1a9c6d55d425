//! Admission by client address: only clients inside the configured CIDR ranges get through,
//! like a Service's `loadBalancerSourceRanges`, but enforced at the nodePort.
//!
//! Config: a comma-separated list of CIDRs, IPv4 and IPv6 mixed, e.g.
//! `198.18.0.0/24, 2001:db8::/32`. A bare address means that address alone. Bits set below
//! the prefix length are ignored (`10.1.2.3/8` is `10.0.0.0/8`), as Kubernetes does. An empty
//! config is an error rather than "deny all" or "allow all": either would silently do the
//! opposite of what someone meant. Flows from outside every range are denied with
//! `source-not-allowed`.
use nodeport_plugin::{export, Admission, DenyReason, Flow, HandleMap, Plugin, Service, Verdict};
use std::net::IpAddr;

/// A range in the 128-bit IPv6 space (IPv4 as IPv4-mapped), so one comparison serves both
/// families and an IPv4-mapped IPv6 range also matches IPv4 clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    network: u128,
    mask: u128,
}

impl Range {
    /// Whether `addr` is inside the range.
    pub fn contains(&self, addr: IpAddr) -> bool {
        bits(addr) & self.mask == self.network
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Parses one CIDR (or bare address); the error names the entry.
pub fn parse_range(entry: &str) -> Result<Range, String> {
    let bad = |why: &str| format!("bad CIDR `{entry}`: {why}");
    let (addr, len) = match entry.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (entry, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        None => max,
        Some(l) => match l.parse() {
            Ok(n) if n <= max => n,
            _ => return Err(bad(&format!("prefix length must be 0 to {max}"))),
        },
    };
    let len = len + (128 - max); // an IPv4 prefix sits below the 96 bits of the v4-mapped form
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    Ok(Range {
        network: bits(addr) & mask,
        mask,
    })
}

/// Parses the whole config; an error names the first bad entry.
pub fn parse_ranges(config: &str) -> Result<Vec<Range>, String> {
    let ranges = config
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(parse_range)
        .collect::<Result<Vec<_>, _>>()?;
    if ranges.is_empty() {
        return Err("no ranges: set the config to a comma-separated CIDR list".into());
    }
    Ok(ranges)
}

#[derive(Default)]
pub struct SourceRanges {
    ranges: HandleMap<Vec<Range>>,
}

impl Plugin for SourceRanges {
    fn configure(&mut self, service: &Service, config: &str) -> Result<(), String> {
        self.ranges.insert(service.handle, parse_ranges(config)?);
        Ok(())
    }

    fn forget(&mut self, handle: u32) {
        self.ranges.remove(&handle);
    }
}

impl Admission for SourceRanges {
    fn admit(&mut self, flow: &Flow) -> Verdict {
        match self.ranges.get(&flow.handle) {
            Some(ranges) if ranges.iter().any(|r| r.contains(flow.client)) => Verdict::Allow,
            Some(_) => Verdict::Deny(DenyReason::SourceNotAllowed),
            // never configured for this handle: fail closed
            None => Verdict::Deny(DenyReason::Policy),
        }
    }
}

export!(SourceRanges: admission);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_configs_never_panic() {
        nodeport_plugin::testing::fuzz_configure::<SourceRanges>(20_000);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_v4_and_v6_ranges() {
        let r = parse_ranges("198.18.0.0/24, 2001:db8::/32").unwrap();
        let inside = |a| r.iter().any(|x| x.contains(ip(a)));
        assert!(inside("198.18.0.1"));
        assert!(inside("198.18.0.255"));
        assert!(!inside("198.18.1.0"));
        assert!(inside("2001:db8:ffff::1"));
        assert!(!inside("2001:db9::1"));
        assert!(!inside("::198.18.0.1"));
    }

    #[test]
    fn edges_of_prefix_lengths() {
        assert!(parse_range("0.0.0.0/0").unwrap().contains(ip("255.1.2.3")));
        assert!(!parse_range("0.0.0.0/0")
            .unwrap()
            .contains(ip("2001:db8::1")));
        assert!(parse_range("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(parse_range("10.0.0.7").unwrap().contains(ip("10.0.0.7")));
        assert!(!parse_range("10.0.0.7/32").unwrap().contains(ip("10.0.0.8")));
        assert!(parse_range("10.1.2.3/8")
            .unwrap()
            .contains(ip("10.200.0.1")));
        assert!(parse_range("::ffff:0:0/96")
            .unwrap()
            .contains(ip("192.0.2.1")));
    }

    #[test]
    fn errors_name_the_bad_entry() {
        let e = parse_ranges("10.0.0.0/8, 300.1.1.1/8").unwrap_err();
        assert!(e.contains("`300.1.1.1/8`"), "{e}");
        let e = parse_ranges("10.0.0.0/33").unwrap_err();
        assert!(e.contains("`10.0.0.0/33`") && e.contains("0 to 32"), "{e}");
        assert!(parse_ranges("2001:db8::/129").is_err());
        assert!(parse_ranges("10.0.0.0/x").is_err());
        assert!(parse_ranges(" , ").is_err());
        assert!(parse_ranges("").is_err());
    }

    #[test]
    fn unconfigured_handles_are_denied() {
        let mut p = SourceRanges::default();
        let flow = Flow {
            id: 1,
            handle: 7,
            protocol: nodeport_plugin::Protocol::Tcp,
            client: ip("198.18.0.1"),
            client_port: 40000,
            node: ip("10.0.0.1"),
            node_port: 30080,
            hash: 0,
        };
        assert_eq!(p.admit(&flow), Verdict::Deny(DenyReason::Policy));
        p.ranges.insert(7, parse_ranges("198.18.0.0/24").unwrap());
        assert_eq!(p.admit(&flow), Verdict::Allow);
        let outside = Flow {
            client: ip("203.0.113.9"),
            ..flow
        };
        assert_eq!(
            p.admit(&outside),
            Verdict::Deny(DenyReason::SourceNotAllowed)
        );
        p.forget(7);
        assert!(p.ranges.is_empty());
    }
}
