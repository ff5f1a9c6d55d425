//! Conversions between the WIT types of the contract and the SDK's own types.

use std::net::{IpAddr, Ipv6Addr};

use crate::__private::bindings::nodeport::plugin::types as wit;
use crate::{AffinityKey, Backend, DenyReason, Flow, Protocol, Service, Verdict};

fn ip_from_wit(a: wit::Address) -> IpAddr {
    let bits = (u128::from(a.hi) << 64) | u128::from(a.lo);
    Ipv6Addr::from(bits).to_canonical()
}

impl From<wit::Protocol> for Protocol {
    fn from(p: wit::Protocol) -> Self {
        match p {
            wit::Protocol::Tcp => Protocol::Tcp,
            wit::Protocol::Udp => Protocol::Udp,
        }
    }
}

impl From<wit::Flow> for Flow {
    fn from(f: wit::Flow) -> Self {
        Flow {
            id: f.id,
            handle: f.handle,
            protocol: f.protocol.into(),
            client: ip_from_wit(f.client),
            client_port: f.client_port,
            node: ip_from_wit(f.node),
            node_port: f.node_port,
            hash: f.hash,
        }
    }
}

impl From<wit::Service> for Service {
    fn from(s: wit::Service) -> Self {
        Service {
            handle: s.handle,
            namespace: s.namespace,
            name: s.name,
            port_name: s.port_name,
            node_port: s.node_port,
            protocol: s.protocol.into(),
            ipv6: s.ipv6,
            local_traffic_policy: s.local_traffic_policy,
        }
    }
}

impl From<wit::Backend> for Backend {
    fn from(b: wit::Backend) -> Self {
        Backend {
            addr: ip_from_wit(b.address),
            port: b.port,
            node_local: b.node_local,
            zone: b.zone,
            ready: b.ready,
            serving: b.serving,
            terminating: b.terminating,
            weight: b.weight,
        }
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => wit::Verdict::Allow,
            Verdict::Deny(r) => wit::Verdict::Deny(match r {
                DenyReason::SourceNotAllowed => wit::DenyReason::SourceNotAllowed,
                DenyReason::RateLimited => wit::DenyReason::RateLimited,
                DenyReason::OverCapacity => wit::DenyReason::OverCapacity,
                DenyReason::Policy => wit::DenyReason::Policy,
            }),
        }
    }
}

impl From<AffinityKey> for wit::Affinity {
    fn from(k: AffinityKey) -> Self {
        wit::Affinity {
            key: k.key,
            ttl_seconds: k.ttl_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn v4_mapped_addresses_become_v4() {
        let a = wit::Address {
            hi: 0,
            lo: 0x0000_ffff_c612_0001,
        };
        assert_eq!(ip_from_wit(a), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
    }

    #[test]
    fn v6_addresses_keep_both_halves() {
        let a = wit::Address {
            hi: 0x2001_0db8_0000_0000,
            lo: 0x0000_0000_0000_0001,
        };
        assert_eq!(ip_from_wit(a), "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}
