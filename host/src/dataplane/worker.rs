//! A dataplane worker: one thread, one mio event loop, its own flows and conntrack shard.
//! Nothing here is shared with other workers except the hand-off queues (accepted TCP
//! connections) and the control queue (route swaps, listeners, dumps, shutdown).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::{Events, Interest, Poll, Token};
use rustc_hash::FxHashMap;
use slab::Slab;

use super::batch::Batch;
use super::conntrack::{FlowId, Row, Table};
use super::control::{Control, Handoff, ListenerSocket, Parts, Peer, WAKER};
use super::relay::{Buffers, Pipe};
use super::tcp::TcpFlow;
use super::udp::UdpFlow;
use super::{DataplaneConfig, Route};
use crate::model::{Family, FrontendKey};
use crate::plugin::WorkerInstances;
use crate::policy::{Ending, FlowEnd, FlowInfo, PolicyState};

const LISTENER_BIT: usize = 1 << 61;
/// How often idle affinity entries and refused UDP tuples are swept.
const AFFINITY_SWEEP: Duration = Duration::from_secs(30);
/// How far a worker's load may exceed another's before it hands a new connection over.
const LOCAL_SLACK: usize = 8;

/// Flow tokens carry the slot, its generation and the side, so an event for a flow that was
/// closed and replaced within one poll round is recognised as stale.
pub(super) fn flow_token(id: FlowId, generation: u32, upstream: bool) -> Token {
    Token(((generation as usize & 0xffff) << 40) | (id << 1) | upstream as usize)
}

fn split_flow_token(t: Token) -> (FlowId, u16, bool) {
    (
        ((t.0 & ((1 << 40) - 1)) >> 1),
        (t.0 >> 40) as u16,
        t.0 & 1 == 1,
    )
}

pub(super) enum Sock {
    Tcp(mio::net::TcpListener),
    Udp(mio::net::UdpSocket),
}

/// A nodePort socket owned by this worker.
pub(super) struct Listener {
    pub(super) id: u64,
    pub(super) key: FrontendKey,
    pub(super) family: Family,
    /// Bound to a wildcard address: replies must name their source address.
    pub(super) wildcard: bool,
    pub(super) local: SocketAddr,
    pub(super) sock: Sock,
}

/// What a worker keeps beside each conntrack entry. Stored inline in the table: boxing the
/// (common) TCP variant would cost an allocation per flow.
#[allow(clippy::large_enum_variant)]
pub(super) enum FlowIo {
    Tcp(TcpFlow),
    Udp(UdpFlow),
}

/// The worker state; `run` is its thread body.
pub struct Worker {
    pub(super) index: usize,
    pub(super) cfg: Arc<DataplaneConfig>,
    pub(super) poll: Poll,
    pub(super) routes: FxHashMap<FrontendKey, Arc<Route>>,
    pub(super) listeners: Slab<Listener>,
    pub(super) table: Table<FlowIo>,
    pub(super) connect_timers: BinaryHeap<Reverse<(Instant, FlowId, u32)>>,
    pub(super) peers: Arc<[Peer]>,
    pub(super) next_peer: usize,
    /// Affinity entries, plugin instances, random choice: what policies keep per worker.
    pub(super) policy: PolicyState,
    /// Numbers this worker's new flows.
    pub(super) flow_seq: u64,
    pub(super) pipes: Vec<Pipe>,
    pub(super) buffers: Buffers,
    pub(super) splice: bool,
    pub(super) buf: Box<[u8]>,
    pub(super) batch: Box<Batch>,
    pub(super) now: Instant,
    /// Listeners (by control id) to accept on again, and when.
    pub(super) accept_retry: Vec<(Instant, u64)>,
    /// Last accept-failure warning (at most one a second).
    pub(super) accept_warned: Option<Instant>,
    control: Receiver<Control>,
    inbox: Receiver<Handoff>,
    shutdown: Option<Instant>,
    next_sweep: Instant,
}

impl Worker {
    /// Builds a worker from its parts; `peers` includes itself at `index`.
    pub fn new(index: usize, cfg: Arc<DataplaneConfig>, parts: Parts, peers: Arc<[Peer]>) -> Self {
        let now = Instant::now();
        let plugins = Box::new(WorkerInstances::new(cfg.plugins.clone(), index));
        Self {
            index,
            policy: PolicyState::new(index, plugins, now),
            splice: cfg.splice,
            table: Table::new(cfg.max_flows_per_worker),
            cfg,
            poll: parts.poll,
            routes: FxHashMap::default(),
            listeners: Slab::new(),
            connect_timers: BinaryHeap::new(),
            peers,
            next_peer: index,
            flow_seq: 0,
            pipes: Vec::new(),
            buffers: Buffers::default(),
            buf: vec![0u8; 65536].into_boxed_slice(),
            batch: Box::new(Batch::new()),
            now,
            accept_retry: Vec::new(),
            accept_warned: None,
            control: parts.control,
            inbox: parts.inbox,
            shutdown: None,
            next_sweep: now + AFFINITY_SWEEP,
        }
    }

    /// The event loop. Returns when shut down and drained (or the grace period ran out).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.index, error = %e, "poll failed; worker stops");
                    return;
                }
            }
            self.now = Instant::now();
            self.policy.now = self.now;
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                } else if t.0 & LISTENER_BIT != 0 {
                    self.listener_ready(t.0 & !LISTENER_BIT);
                } else {
                    let (id, generation, upstream) = split_flow_token(t);
                    self.flow_ready(id, generation, upstream, ev);
                }
            }
            self.drain_control();
            self.drain_inbox();
            self.run_timers();
            if let Some(deadline) = self.shutdown {
                if self.table.is_empty() || self.now >= deadline {
                    let left = self.table.len();
                    if left > 0 {
                        tracing::warn!(
                            worker = self.index,
                            flows = left,
                            "grace period over; closing flows"
                        );
                    }
                    return;
                }
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        let mut next = self.now + Duration::from_secs(1);
        if let Some(Reverse((d, _, _))) = self.connect_timers.peek() {
            next = next.min(*d);
        }
        if let Some(d) = self.table.next_deadline() {
            next = next.min(d);
        }
        if let Some(d) = self.shutdown {
            next = next.min(d);
        }
        if let Some(d) = self.accept_retry.iter().map(|(t, _)| *t).min() {
            next = next.min(d);
        }
        // Measured from the loop's clock reading: one clock read per round (it can be a real
        // syscall on VMs); sleeping a little long only delays timers by the round's work.
        next.saturating_duration_since(self.now)
    }

    fn listener_ready(&mut self, idx: usize) {
        match self
            .listeners
            .get(idx)
            .map(|l| matches!(l.sock, Sock::Tcp(_)))
        {
            Some(true) => self.accept(idx),
            Some(false) => self.udp_receive(idx),
            None => {}
        }
    }

    fn flow_ready(&mut self, id: FlowId, generation: u16, upstream: bool, ev: &mio::event::Event) {
        let Some((_, io, full_gen)) = self.table.get_by_id(id) else {
            return;
        };
        if full_gen as u16 != generation {
            return;
        }
        match io {
            FlowIo::Tcp(_) => self.tcp_ready(id, full_gen, upstream, ev),
            FlowIo::Udp(_) => {
                if upstream {
                    self.udp_reply(id, full_gen)
                }
            }
        }
    }

    fn drain_control(&mut self) {
        loop {
            match self.control.try_recv() {
                Ok(msg) => self.on_control(msg),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    // The control plane is gone: behave as if told to shut down now.
                    if self.shutdown.is_none() {
                        self.on_control(Control::Shutdown(self.now));
                    }
                    return;
                }
            }
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(h) = self.inbox.try_recv() {
            self.start_tcp(h);
        }
    }

    fn on_control(&mut self, msg: Control) {
        match msg {
            Control::Route(key, Some(route)) => {
                let old = self.routes.insert(key, route.clone());
                let forget = old.is_some() && route.forget_affinity;
                let old_policy = old.as_ref().map(|o| &o.policy);
                (self.policy).replace(key, old_policy, Some(&route.policy), forget);
                // Only an endpoint that stopped serving costs a scan of the shard.
                let lost = old.as_ref().is_some_and(|o| {
                    o.frontend
                        .serving
                        .iter()
                        .any(|a| !route.frontend.is_serving(a))
                });
                if lost {
                    self.clear_udp_flows(key, Some(&route));
                }
            }
            Control::Route(key, None) => {
                let old = self.routes.remove(&key);
                let old_policy = old.as_ref().map(|o| &o.policy);
                self.policy.replace(key, old_policy, None, true);
                self.clear_udp_flows(key, None);
            }
            Control::AddListener { id, key, socket } => self.add_listener(id, key, socket),
            Control::RemoveListener { id, done } => {
                let idx = self.listener_index(id);
                if let Some(idx) = idx {
                    self.close_listener(idx);
                }
                let _ = done.send(());
            }
            Control::Dump(reply) => {
                let _ = reply.send(self.dump());
            }
            Control::Barrier(done) => {
                let _ = done.send(());
            }
            Control::Shutdown(deadline) => {
                let all: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
                for idx in all {
                    self.close_listener(idx);
                }
                self.shutdown = Some(deadline);
            }
        }
    }

    /// The slab index of the listener with control id `id`.
    fn listener_index(&self, id: u64) -> Option<usize> {
        self.listeners
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(i, _)| i)
    }

    fn add_listener(&mut self, id: u64, key: FrontendKey, socket: ListenerSocket) {
        let entry = self.listeners.vacant_entry();
        let token = Token(LISTENER_BIT | entry.key());
        let registry = self.poll.registry();
        let (sock, local) = match socket {
            ListenerSocket::Tcp(l) => {
                let local = l.local_addr();
                let mut l = mio::net::TcpListener::from_std(l);
                let r = registry.register(&mut l, token, Interest::READABLE);
                (r.map(|_| Sock::Tcp(l)), local)
            }
            ListenerSocket::Udp(u) => {
                let local = u.local_addr();
                let mut u = mio::net::UdpSocket::from_std(u);
                let r = registry.register(&mut u, token, Interest::READABLE);
                (r.map(|_| Sock::Udp(u)), local)
            }
        };
        match (sock, local) {
            (Ok(sock), Ok(local)) => {
                entry.insert(Listener {
                    id,
                    key,
                    family: Family::of(&local.ip()),
                    wildcard: local.ip().is_unspecified(),
                    local,
                    sock,
                });
                // Datagrams or connections may already be queued: serve them now.
                self.listener_ready(token.0 & !LISTENER_BIT);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(worker = self.index, frontend = %key, error = %e, "cannot watch nodePort socket");
            }
        }
    }

    fn close_listener(&mut self, idx: usize) {
        let Some(mut l) = self.listeners.try_remove(idx) else {
            return;
        };
        let _ = match &mut l.sock {
            Sock::Tcp(s) => self.poll.registry().deregister(s),
            Sock::Udp(s) => self.poll.registry().deregister(s),
        };
        if matches!(l.sock, Sock::Udp(_)) {
            // UDP flows answer through this socket: without it they are dead.
            let doomed: Vec<FlowId> = self
                .table
                .iter()
                .filter(|(_, _, io)| matches!(io, FlowIo::Udp(u) if u.listener == idx))
                .map(|(id, _, _)| id)
                .collect();
            for id in doomed {
                self.close_flow(id, Ending::Closed);
            }
        }
    }

    /// Removes UDP flows of `key` whose endpoint no longer serves (all of them when the
    /// frontend is gone), as kube-proxy clears stale UDP conntrack entries. TCP flows finish.
    fn clear_udp_flows(&mut self, key: FrontendKey, route: Option<&Route>) {
        let doomed: Vec<FlowId> = self
            .table
            .iter()
            .filter(|(_, e, io)| {
                matches!(io, FlowIo::Udp(_))
                    && e.frontend == key
                    && !route.is_some_and(|r| r.frontend.is_serving(&e.endpoint))
            })
            .map(|(id, _, _)| id)
            .collect();
        for id in doomed {
            self.close_flow(id, Ending::Closed);
        }
    }

    fn run_timers(&mut self) {
        while let Some(Reverse((deadline, id, generation))) = self.connect_timers.peek().copied() {
            if deadline > self.now {
                break;
            }
            self.connect_timers.pop();
            self.connect_timed_out(id, generation);
        }
        if !self.accept_retry.is_empty() {
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.accept_retry.drain(..).partition(|(t, _)| *t <= now);
            self.accept_retry = later;
            for (_, id) in due {
                let idx = self.listener_index(id);
                if let Some(idx) = idx {
                    self.accept(idx);
                }
            }
        }
        while let Some(id) = self.table.pop_expired(self.now) {
            self.close_flow(id, Ending::Closed);
        }
        if self.now >= self.next_sweep {
            self.next_sweep = self.now + AFFINITY_SWEEP;
            self.policy.sweep();
        }
    }

    /// Ends a flow: sockets close, pipes go back to the pool, gauges drop, and the flow's
    /// policy learns how it ended.
    pub(super) fn close_flow(&mut self, id: FlowId, ending: Ending) {
        let Some((entry, io)) = self.table.remove(id) else {
            return;
        };
        let (route, flow) = match io {
            FlowIo::Tcp(t) => {
                self.peers[self.index].load.add(-1);
                let (route, flow) = (t.route.clone(), t.flow);
                t.release(&mut self.pipes, &mut self.buffers);
                (route, flow)
            }
            FlowIo::Udp(u) => (u.route, u.flow),
        };
        route.metrics.active.dec();
        let end = FlowEnd {
            endpoint: entry.endpoint,
            ending,
            duration: self.now.saturating_duration_since(entry.started),
            bytes_in: entry.orig.bytes,
            bytes_out: entry.reply.bytes,
        };
        route.policy.flow_ended(&mut self.policy, &flow, &end);
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
    ) -> Option<std::net::IpAddr> {
        let on = match client {
            SocketAddr::V4(_) => self.cfg.preserve_source_v4,
            SocketAddr::V6(_) => self.cfg.preserve_source_v6,
        };
        let host_network =
            endpoint.ip().is_loopback() || self.cfg.node_ips.contains(&endpoint.ip());
        (on && route.frontend.policy == crate::model::TrafficPolicy::Local && !host_network)
            .then_some(client.ip())
    }

    fn dump(&self) -> Vec<Row> {
        self.table
            .iter()
            .map(|(_, e, io)| {
                let (service, port, packets) = match io {
                    FlowIo::Tcp(t) => (
                        &t.route.frontend.service,
                        &t.route.frontend.port_name,
                        t.segments(),
                    ),
                    FlowIo::Udp(u) => {
                        (&u.route.frontend.service, &u.route.frontend.port_name, None)
                    }
                };
                Row::new(
                    e,
                    self.index,
                    service.to_string(),
                    port.clone(),
                    packets,
                    self.now,
                )
            })
            .collect()
    }
}
