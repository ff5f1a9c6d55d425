//! This node's Node object: its `topology.kubernetes.io/zone` label is the zone that
//! topology hints are matched against (unless `--node-zone` fixes it).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::watch::Handler;
use crate::source::{Sink, SourceEvent};

/// The label kube-proxy reads the zone from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Tells the sync loop the zone whenever it changes.
pub struct NodeZone {
    sink: Sink,
    told: Option<Option<String>>,
}

impl NodeZone {
    /// Sends into `sink`.
    pub fn new(sink: Sink) -> Self {
        Self { sink, told: None }
    }

    fn tell(&mut self, zone: Option<String>) -> bool {
        if self.told.as_ref() == Some(&zone) {
            return true;
        }
        self.told = Some(zone.clone());
        self.sink.send(SourceEvent::NodeZone(zone))
    }
}

fn zone(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .filter(|z| !z.is_empty())
        .cloned()
}

impl Handler<Node> for NodeZone {
    fn apply(&mut self, node: &Node) -> bool {
        self.tell(zone(node))
    }

    fn delete(&mut self, _: &Node) -> bool {
        self.tell(None)
    }

    fn relisted(&mut self, live: &[Arc<Node>]) -> bool {
        if live.is_empty() {
            tracing::warn!("no Node object of this node's name (--hostname-override); topology hints are not used");
            return self.tell(None);
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
        let mut h = NodeZone::new(Sink::new(tx));
        let mut node = Node::default();
        node.metadata.labels = Some([(ZONE_LABEL.to_string(), "z1".to_string())].into());
        assert!(h.apply(&node) && h.apply(&node) && h.relisted(&[Arc::new(node)]));
        assert!(h.relisted(&[]));
        let told: Vec<Option<String>> = rx
            .try_iter()
            .filter_map(|e| match e {
                Event::Source(SourceEvent::NodeZone(z)) => Some(z),
                _ => None,
            })
            .collect();
        assert_eq!(told, [Some("z1".to_string()), None]);
    }
}
