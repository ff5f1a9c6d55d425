//! This node's Node object: its `topology.kubernetes.io/zone` label is the zone that
//! topology hints are matched against (unless `--node-zone` fixes it), and its
//! `status.addresses` are node addresses, where endpoints are host-network (source
//! preservation leaves them alone; the dataplane adds its interfaces' addresses).

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::watch::Handler;
use crate::source::{Sink, SourceEvent};

/// The label kube-proxy reads the zone from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Tells the sync loop this node's zone and addresses whenever they change.
pub struct ThisNode {
    sink: Sink,
    told: Option<Option<String>>,
    /// Whether to tell the zone (false when `--node-zone` fixes it).
    zone: bool,
    addresses: Option<Vec<IpAddr>>,
}

impl ThisNode {
    /// Sends into `sink`; the zone too when `zone`.
    pub fn new(sink: Sink, zone: bool) -> Self {
        Self {
            sink,
            told: None,
            zone,
            addresses: None,
        }
    }

    fn tell_addresses(&mut self, mut ips: Vec<IpAddr>) -> bool {
        ips.sort();
        ips.dedup();
        if self.addresses.as_ref() == Some(&ips) {
            return true;
        }
        self.addresses = Some(ips.clone());
        self.sink.send(SourceEvent::NodeAddresses(ips))
    }

    fn tell(&mut self, zone: Option<String>) -> bool {
        if !self.zone || self.told.as_ref() == Some(&zone) {
            return true;
        }
        self.told = Some(zone.clone());
        self.sink.send(SourceEvent::NodeZone(zone))
    }
}

/// The IPs of `status.addresses` (InternalIP, ExternalIP; host names are skipped).
fn addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

fn zone(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .filter(|z| !z.is_empty())
        .cloned()
}

impl Handler<Node> for ThisNode {
    fn apply(&mut self, node: &Node) -> bool {
        self.tell(zone(node)) && self.tell_addresses(addresses(node))
    }

    fn delete(&mut self, _: &Node) -> bool {
        self.tell(None) && self.tell_addresses(Vec::new())
    }

    fn relisted(&mut self, live: &[Arc<Node>]) -> bool {
        if live.is_empty() {
            tracing::warn!("no Node object of this node's name (--hostname-override); topology hints are not used");
            return self.tell(None) && self.tell_addresses(Vec::new());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Event;

    #[test]
    fn the_zone_is_told_when_it_changes_only() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut h = ThisNode::new(Sink::new(tx), true);
        let mut node = Node::default();
        node.metadata.labels = Some([(ZONE_LABEL.to_string(), "z1".to_string())].into());
        node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            addresses: Some(vec![
                k8s_openapi::api::core::v1::NodeAddress {
                    type_: "InternalIP".into(),
                    address: "198.18.0.9".into(),
                },
                k8s_openapi::api::core::v1::NodeAddress {
                    type_: "Hostname".into(),
                    address: "node-a".into(),
                },
            ]),
            ..Default::default()
        });
        assert!(h.apply(&node) && h.apply(&node) && h.relisted(&[Arc::new(node.clone())]));
        assert!(h.relisted(&[]));
        let told: Vec<Option<String>> = rx
            .try_iter()
            .filter_map(|e| match e {
                Event::Source(SourceEvent::NodeZone(z)) => Some(z),
                _ => None,
            })
            .collect();
        assert_eq!(told, [Some("z1".to_string()), None]);
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut h = ThisNode::new(Sink::new(tx), false);
        assert!(h.apply(&node) && h.apply(&node));
        let told: Vec<String> = rx
            .try_iter()
            .map(|e| match e {
                Event::Source(SourceEvent::NodeAddresses(ips)) => format!("{ips:?}"),
                Event::Source(other) => format!("{other:?}"),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(
            told,
            ["[198.18.0.9]"],
            "addresses once; no zone when --node-zone fixes it"
        );
    }
}
