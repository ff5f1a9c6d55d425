//! The data a plugin is handed and answers with: flows, Services, endpoints, verdicts and
//! affinity keys, as plain Rust types (the WIT types stay behind the SDK).

use std::net::IpAddr;

use crate::mix;
#[cfg(doc)]
use crate::{Admission, Affinity, Plugin, Selection};

/// Transport protocol of a Service port, so one plugin can treat TCP and UDP differently
/// (for example rate-limit UDP datagrams that have no handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP: the flow is an accepted connection.
    Tcp,
    /// UDP: the flow is a new (client, node) datagram conversation.
    Udp,
}

/// A new flow as the host saw its first packet: everything a per-flow decision may use.
///
/// It holds only fixed-size data because it crosses into the plugin once per new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// Unique per daemon run, and the same across the retries of one flow's
    /// [`Selection::select`], so a plugin can tell a retry from a new flow.
    pub id: u64,
    /// The Service port (and address family) the flow is for; keys per-Service state.
    pub handle: u32,
    /// The Service port's protocol.
    pub protocol: Protocol,
    /// The client's address as the node received it (IPv4 as [`IpAddr::V4`]).
    pub client: IpAddr,
    /// The client's source port.
    pub client_port: u16,
    /// The node address the client connected to.
    pub node: IpAddr,
    /// The nodePort.
    pub node_port: u16,
    /// A 64-bit hash of (protocol, client, node), the same on every worker and every run,
    /// or of the affinity key when there is one: hash on this, not on the addresses, so
    /// that every node and worker picks alike.
    pub hash: u64,
}

/// The Service port (one address family of it) a handle names, given to
/// [`Plugin::configure`] so that a plugin can size or label its per-Service state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// The name every later call uses for this Service port; stable while it exists.
    pub handle: u32,
    /// Service namespace, for log lines an operator can act on.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port name ("" when unnamed).
    pub port_name: String,
    /// Its nodePort.
    pub node_port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// True for the IPv6 half of a dual-stack port, so per-family defaults can differ.
    pub ipv6: bool,
    /// externalTrafficPolicy Local: only node-local endpoints will be offered.
    pub local_traffic_policy: bool,
}

/// An endpoint that may take new flows, after the host applied externalTrafficPolicy,
/// topology and the serving/terminating fallbacks as kube-proxy does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Endpoint address (IPv4 as [`IpAddr::V4`]).
    pub addr: IpAddr,
    /// Endpoint (target) port.
    pub port: u16,
    /// On this node: lets a plugin prefer local endpoints.
    pub node_local: bool,
    /// Topology zone of the endpoint ("" when the EndpointSlice does not say).
    pub zone: String,
    /// `conditions.ready`: the host may offer not-ready endpoints when nothing else serves.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// Relative weight; 1 for every endpoint until Kubernetes gives endpoints weights.
    pub weight: u32,
}

impl Backend {
    /// A stable 64-bit hash of the endpoint's identity (address and port).
    ///
    /// Selection state should be keyed by endpoint identity, not by list position: the host
    /// may reorder the list on every change, and a position-keyed plugin would move clients.
    pub fn key_hash(&self) -> u64 {
        let addr = match self.addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let bits = u128::from(addr);
        let h = mix((bits >> 64) as u64) ^ (bits as u64);
        mix(mix(h) ^ u64::from(self.port))
    }
}

/// Why an admission plugin refused a flow. The host uses it as a metric label, so the set is
/// closed: pick the nearest, or [`DenyReason::Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The client address is outside the allowed ranges.
    SourceNotAllowed,
    /// The client or Service is over its rate.
    RateLimited,
    /// The Service is over a concurrency or capacity limit.
    OverCapacity,
    /// Any other policy.
    Policy,
}

/// The answer of [`Admission::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the flow through to affinity and selection.
    Allow,
    /// Refuse it: TCP is reset, the UDP datagram dropped.
    Deny(DenyReason),
}

/// The answer of [`Affinity::affinity_key`]: flows with equal keys go to the same endpoint
/// while the host's entry for the key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The key; the host keeps the key -> endpoint table, so any well-mixed value works.
    pub key: u64,
    /// Entry lifetime in seconds after the last flow that used it; 0 means the Service's
    /// sessionAffinityConfig timeout (or 10800 s).
    pub ttl_seconds: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_depends_on_address_and_port() {
        let b = |addr: &str, port| Backend {
            addr: addr.parse().unwrap(),
            port,
            node_local: false,
            zone: String::new(),
            ready: true,
            serving: true,
            terminating: false,
            weight: 1,
        };
        let base = b("10.0.0.1", 80).key_hash();
        assert_eq!(base, b("10.0.0.1", 80).key_hash());
        assert_ne!(base, b("10.0.0.1", 81).key_hash());
        assert_ne!(base, b("10.0.0.2", 80).key_hash());
        assert_eq!(base, b("::ffff:10.0.0.1", 80).key_hash());
    }
}
