//! The wire between the model and the contract: every conversion of the daemon's types
//! (protocols, addresses, endpoints, a Service port, a new flow) into the WIT types plugins
//! receive. Nothing else in the daemon builds a WIT record by hand.

use std::net::{IpAddr, SocketAddr};

pub use super::bindings::types;
use super::chain::Chain;
use crate::model::{Backend, Family, Frontend, Protocol, TrafficPolicy};

/// The WIT protocol of a model protocol.
pub fn protocol(p: Protocol) -> types::Protocol {
    match p {
        Protocol::Tcp => types::Protocol::Tcp,
        Protocol::Udp => types::Protocol::Udp,
    }
}

/// An address in the contract's form (IPv4-mapped IPv6 halves).
pub fn address(ip: IpAddr) -> types::Address {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let bits = u128::from(v6);
    types::Address {
        hi: (bits >> 64) as u64,
        lo: bits as u64,
    }
}

/// The endpoint list in the contract's form (only when endpoints change). Every endpoint has
/// weight 1 until Kubernetes gives endpoints weights; a missing zone is "".
pub fn backends(list: &[Backend]) -> Vec<types::Backend> {
    list.iter()
        .map(|b| types::Backend {
            address: address(b.addr.ip()),
            port: b.addr.port(),
            node_local: b.node_local,
            zone: b.zone.as_deref().unwrap_or("").to_string(),
            ready: b.ready,
            serving: b.serving,
            terminating: b.terminating,
            weight: 1,
        })
        .collect()
}

/// What `configure` is told about one address family of `chain`'s Service port.
pub fn service(chain: &Chain, family: Family) -> types::Service {
    types::Service {
        handle: chain.handle(family),
        namespace: chain.namespace.clone(),
        name: chain.name.clone(),
        port_name: chain.port_name.clone(),
        node_port: chain.node_port,
        protocol: protocol(chain.protocol),
        ipv6: family == Family::V6,
        local_traffic_policy: chain.local,
    }
}

/// What a probe's `configure` is told about one address family of `fe` (handles 0 and 1 of
/// a fresh probe instance): the same identity [`service`] gives the workers.
pub fn probe_service(fe: &Frontend, family: Family) -> types::Service {
    types::Service {
        handle: u32::from(family == Family::V6),
        namespace: fe.service.namespace.clone(),
        name: fe.service.name.clone(),
        port_name: fe.port_name.clone(),
        node_port: fe.key.node_port,
        protocol: protocol(fe.key.protocol),
        ipv6: family == Family::V6,
        local_traffic_policy: fe.policy == TrafficPolicy::Local,
    }
}

/// The flow record of a new flow: `handle` is the chain's handle for the flow's family
/// ([`Chain::handle`]), `client` and `node` the addresses of its first packet, `id` the
/// daemon-wide flow number and `hash` the host-computed flow hash (of the affinity key when
/// there is one). Fixed-size data only: this is built once per new flow.
pub fn flow(
    handle: u32,
    proto: Protocol,
    client: SocketAddr,
    node: SocketAddr,
    id: u64,
    hash: u64,
) -> types::Flow {
    types::Flow {
        id,
        handle,
        protocol: protocol(proto),
        client: address(client.ip()),
        client_port: client.port(),
        node: address(node.ip()),
        node_port: node.port(),
        hash,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn same(a: types::Address, b: types::Address) -> bool {
        (a.hi, a.lo) == (b.hi, b.lo)
    }

    #[test]
    fn addresses_are_v4_mapped_halves() {
        let a = address("198.18.0.2".parse().unwrap());
        assert_eq!(a.hi, 0);
        assert_eq!(a.lo, 0x0000_ffff_c612_0002);
        let b = address("2001:db8::1".parse().unwrap());
        assert_eq!(b.hi, 0x2001_0db8_0000_0000);
        assert_eq!(b.lo, 1);
    }

    #[test]
    fn protocols_map_one_to_one() {
        assert_eq!(protocol(Protocol::Tcp), types::Protocol::Tcp);
        assert_eq!(protocol(Protocol::Udp), types::Protocol::Udp);
    }

    #[test]
    fn backends_keep_order_conditions_and_zone() {
        let mut far = Backend::ready("[2001:db8::7]:9090".parse().unwrap());
        far.zone = Some(Arc::from("zone-b"));
        far.ready = false;
        far.terminating = true;
        far.node_local = true;
        let list = [Backend::ready("198.18.0.5:8080".parse().unwrap()), far];
        let wire = backends(&list);
        assert_eq!(wire.len(), 2);
        let (a, b) = (&wire[0], &wire[1]);
        assert!(same(a.address, address("198.18.0.5".parse().unwrap())));
        assert_eq!(a.port, 8080);
        assert_eq!(a.zone, "", "no zone is the empty string");
        assert!(a.ready && a.serving && !a.terminating && !a.node_local);
        assert_eq!(a.weight, 1);
        assert!(same(b.address, address("2001:db8::7".parse().unwrap())));
        assert_eq!(b.port, 9090);
        assert_eq!(b.zone, "zone-b");
        assert!(!b.ready && b.serving && b.terminating && b.node_local);
        assert_eq!(b.weight, 1);
    }

    #[test]
    fn flow_carries_tuple_id_hash_and_handle() {
        let client: SocketAddr = "198.18.3.4:40001".parse().unwrap();
        let node: SocketAddr = "198.18.255.1:30080".parse().unwrap();
        let f = flow(7, Protocol::Udp, client, node, 42, 0xdead_beef);
        assert_eq!(f.handle, 7);
        assert_eq!(f.protocol, types::Protocol::Udp);
        assert!(same(f.client, address(client.ip())));
        assert_eq!(f.client_port, 40001);
        assert!(same(f.node, address(node.ip())));
        assert_eq!(f.node_port, 30080);
        assert_eq!(f.id, 42);
        assert_eq!(f.hash, 0xdead_beef);
        let v6 = flow(
            8,
            Protocol::Tcp,
            "[2001:db8::1]:5".parse().unwrap(),
            "[2001:db8::2]:30080".parse().unwrap(),
            1,
            2,
        );
        assert_eq!(v6.client.lo, 1);
        assert_eq!(v6.node.lo, 2);
        assert_eq!(v6.protocol, types::Protocol::Tcp);
    }
}
