//! Affinity by client subnet: every client of one subnet (by default an IPv4 /24 or an IPv6
//! /64) sticks to one endpoint, which keeps clients behind a pool of NAT addresses, or one
//! IPv6 host using privacy addresses, on the same endpoint.
//!
//! Config, comma-separated `key=value`, all optional:
//! - `v4=N`: IPv4 prefix length, 0 to 32 (default 24).
//! - `v6=N`: IPv6 prefix length, 0 to 128 (default 64).
//! - `ttl=N`: seconds an entry lives after its last flow (default 0: the Service's
//!   sessionAffinityConfig timeout, or 10800 s).
//!
//! Example: `v4=16,v6=48,ttl=300`.
use nodeport_plugin::{
    config, export, mix, Affinity, AffinityKey, Flow, HandleMap, Plugin, Service,
};
use std::net::IpAddr;

/// Parsed configuration of one Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnets {
    /// IPv4 prefix length.
    pub v4: u8,
    /// IPv6 prefix length.
    pub v6: u8,
    /// Entry lifetime in seconds (0: the Service's).
    pub ttl: u32,
}

impl Default for Subnets {
    fn default() -> Self {
        Subnets {
            v4: 24,
            v6: 64,
            ttl: 0,
        }
    }
}

impl Subnets {
    /// Parses a config string; errors name the offending entry.
    pub fn parse(cfg: &str) -> Result<Subnets, String> {
        let mut s = Subnets::default();
        for (key, value) in config::pairs(cfg)? {
            match key {
                "v4" => s.v4 = prefix(key, value, 32)?,
                "v6" => s.v6 = prefix(key, value, 128)?,
                "ttl" => s.ttl = config::number(key, value)?,
                _ => return Err(config::unknown(key, &["v4", "v6", "ttl"])),
            }
        }
        Ok(s)
    }

    /// The affinity key of `client`: a hash of its subnet, tagged with the family and the
    /// prefix length so that no IPv4 and IPv6 subnet share a key.
    pub fn key(&self, client: IpAddr) -> AffinityKey {
        let (bits, len, family) = match client {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, self.v4, 4u64),
            IpAddr::V6(v6) => (u128::from(v6), self.v6, 6u64),
        };
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        let net = bits & mask;
        let tag = (family << 8) | u64::from(len);
        AffinityKey {
            key: mix(mix((net >> 64) as u64 ^ tag) ^ net as u64),
            ttl_seconds: self.ttl,
        }
    }
}

fn prefix(key: &str, value: &str, max: u8) -> Result<u8, String> {
    match value.parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!(
            "`{key}={value}`: expected a prefix length from 0 to {max}"
        )),
    }
}

#[derive(Default)]
pub struct ClientSubnetAffinity {
    ports: HandleMap<Subnets>,
}

impl Plugin for ClientSubnetAffinity {
    fn configure(&mut self, service: &Service, config: &str) -> Result<(), String> {
        self.ports.insert(service.handle, Subnets::parse(config)?);
        Ok(())
    }

    fn forget(&mut self, handle: u32) {
        self.ports.remove(&handle);
    }
}

impl Affinity for ClientSubnetAffinity {
    fn affinity_key(&mut self, flow: &Flow) -> Option<AffinityKey> {
        self.ports.get(&flow.handle).map(|s| s.key(flow.client))
    }
}

export!(ClientSubnetAffinity: affinity);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_configs_never_panic() {
        nodeport_plugin::testing::fuzz_configure::<ClientSubnetAffinity>(20_000);
    }

    fn key(s: &Subnets, a: &str) -> u64 {
        s.key(a.parse().unwrap()).key
    }

    #[test]
    fn defaults_group_v4_24_and_v6_64() {
        let s = Subnets::parse("").unwrap();
        assert_eq!(s, Subnets::default());
        assert_eq!(key(&s, "198.51.100.1"), key(&s, "198.51.100.254"));
        assert_ne!(key(&s, "198.51.100.1"), key(&s, "198.51.101.1"));
        assert_eq!(key(&s, "2001:db8:0:1::1"), key(&s, "2001:db8:0:1:ffff::9"));
        assert_ne!(key(&s, "2001:db8:0:1::1"), key(&s, "2001:db8:0:2::1"));
        assert_eq!(s.key("198.51.100.1".parse().unwrap()).ttl_seconds, 0);
    }

    #[test]
    fn families_never_share_a_key() {
        let s = Subnets::parse("v4=0,v6=0").unwrap();
        assert_eq!(key(&s, "10.0.0.1"), key(&s, "203.0.113.1"));
        assert_ne!(key(&s, "10.0.0.1"), key(&s, "2001:db8::1"));
        let s = Subnets::parse("v4=32,v6=128").unwrap();
        assert_ne!(key(&s, "0.0.0.1"), key(&s, "::1"));
    }

    #[test]
    fn parses_and_rejects_by_name() {
        let s = Subnets::parse("v4=16, v6=48, ttl=300").unwrap();
        assert_eq!((s.v4, s.v6, s.ttl), (16, 48, 300));
        assert_eq!(key(&s, "10.1.0.1"), key(&s, "10.1.255.1"));
        assert!(Subnets::parse("v4=33").unwrap_err().contains("v4=33"));
        assert!(Subnets::parse("v6=129").unwrap_err().contains("v6=129"));
        assert!(Subnets::parse("ttl=-1").unwrap_err().contains("ttl=-1"));
        assert!(Subnets::parse("v5=1").unwrap_err().contains("v5"));
        assert!(Subnets::parse("v4").is_err());
    }
}
