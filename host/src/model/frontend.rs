//! Frontends: the immutable per-(protocol, nodePort) view the dataplane serves. A change to a
//! Service or its slices builds new Frontends for that Service only; workers swap them in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::endpoints::{usable, EndpointSlice, NodeInfo};
use super::service::{
    Family, Protocol, Service, ServiceKey, ServicePort, TargetPort, TrafficPolicy,
};

/// What a listener serves: one protocol and nodePort.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The nodePort.
    pub node_port: u16,
}

impl std::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node_port, self.protocol)
    }
}

/// An endpoint that may take new flows, as plugins and the native selector see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Endpoint address and resolved port.
    pub addr: SocketAddr,
    /// On this node (nodeName == --node-name).
    pub node_local: bool,
    /// Topology zone, when the slice says.
    pub zone: Option<Arc<str>>,
    /// conditions.ready.
    pub ready: bool,
    /// conditions.serving.
    pub serving: bool,
    /// conditions.terminating.
    pub terminating: bool,
}

impl Backend {
    /// A ready, serving endpoint with no zone, not on this node: what benches and tests
    /// mostly need.
    pub fn ready(addr: SocketAddr) -> Self {
        Self {
            addr,
            node_local: false,
            zone: None,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// One Service port as served on this node; immutable once built.
#[derive(Clone, Debug, PartialEq)]
pub struct Frontend {
    /// (protocol, nodePort).
    pub key: FrontendKey,
    /// Owning Service.
    pub service: ServiceKey,
    /// Service port name (empty for an unnamed port).
    pub port_name: String,
    /// Families to listen on.
    pub families: Vec<Family>,
    /// Endpoints for new IPv4 flows, after policy and fallbacks.
    pub v4: Arc<[Backend]>,
    /// Endpoints for new IPv6 flows.
    pub v6: Arc<[Backend]>,
    /// Every serving endpoint (sorted): UDP flows to anything else are cleared.
    pub serving: Arc<[SocketAddr]>,
    /// ClientIP affinity timeout.
    pub affinity: Option<Duration>,
    /// externalTrafficPolicy.
    pub policy: TrafficPolicy,
    /// The Service's WASM plugin chain, as annotated (resolved to loaded plugins by the sync
    /// loop, see `plugin::Chain`).
    pub plugins: Option<Arc<super::PluginSpec>>,
    /// Connections to endpoints start with a PROXY protocol v2 header (TCP only).
    pub proxy_protocol: bool,
    /// Served by every worker, a client's datagrams steered by its address (UDP only).
    pub spread: bool,
}

impl From<&Frontend> for crate::metrics::FrontendLabels {
    /// The labels of a frontend's metric series.
    fn from(fe: &Frontend) -> Self {
        Self {
            service: fe.service.to_string(),
            port: fe.port_name.clone(),
            protocol: fe.key.protocol.as_str().to_string(),
            node_port: fe.key.node_port,
        }
    }
}

impl Frontend {
    /// Endpoints for a new flow of the given family.
    pub fn backends(&self, family: Family) -> &[Backend] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Whether an existing flow to `addr` may continue (UDP flows are cleared otherwise).
    pub fn is_serving(&self, addr: &SocketAddr) -> bool {
        self.serving.binary_search(addr).is_ok()
    }
}

/// Builds the frontends of a Service from its slices. Warnings name the Service, port and
/// slice for anything that could not be resolved (the rest is still served).
pub fn build(
    service: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
) -> (Vec<Frontend>, Vec<String>) {
    let mut warnings = Vec::new();
    let frontends = service
        .ports
        .iter()
        .map(|sp| build_port(service, sp, slices, node, &mut warnings))
        .collect();
    (frontends, warnings)
}

fn build_port(
    service: &Service,
    sp: &ServicePort,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
    warnings: &mut Vec<String>,
) -> Frontend {
    // (endpoint, resolved port), deduplicated: one address may sit in two slices mid-update.
    let mut all: Vec<(SocketAddr, &super::Endpoint)> = Vec::new();
    for slice in slices {
        let port = match &slice.ports {
            Some(ports) => match ports
                .iter()
                .find(|p| p.name == sp.name && p.protocol == sp.protocol)
            {
                Some(p) => p.port,
                None => continue,
            },
            None => match &sp.target_port {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => {
                    warnings.push(format!(
                        "Service {} port {:?}: targetPort {name:?} is a name but EndpointSlice {} lists no ports",
                        service.key, sp.name, slice.name
                    ));
                    continue;
                }
            },
        };
        for ep in &slice.endpoints {
            let addr = SocketAddr::new(ep.addr, port);
            if !all.iter().any(|(a, _)| *a == addr) {
                all.push((addr, ep));
            }
        }
    }
    let mut serving: Vec<SocketAddr> = all
        .iter()
        .filter(|(_, e)| e.serving)
        .map(|(a, _)| *a)
        .collect();
    serving.sort_unstable();
    let picked = usable(&all, |(_, e)| e, service.traffic_policy, node);
    let to_backend = |(addr, e): &(SocketAddr, &super::Endpoint)| Backend {
        addr: *addr,
        node_local: e.node_name.as_deref() == Some(node.name.as_str()),
        zone: e.zone.as_deref().map(Arc::from),
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
    };
    let family_of = |fam: Family| -> Arc<[Backend]> {
        let mut v: Vec<Backend> = picked
            .iter()
            .filter(|(a, _)| Family::of(&a.ip()) == fam)
            .map(|p| to_backend(p))
            .collect();
        v.sort_by_key(|b| b.addr);
        v.into()
    };
    Frontend {
        key: FrontendKey {
            protocol: sp.protocol,
            node_port: sp.node_port,
        },
        service: service.key.clone(),
        port_name: sp.name.clone(),
        families: service.families.clone(),
        v4: family_of(Family::V4),
        v6: family_of(Family::V6),
        serving: serving.into(),
        affinity: service.affinity,
        policy: service.traffic_policy,
        plugins: service.plugins.clone(),
        proxy_protocol: service.proxy_protocol && sp.protocol == Protocol::Tcp,
        spread: service.spread_udp && sp.protocol == Protocol::Udp,
    }
}
