//! A dataplane worker: one thread, one mio event loop, its own flows and conntrack shard.
//! Nothing here is shared with other workers except the hand-off queues (accepted TCP
//! connections) and the control queue (route swaps, listeners, dumps, shutdown).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustc_hash::FxHashMap;
use slab::Slab;

use super::batch::Batch;
use super::conntrack::Tuple;
use super::conntrack::{FlowId, Row, Table};
use super::relay::{Buffers, Pipe};
use super::tcp::TcpFlow;
use super::udp::UdpFlow;
use super::{DataplaneConfig, Route};
use crate::admin::metrics::Refusal;
use crate::balance::affinity::{AffinityKey, AffinityTable};
use crate::balance::random::Random;
use crate::balance::{FlowInfo, Selector};
use crate::model::{FailurePolicy, Family, FrontendKey};
use crate::plugin::{wire as wit, Chain, WorkerInstances};

/// Token of the waker that control and hand-off messages ring.
pub(super) const WAKER: Token = Token(1 << 62);
const LISTENER_BIT: usize = 1 << 61;
/// How often idle affinity entries are swept.
const AFFINITY_SWEEP: Duration = Duration::from_secs(30);
/// Default lifetime of a plugin's affinity entry when neither it nor the Service says.
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10800);
/// How long a UDP client tuple that admission refused stays refused without asking again
/// (so a plugin is asked once per flow, not once per datagram).
const UDP_DENIED_FOR: Duration = Duration::from_secs(1);
/// Most refused UDP tuples remembered (spoofed floods cannot grow it further).
const UDP_DENIED_MAX: usize = 65536;

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

/// A nodePort socket handed to a worker.
pub enum ListenerSocket {
    /// Accepts connections.
    Tcp(std::net::TcpListener),
    /// Receives datagrams.
    Udp(std::net::UdpSocket),
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

/// Messages from the control plane.
pub enum Control {
    /// Swap in (or remove) the route of a frontend.
    Route(FrontendKey, Option<Arc<Route>>),
    /// Start serving a nodePort socket.
    AddListener {
        /// Control-plane id of the socket.
        id: u64,
        /// Frontend it serves.
        key: FrontendKey,
        /// The socket.
        socket: ListenerSocket,
    },
    /// Stop serving a nodePort socket and close it; `done` is told once it is closed.
    RemoveListener {
        /// Control-plane id.
        id: u64,
        /// Acknowledgement.
        done: Sender<()>,
    },
    /// Send back a copy of this worker's conntrack shard.
    Dump(Sender<Vec<Row>>),
    /// Answer once every earlier message has been applied.
    Barrier(Sender<()>),
    /// Close listeners, let flows finish until the deadline, then exit.
    Shutdown(Instant),
}

/// An accepted connection passed to the worker that will carry it.
pub struct Handoff {
    pub(super) stream: mio::net::TcpStream,
    /// The flow, admitted, with its affinity key if a plugin gave one.
    pub(super) flow: FlowInfo,
    pub(super) family: Family,
}

/// A worker's count of TCP flows, alone on its cache line: written by its worker only, read
/// by the others when they place a new connection.
#[repr(align(128))]
#[derive(Default)]
pub struct Load(std::sync::atomic::AtomicUsize);

impl Load {
    fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn add(&self, delta: isize) {
        if delta >= 0 {
            self.0
                .fetch_add(delta as usize, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.0
                .fetch_sub(delta.unsigned_abs(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// How far a worker's load may exceed another's before it hands a new connection over.
const LOCAL_SLACK: usize = 8;

/// How other threads reach a worker.
#[derive(Clone)]
pub struct Peer {
    pub(super) control: Sender<Control>,
    pub(super) handoff: Sender<Handoff>,
    pub(super) waker: Arc<Waker>,
    pub(super) load: Arc<Load>,
}

impl Peer {
    /// Sends a control message and wakes the worker.
    pub fn send(&self, msg: Control) -> bool {
        self.control.send(msg).is_ok() && self.waker.wake().is_ok()
    }
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
    pub(super) random: Random,
    pub(super) affinity: AffinityTable,
    /// This worker's plugin instances.
    pub(super) plugins: WorkerInstances,
    /// Numbers this worker's new flows.
    pub(super) flow_seq: u64,
    /// UDP client tuples admission refused, until when.
    pub(super) udp_denied: FxHashMap<Tuple, Instant>,
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

/// Channels and poll of a worker not yet started.
pub struct Parts {
    pub(super) poll: Poll,
    pub(super) control: Receiver<Control>,
    pub(super) inbox: Receiver<Handoff>,
}

/// Creates a worker's poll, waker and queues.
pub fn parts() -> io::Result<(Parts, Peer)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let (ho_tx, ho_rx) = crossbeam_channel::bounded(4096);
    Ok((
        Parts {
            poll,
            control: ctl_rx,
            inbox: ho_rx,
        },
        Peer {
            control: ctl_tx,
            handoff: ho_tx,
            waker,
            load: Arc::default(),
        },
    ))
}

impl Worker {
    /// Builds a worker from its parts; `peers` includes itself at `index`.
    pub fn new(index: usize, cfg: Arc<DataplaneConfig>, parts: Parts, peers: Arc<[Peer]>) -> Self {
        let now = Instant::now();
        let plugins = WorkerInstances::new(cfg.plugins.clone(), index);
        Self {
            index,
            plugins,
            splice: cfg.splice,
            table: Table::new(cfg.max_flows_per_worker),
            cfg,
            poll: parts.poll,
            routes: FxHashMap::default(),
            listeners: Slab::new(),
            connect_timers: BinaryHeap::new(),
            peers,
            next_peer: index,
            random: Random::new(
                0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
            ),
            affinity: AffinityTable::default(),
            flow_seq: 0,
            udp_denied: FxHashMap::default(),
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
                let old_chain = old.as_ref().and_then(|o| o.chain.as_ref());
                let same_chain = Chain::same(old_chain, route.chain.as_ref());
                if !same_chain {
                    if let Some(c) = &route.chain {
                        self.plugins.attach(c);
                    }
                    if let Some(c) = old_chain {
                        self.plugins.detach(c);
                    }
                }
                if old.as_ref().is_some_and(|o| {
                    o.frontend.affinity != route.frontend.affinity
                        || (!same_chain && o.chain.as_ref().is_some_and(|c| c.affinity.is_some()))
                }) {
                    self.affinity.forget_frontend(key);
                }
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
                if let Some(c) = self.routes.remove(&key).and_then(|r| r.chain.clone()) {
                    self.plugins.detach(&c);
                }
                self.affinity.forget_frontend(key);
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
                self.close_flow(id);
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
            self.close_flow(id);
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
            self.close_flow(id);
        }
        if self.now >= self.next_sweep {
            self.next_sweep = self.now + AFFINITY_SWEEP;
            self.affinity.sweep(self.now);
            let now = self.now;
            self.udp_denied.retain(|_, until| *until > now);
        }
    }

    /// Ends a flow: sockets close, pipes go back to the pool, gauges drop.
    pub(super) fn close_flow(&mut self, id: FlowId) {
        let Some((_, io)) = self.table.remove(id) else {
            return;
        };
        match io {
            FlowIo::Tcp(t) => {
                t.route.metrics.active.dec();
                self.peers[self.index].load.add(-1);
                t.release(&mut self.pipes, &mut self.buffers);
            }
            FlowIo::Udp(u) => {
                u.route.metrics.active.dec();
            }
        }
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

    /// The flow as plugins see it.
    fn flow_record(chain: &Chain, family: Family, flow: &FlowInfo) -> wit::types::Flow {
        wit::types::Flow {
            id: flow.id,
            handle: chain.handle(family),
            protocol: wit::protocol(flow.frontend.protocol),
            client: wit::address(flow.client.ip()),
            client_port: flow.client.port(),
            node: wit::address(flow.node.ip()),
            node_port: flow.node.port(),
            hash: flow.hash,
        }
    }

    /// Runs the Service's admission plugins and asks its affinity plugin for a key, before
    /// the flow is placed on a worker. Err is why the flow is refused.
    pub(super) fn admit(
        &mut self,
        route: &Route,
        family: Family,
        flow: FlowInfo,
    ) -> Result<FlowInfo, Refusal> {
        let Some(chain) = &route.chain else {
            return Ok(flow);
        };
        let record = Self::flow_record(chain, family, &flow);
        for link in chain.admission_links() {
            match self.plugins.admit(chain, link, family, record, self.now) {
                Ok(wit::types::Verdict::Allow) => {}
                Ok(wit::types::Verdict::Deny(_)) => return Err(Refusal::Denied),
                Err(_) if chain.policy == FailurePolicy::Closed => {
                    return Err(Refusal::PluginFailed)
                }
                Err(_) => {}
            }
        }
        match self.plugins.affinity_key(chain, family, record, self.now) {
            Ok(Some(a)) => {
                let ttl = match a.ttl_seconds {
                    0 => route.frontend.affinity.unwrap_or(DEFAULT_AFFINITY),
                    s => Duration::from_secs(s as u64),
                };
                Ok(flow.with_affinity(a.key, ttl))
            }
            Ok(None) => Ok(flow),
            Err(_) if chain.policy == FailurePolicy::Closed => Err(Refusal::PluginFailed),
            Err(_) => Ok(flow),
        }
    }

    /// Chooses an endpoint for a new flow (or a retry), never one of `tried`: the affinity
    /// entry of the flow's key (plugin key, else ClientIP) if alive, else the selection
    /// plugin, else (or when it failed under policy open) kube-proxy's random choice.
    pub(super) fn pick(
        &mut self,
        route: &Route,
        family: Family,
        flow: &FlowInfo,
        tried: &[SocketAddr],
    ) -> Result<SocketAddr, Refusal> {
        let fe = &route.frontend;
        let backends = match family {
            Family::V4 => &fe.v4,
            Family::V6 => &fe.v6,
        };
        if backends.is_empty() {
            return Err(Refusal::NoEndpoint);
        }
        let key = match flow.affinity {
            Some((k, ttl)) => Some((AffinityKey::Plugin(k), ttl)),
            None => fe
                .affinity
                .map(|t| (AffinityKey::Client(flow.client.ip()), t)),
        };
        if let Some((k, ttl)) = key {
            if let Some(addr) = self.affinity.lookup(fe.key, k, self.now) {
                if !tried.contains(&addr) && backends.iter().any(|b| b.addr == addr) {
                    self.affinity.record(fe.key, k, addr, ttl, self.now);
                    return Ok(addr);
                }
            }
        }
        let idx = match route.chain.as_ref().filter(|c| c.selection.is_some()) {
            Some(chain) => {
                let record = Self::flow_record(chain, family, flow);
                match self
                    .plugins
                    .select(chain, family, record, backends, tried, self.now)
                {
                    Ok(i) => i,
                    Err(_) if chain.policy == FailurePolicy::Closed => {
                        return Err(Refusal::PluginFailed)
                    }
                    Err(_) => self.random.select(flow, backends, tried),
                }
            }
            None => self.random.select(flow, backends, tried),
        };
        let addr = backends[idx.ok_or(Refusal::NoEndpoint)?].addr;
        if let Some((k, ttl)) = key {
            self.affinity.record(fe.key, k, addr, ttl, self.now);
        }
        Ok(addr)
    }

    /// The worker that carries a new TCP flow: by affinity key (a plugin's, else the client
    /// IP for ClientIP affinity), so one worker's affinity table sees all of a key's flows.
    /// Otherwise the accepting worker keeps it (no cross-thread hand-off, no wake-up) unless
    /// it carries more than LOCAL_SLACK flows beyond the next peer in turn, which then gets
    /// it: load spreads as soon as one worker falls behind.
    pub(super) fn carrier(&mut self, route: &Route, flow: &FlowInfo) -> usize {
        let n = self.peers.len();
        if flow.affinity.is_some() {
            return (flow.hash % n as u64) as usize;
        }
        if route.frontend.affinity.is_some() {
            use std::hash::BuildHasher;
            return (rustc_hash::FxBuildHasher.hash_one(flow.client.ip()) % n as u64) as usize;
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

    /// Remembers that admission refused a UDP tuple, so its next datagrams are dropped
    /// without asking again for a while.
    pub(super) fn deny_udp(&mut self, tuple: Tuple) {
        if self.udp_denied.len() >= UDP_DENIED_MAX {
            let now = self.now;
            self.udp_denied.retain(|_, until| *until > now);
            if self.udp_denied.len() >= UDP_DENIED_MAX {
                self.udp_denied.clear();
            }
        }
        self.udp_denied.insert(tuple, self.now + UDP_DENIED_FOR);
    }

    /// Whether a UDP tuple is still refused.
    pub(super) fn udp_refused(&self, tuple: &Tuple) -> bool {
        self.udp_denied
            .get(tuple)
            .is_some_and(|until| *until > self.now)
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

    pub(super) fn registry(&self) -> &Registry {
        self.poll.registry()
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
