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
    use TrafficPolicy::{Cluster, Local};

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

    /// A ready endpoint on `node` with zone and node hints.
    fn hinted(last: u8, node: &str, zones: Option<&[&str]>, nodes: Option<&[&str]>) -> Endpoint {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Endpoint {
            hint_zones: zones.map(names),
            hint_nodes: nodes.map(names),
            ..ep(last, true, true, false, node)
        }
    }

    fn node(name: &str, zone: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            zone: zone.map(String::from),
        }
    }

    /// The last octets of the usable endpoints.
    fn pick(eps: &[Endpoint], policy: TrafficPolicy, n: &NodeInfo) -> Vec<u8> {
        usable(eps, |e| e, policy, n)
            .iter()
            .map(|e| match e.addr {
                IpAddr::V4(a) => a.octets()[3],
                IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[test]
    fn cluster_prefers_ready_then_terminating_serving() {
        let n = node("a", None);
        let eps = [ep(1, true, true, false, "a"), ep(2, false, true, true, "b")];
        assert_eq!(pick(&eps, Cluster, &n), vec![1]);
        let eps = [
            ep(1, false, false, true, "a"),
            ep(2, false, true, true, "b"),
            ep(3, false, false, false, "b"),
        ];
        assert_eq!(pick(&eps, Cluster, &n), vec![2]);
    }

    #[test]
    fn cluster_uses_every_node_and_ready_terminating_endpoints() {
        let eps = [
            ep(1, true, true, false, "a"),
            ep(2, true, true, false, "b"),
            ep(3, true, true, true, "c"),
        ];
        assert_eq!(pick(&eps, Cluster, &node("z", None)), vec![1, 2, 3]);
    }

    #[test]
    fn cluster_fallback_needs_serving_and_terminating() {
        let eps = [
            ep(1, false, true, false, "a"),
            ep(2, false, false, true, "a"),
            ep(3, false, false, false, "a"),
        ];
        assert!(pick(&eps, Cluster, &node("a", None)).is_empty());
        assert!(pick(&[], Cluster, &node("a", None)).is_empty());
    }

    #[test]
    fn local_uses_only_this_node() {
        let eps = [ep(1, true, true, false, "a"), ep(2, true, true, false, "b")];
        assert_eq!(pick(&eps, Local, &node("b", None)), vec![2]);
        assert!(pick(&eps, Local, &node("c", None)).is_empty());
        let eps = [ep(1, true, true, false, "a"), ep(2, false, true, true, "b")];
        assert_eq!(pick(&eps, Local, &node("b", None)), vec![2]);
    }

    #[test]
    fn local_falls_back_only_to_this_nodes_serving_terminating() {
        let eps = [
            ep(1, true, true, false, "a"),
            ep(2, false, true, true, "a"),
            ep(3, false, true, true, "b"),
            ep(4, false, false, true, "b"),
        ];
        assert_eq!(pick(&eps, Local, &node("b", None)), vec![3]);
        assert_eq!(pick(&eps, Local, &node("a", None)), vec![1]);
        let eps = [
            ep(1, true, true, false, "a"),
            ep(2, false, false, true, "b"),
        ];
        assert!(pick(&eps, Local, &node("b", None)).is_empty());
        let mut nameless = ep(5, true, true, false, "");
        nameless.node_name = None;
        assert!(pick(&[nameless], Local, &node("", None)).is_empty());
    }

    #[test]
    fn topology_hints_narrow_only_when_complete() {
        let n = node("x", Some("z2"));
        let a = hinted(1, "x", Some(&["z1"]), None);
        let b = hinted(2, "y", Some(&["z2"]), None);
        assert_eq!(pick(&[a.clone(), b.clone()], Cluster, &n), vec![2]);
        let b = Endpoint {
            hint_zones: None,
            ..b
        };
        assert_eq!(pick(&[a, b], Cluster, &n), vec![1, 2]);
    }

    #[test]
    fn zone_hints_need_a_zone_and_a_match() {
        let eps = [
            hinted(1, "x", Some(&["z1"]), None),
            hinted(2, "y", Some(&["z2"]), None),
        ];
        assert_eq!(pick(&eps, Cluster, &node("x", None)), vec![1, 2]);
        assert_eq!(pick(&eps, Cluster, &node("x", Some("z9"))), vec![1, 2]);
        assert_eq!(pick(&eps, Cluster, &node("x", Some("z1"))), vec![1]);
    }

    #[test]
    fn hints_of_endpoints_that_are_not_ready_do_not_count() {
        let mut unhinted = ep(3, false, true, true, "y");
        unhinted.hint_zones = None;
        let eps = [
            hinted(1, "x", Some(&["z1"]), None),
            hinted(2, "y", Some(&["z2"]), None),
            unhinted,
        ];
        assert_eq!(pick(&eps, Cluster, &node("x", Some("z1"))), vec![1]);
    }

    #[test]
    fn node_hints_come_before_zone_hints() {
        let eps = [
            hinted(1, "x", Some(&["z1"]), Some(&["x"])),
            hinted(2, "y", Some(&["z1"]), Some(&["y"])),
        ];
        assert_eq!(pick(&eps, Cluster, &node("x", Some("z1"))), vec![1]);
        assert_eq!(pick(&eps, Cluster, &node("w", Some("z1"))), vec![1, 2]);
        let partial = [
            hinted(1, "x", Some(&["z1"]), Some(&["x"])),
            hinted(2, "y", Some(&["z2"]), None),
        ];
        assert_eq!(pick(&partial, Cluster, &node("x", Some("z2"))), vec![2]);
    }

    #[test]
    fn local_policy_ignores_hints() {
        let eps = [
            hinted(1, "x", Some(&["z1"]), Some(&["y"])),
            hinted(2, "x", Some(&["z2"]), Some(&["y"])),
        ];
        assert_eq!(pick(&eps, Local, &node("x", Some("z1"))), vec![1, 2]);
    }
}
