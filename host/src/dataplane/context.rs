//! What a worker's TCP and UDP flow handlers share, and nothing more: the worker's routes and
//! policy state, its registry, clock and settings, its peers (for placing new connections)
//! and the flow budget both protocols draw from. The worker owns one `Ctx` and lends it to
//! `tcp` and `udp`, which own their own shards and sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use mio::Registry;
use rustc_hash::FxHashMap;

use super::config::DataplaneConfig;
use super::conntrack::{Entry, Row};
use super::control::Peer;
use super::route::Route;
use crate::model::{FrontendKey, TrafficPolicy};
use crate::policy::{Ending, FlowEnd, FlowInfo, PolicyState};

/// How far a worker's load may exceed another's before it hands a new connection over.
const LOCAL_SLACK: usize = 8;

/// A worker's shared flow-handling state.
pub(super) struct Ctx {
    /// This worker's index among its peers.
    pub(super) index: usize,
    pub(super) cfg: Arc<DataplaneConfig>,
    /// The worker's poll registry (its own handle, made once: cloning per flow would dup the
    /// epoll descriptor).
    pub(super) registry: Registry,
    /// The current route of every frontend.
    pub(super) routes: FxHashMap<FrontendKey, Arc<Route>>,
    /// Affinity entries, plugin instances, random choice: what policies keep per worker.
    pub(super) policy: PolicyState,
    /// The clock, read once per poll round.
    pub(super) now: Instant,
    /// Every worker, this one at `index`.
    pub(super) peers: Arc<[Peer]>,
    next_peer: usize,
    /// Numbers this worker's new flows.
    flow_seq: u64,
    /// Flows tracked (TCP and UDP together), bounded by `max_flows_per_worker`.
    flows: usize,
    /// The node's own addresses (`Control::NodeIps`; at start, `cfg.node_ips`).
    pub(super) node_ips: Arc<[IpAddr]>,
}

impl Ctx {
    /// The context of worker `index`.
    pub(super) fn new(
        index: usize,
        cfg: Arc<DataplaneConfig>,
        registry: Registry,
        policy: PolicyState,
        peers: Arc<[Peer]>,
        now: Instant,
    ) -> Self {
        Self {
            index,
            node_ips: cfg.node_ips.clone().into(),
            cfg,
            registry,
            routes: FxHashMap::default(),
            policy,
            now,
            peers,
            next_peer: index,
            flow_seq: 0,
            flows: 0,
        }
    }

    /// Sets the round's clock, for flows and policies alike.
    pub(super) fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.policy.now = now;
    }

    /// A new flow's info, numbered by this worker.
    pub(super) fn new_flow(
        &mut self,
        key: FrontendKey,
        client: SocketAddr,
        node: SocketAddr,
    ) -> FlowInfo {
        self.flow_seq += 1;
        FlowInfo::new(self.index, self.flow_seq, key, client, node)
    }

    /// Takes a place in the flow budget; false when the worker tracks as many as allowed.
    pub(super) fn take_slot(&mut self) -> bool {
        if self.flows >= self.cfg.max_flows_per_worker {
            return false;
        }
        self.flows += 1;
        true
    }

    /// Gives back a place taken for a flow that never started.
    pub(super) fn release_slot(&mut self) {
        self.flows = self.flows.saturating_sub(1);
    }

    /// A flow left its shard: its place goes back, its gauge drops, and its policy learns
    /// how it ended.
    pub(super) fn ended(&mut self, route: &Route, flow: &FlowInfo, entry: &Entry, ending: Ending) {
        self.release_slot();
        route.metrics.active.dec();
        let end = FlowEnd {
            endpoint: entry.endpoint,
            ending,
            duration: self.now.saturating_duration_since(entry.started),
            bytes_in: entry.orig.bytes,
            bytes_out: entry.reply.bytes,
        };
        route.policy.flow_ended(&mut self.policy, flow, &end);
    }

    /// This worker's published TCP load.
    pub(super) fn add_load(&self, delta: isize) {
        self.peers[self.index].load.add(delta);
    }

    /// The worker that carries a new TCP flow: the one its policy's placement hash names
    /// (so one worker's affinity table sees all of a key's flows). Otherwise the accepting
    /// worker keeps it (no cross-thread hand-off, no wake-up) unless it carries more than
    /// LOCAL_SLACK flows beyond the next peer in turn, which then gets it: load spreads as
    /// soon as one worker falls behind.
    pub(super) fn carrier(&mut self, route: &Route, flow: &FlowInfo) -> usize {
        let n = self.peers.len();
        if let Some(h) = route.policy.placement(flow) {
            return (h % n as u64) as usize;
        }
        if n == 1 {
            return self.index;
        }
        self.next_peer = (self.next_peer + 1) % n;
        if self.next_peer == self.index {
            self.next_peer = (self.next_peer + 1) % n;
        }
        let mine = self.peers[self.index].load.get();
        if mine > self.peers[self.next_peer].load.get() + LOCAL_SLACK {
            self.next_peer
        } else {
            self.index
        }
    }

    /// The address an upstream socket binds to: the client's for externalTrafficPolicy Local
    /// when source preservation is on (and the endpoint is not in the node's own namespace,
    /// where replies would never pass prerouting), else none (the node's address).
    pub(super) fn source_for(
        &self,
        route: &Route,
        client: &SocketAddr,
        endpoint: &SocketAddr,
    ) -> Option<IpAddr> {
        let on = match client {
            SocketAddr::V4(_) => self.cfg.preserve_source_v4,
            SocketAddr::V6(_) => self.cfg.preserve_source_v6,
        };
        let host_network = endpoint.ip().is_loopback() || self.node_ips.contains(&endpoint.ip());
        (on && route.frontend.policy == TrafficPolicy::Local && !host_network)
            .then_some(client.ip())
    }

    /// A flow as the conntrack dump shows it.
    pub(super) fn row(&self, entry: &Entry, route: &Route, packets: Option<(u64, u64)>) -> Row {
        Row::new(
            entry,
            self.index,
            route.frontend.service.to_string(),
            route.frontend.port_name.clone(),
            packets,
            self.now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::listener::BindAddresses;

    fn ctx(max_flows: usize) -> Ctx {
        let cidr: ipnet::IpNet = "127.0.0.1/32".parse().expect("cidr");
        let bind = BindAddresses::resolve(&[cidr]).expect("addresses");
        let cfg = DataplaneConfig {
            max_flows_per_worker: max_flows,
            ..DataplaneConfig::new(bind)
        };
        let poll = mio::Poll::new().expect("poll");
        let registry = poll.registry().try_clone().expect("registry");
        let (_, peer) = crate::dataplane::control::parts().expect("parts");
        let now = Instant::now();
        let policy = crate::policy::testing::state();
        Ctx::new(0, Arc::new(cfg), registry, policy, Arc::from([peer]), now)
    }

    #[test]
    fn both_protocols_draw_from_one_budget() {
        let mut c = ctx(2);
        assert!(c.take_slot(), "first flow");
        assert!(c.take_slot(), "second flow");
        assert!(
            !c.take_slot(),
            "the budget is per worker, whatever the protocol"
        );
        c.release_slot();
        assert!(c.take_slot(), "a place given back is taken again");
    }

    #[test]
    fn flows_are_numbered_per_worker() {
        let mut c = ctx(4);
        let key = FrontendKey {
            protocol: crate::model::Protocol::Tcp,
            node_port: 30080,
        };
        let client = SocketAddr::from(([198, 18, 0, 2], 40000));
        let node = SocketAddr::from(([198, 18, 0, 1], 30080));
        let a = c.new_flow(key, client, node);
        let b = c.new_flow(key, client, node);
        assert_ne!(a.id, b.id);
    }
}
