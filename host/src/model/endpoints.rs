//! EndpointSlices and kube-proxy's rules for which endpoints may take new flows.

use std::net::IpAddr;

use super::service::{Family, Protocol, ServiceKey, TrafficPolicy};

/// One named port of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// Name, matched against the Service port name.
    pub name: String,
    /// Protocol of the port.
    pub protocol: Protocol,
    /// The endpoint port number.
    pub port: u16,
}

/// One endpoint of a slice, with its EndpointConditions resolved to booleans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint address (kube-proxy uses the first address only).
    pub addr: IpAddr,
    /// conditions.ready, nil = true.
    pub ready: bool,
    /// conditions.serving, nil = true.
    pub serving: bool,
    /// conditions.terminating, nil = false.
    pub terminating: bool,
    /// nodeName, for externalTrafficPolicy Local.
    pub node_name: Option<String>,
    /// zone, reported to plugins.
    pub zone: Option<String>,
    /// hints.forZones, for topology-aware routing.
    pub hint_zones: Option<Vec<String>>,
    /// hints.forNodes (PreferSameNode).
    pub hint_nodes: Option<Vec<String>>,
}

/// An EndpointSlice reduced to what the proxy reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// The Service it belongs to (label kubernetes.io/service-name).
    pub service: ServiceKey,
    /// Slice name, for messages.
    pub name: String,
    /// addressType; FQDN slices are not read.
    pub family: Family,
    /// Ports; None means "not restricted" (the Service targetPort number applies).
    pub ports: Option<Vec<SlicePort>>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// Where this node is, for Local policy and topology hints.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// --node-name.
    pub name: String,
    /// --node-zone (topology.kubernetes.io/zone), when known.
    pub zone: Option<String>,
}

/// The endpoints that may take new flows, in kube-proxy's order of fallbacks
/// (CategorizeEndpoints): Cluster uses ready endpoints (narrowed by topology hints when every
/// one carries hints that match this node), or serving+terminating ones when none is ready.
/// Local uses this node's ready endpoints, then its serving+terminating ones, then nothing.
pub fn usable<'a, T>(
    endpoints: &'a [T],
    get: impl Fn(&T) -> &Endpoint,
    policy: TrafficPolicy,
    node: &NodeInfo,
) -> Vec<&'a T> {
    let candidates: Vec<&T> = match policy {
        TrafficPolicy::Cluster => endpoints.iter().collect(),
        TrafficPolicy::Local => endpoints
            .iter()
            .filter(|e| get(e).node_name.as_deref() == Some(node.name.as_str()))
            .collect(),
    };
    let ready: Vec<&T> = candidates
        .iter()
        .copied()
        .filter(|e| get(e).ready)
        .collect();
    if !ready.is_empty() {
        if policy == TrafficPolicy::Cluster {
            if let Some(narrowed) = topology_filter(&ready, &get, node) {
                return narrowed;
            }
        }
        return ready;
    }
    candidates
        .into_iter()
        .filter(|e| get(e).serving && get(e).terminating)
        .collect()
}

/// Topology-aware routing: applies only when every ready endpoint has hints and some hint
/// names this node (forNodes) or its zone (forZones); otherwise all endpoints are used.
fn topology_filter<'a, T>(
    ready: &[&'a T],
    get: &impl Fn(&T) -> &Endpoint,
    node: &NodeInfo,
) -> Option<Vec<&'a T>> {
    let for_node = |e: &&T| {
        get(e)
            .hint_nodes
            .as_ref()
            .is_some_and(|n| n.contains(&node.name))
    };
    if ready.iter().all(|e| get(e).hint_nodes.is_some()) {
        let picked: Vec<&T> = ready.iter().copied().filter(for_node).collect();
        if !picked.is_empty() {
            return Some(picked);
        }
    }
    let zone = node.zone.as_deref()?;
    if !ready.iter().all(|e| get(e).hint_zones.is_some()) {
        return None;
    }
    let picked: Vec<&T> = ready
        .iter()
        .copied()
        .filter(|e| {
            get(e)
                .hint_zones
                .as_ref()
                .is_some_and(|z| z.iter().any(|z| z == zone))
        })
        .collect();
    (!picked.is_empty()).then_some(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool, node: &str) -> Endpoint {
        Endpoint {
            addr: IpAddr::from([198, 18, 0, last]),
            ready,
            serving,
            terminating,
            node_name: Some(node.to_string()),
            zone: None,
            hint_zones: None,
            hint_nodes: None,
        }
    }

    fn addrs(v: Vec<&Endpoint>) -> Vec<u8> {
        v.iter()
            .map(|e| match e.addr {
                IpAddr::V4(a) => a.octets()[3],
                IpAddr::V6(_) => 0,
            })
            .collect()
    }

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            zone: None,
        }
    }

    #[test]
    fn cluster_prefers_ready_then_terminating_serving() {
        let eps = vec![ep(1, true, true, false, "a"), ep(2, false, true, true, "b")];
        let n = node("a");
        assert_eq!(
            addrs(usable(&eps, |e| e, TrafficPolicy::Cluster, &n)),
            vec![1]
        );
        let eps = vec![
            ep(1, false, false, true, "a"),
            ep(2, false, true, true, "b"),
            ep(3, false, false, false, "b"),
        ];
        assert_eq!(
            addrs(usable(&eps, |e| e, TrafficPolicy::Cluster, &n)),
            vec![2]
        );
    }

    #[test]
    fn local_uses_only_this_node() {
        let eps = vec![ep(1, true, true, false, "a"), ep(2, true, true, false, "b")];
        assert_eq!(
            addrs(usable(&eps, |e| e, TrafficPolicy::Local, &node("b"))),
            vec![2]
        );
        assert!(usable(&eps, |e| e, TrafficPolicy::Local, &node("c")).is_empty());
        let eps = vec![ep(1, true, true, false, "a"), ep(2, false, true, true, "b")];
        assert_eq!(
            addrs(usable(&eps, |e| e, TrafficPolicy::Local, &node("b"))),
            vec![2]
        );
    }

    #[test]
    fn topology_hints_narrow_only_when_complete() {
        let mut a = ep(1, true, true, false, "x");
        a.hint_zones = Some(vec!["z1".into()]);
        let mut b = ep(2, true, true, false, "y");
        b.hint_zones = Some(vec!["z2".into()]);
        let n = NodeInfo {
            name: "x".into(),
            zone: Some("z2".into()),
        };
        let eps = vec![a.clone(), b.clone()];
        assert_eq!(
            addrs(usable(&eps, |e| e, TrafficPolicy::Cluster, &n)),
            vec![2]
        );
        b.hint_zones = None;
        let eps = vec![a, b];
        assert_eq!(
            addrs(usable(&eps, |e| e, TrafficPolicy::Cluster, &n)),
            vec![1, 2]
        );
    }
}
