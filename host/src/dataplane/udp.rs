//! A worker's UDP side: its UDP nodePort sockets and UDP conntrack shard. A flow is one client
//! address and nodePort, each with its own connected socket to the endpoint. Datagrams from
//! the client go out on that socket; replies come back on it and leave from the nodePort
//! socket with the address the client used. Idle flows expire (30 s until the endpoint
//! answers, the longer stream timeout after).
//!
//! The worker lends it a `Ctx` (routes, policy, clock, registry); nothing here reaches back
//! into the worker.

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;

use super::batch::{Batch, BATCH};
use super::config::DataplaneConfig;
use super::conntrack::{Entry, FlowId, Row, State, Table, Tuple};
use super::context::Ctx;
use super::listener::udp_upstream;
use super::nodeports::NodePorts;
use super::pace::Pacer;
use super::parked::{self, Parked};
use super::refusal::Refusal;
use super::route::Route;
use super::token::{self, FlowRef};
use crate::model::{FrontendKey, Protocol};
use crate::policy::{Ending, FlowInfo, Refused};

/// How long a retired flow (its endpoint stopped serving) still relays replies.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// A UDP flow's upstream socket and the nodePort socket it answers through.
struct UdpFlow {
    upstream: mio::net::UdpSocket,
    /// Index of the nodePort socket (among this worker's) replies leave from.
    listener: usize,
    /// Route the flow started on (metrics).
    route: Arc<Route>,
    /// The flow as its policy saw it.
    flow: FlowInfo,
}

/// A datagram parked (copied) until its flow's plugin is set up.
struct Datagram {
    listener: usize,
    key: FrontendKey,
    tuple: Tuple,
    data: Vec<u8>,
}

/// What a datagram without a flow led to.
enum Started {
    /// A new flow.
    Flow(FlowId),
    /// None: refused or undeliverable (counted).
    Refused,
    /// Its policy waits for a plugin setup: park the datagram.
    Pending,
}

/// A worker's UDP listeners and flows.
pub(super) struct Udp {
    listeners: NodePorts<mio::net::UdpSocket>,
    table: Table<UdpFlow>,
    batch: Box<Batch>,
    parked: Parked<Datagram>,
    /// Buffers of datagrams that were parked, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Yields the CPU to the receivers this worker woke before reading more.
    pacer: Pacer,
}

impl Udp {
    /// Nothing served yet.
    pub(super) fn new(cfg: &DataplaneConfig) -> Self {
        Self {
            listeners: NodePorts::new(Protocol::Udp),
            table: Table::new(cfg.max_flows_per_worker),
            batch: Box::new(Batch::new()),
            parked: Parked::new(parked::UDP),
            spare: Vec::new(),
            pacer: Pacer::default(),
        }
    }

    /// Flows tracked.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Starts serving a nodePort socket; datagrams already queued are served now.
    pub(super) fn add_listener(
        &mut self,
        ctx: &mut Ctx,
        id: u64,
        key: FrontendKey,
        u: std::net::UdpSocket,
    ) {
        let local = u.local_addr();
        let u = mio::net::UdpSocket::from_std(u);
        if let Some(idx) = (self.listeners).add(&ctx.registry, ctx.index, id, key, u, local) {
            self.receive(ctx, idx);
        }
    }

    /// Closes the socket with control id `id`, and the flows that answer through it (they
    /// are dead without it); false when it is not one of these.
    pub(super) fn remove_listener(&mut self, ctx: &mut Ctx, id: u64) -> bool {
        let Some(idx) = self.listeners.index_of(id) else {
            return false;
        };
        self.close_listener(ctx, idx);
        true
    }

    /// Closes every socket and the flows (shutdown).
    pub(super) fn close_listeners(&mut self, ctx: &mut Ctx) {
        for idx in self.listeners.indices() {
            self.close_listener(ctx, idx);
        }
    }

    fn close_listener(&mut self, ctx: &mut Ctx, idx: usize) {
        self.listeners.remove(&ctx.registry, idx);
        self.parked.drop_where(|d| d.listener == idx);
        self.close_where(ctx, |_, u| u.listener == idx);
    }

    /// Clears flows of `key` whose endpoint no longer serves (all of them when the frontend
    /// is gone), as kube-proxy clears stale UDP conntrack entries: the client's next datagram
    /// starts a new flow to a serving endpoint at once. Unlike a flushed kernel entry, the old
    /// flow is retired rather than closed, so a reply already on its way from the old endpoint
    /// still reaches the client during [`RETIRE_GRACE`] (a request in flight when its endpoint
    /// was removed is answered, not lost).
    pub(super) fn clear_flows(&mut self, ctx: &mut Ctx, key: FrontendKey, route: Option<&Route>) {
        let ids: Vec<FlowId> = (self.table.iter())
            .filter(|(_, e, _)| {
                e.frontend == key
                    && e.state != State::Retired
                    && !route.is_some_and(|r| r.frontend.is_serving(&e.endpoint))
            })
            .map(|(id, _, _)| id)
            .collect();
        let grace = match ctx.cfg.udp_timeout {
            t if t.is_zero() => RETIRE_GRACE,
            t => RETIRE_GRACE.min(t),
        };
        for id in ids {
            self.table.retire(id, ctx.now, grace);
        }
    }

    fn close_where(&mut self, ctx: &mut Ctx, doomed: impl Fn(&Entry, &UdpFlow) -> bool) {
        let ids: Vec<FlowId> = (self.table.iter())
            .filter(|(_, e, u)| doomed(e, u))
            .map(|(id, _, _)| id)
            .collect();
        for id in ids {
            self.close_flow(ctx, id, Ending::Closed);
        }
    }

    fn close_flow(&mut self, ctx: &mut Ctx, id: FlowId, ending: Ending) {
        if let Some((entry, u)) = self.table.remove(id) {
            ctx.ended(&u.route, &u.flow, &entry, ending);
        }
    }

    /// Idle flows, datagrams parked too long.
    pub(super) fn run_timers(&mut self, ctx: &mut Ctx) {
        if self.parked.overdue(ctx.now, ctx.cfg.park_limit()) {
            self.resume(ctx, false);
        }
        while let Some(id) = self.table.pop_expired(ctx.now) {
            self.close_flow(ctx, id, Ending::Closed);
        }
    }

    /// The earliest expiry.
    pub(super) fn next_deadline(&self, ctx: &Ctx) -> Option<Instant> {
        let parked = self.parked.next_deadline(ctx.cfg.park_limit());
        [parked, self.table.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Decides parked datagrams again: all of them (`all`, a setup came back) or those that
    /// waited their limit, which the failure policy now decides without waiting.
    pub(super) fn resume(&mut self, ctx: &mut Ctx, all: bool) {
        let limit = ctx.cfg.park_limit();
        let mut q = self.parked.take();
        for (since, d) in q.drain(..) {
            if !all && ctx.now < since + limit {
                self.parked.push(since, d);
                continue;
            }
            let id = match self.table.lookup(&d.tuple) {
                Some(id) => Some(id),
                None => {
                    ctx.policy.may_wait = self.parked.may_wait(since, ctx.now, limit);
                    match self.new_flow(ctx, d.listener, d.key, d.tuple) {
                        Started::Flow(id) => Some(id),
                        Started::Refused => None,
                        Started::Pending => {
                            self.parked.push(since, d);
                            continue;
                        }
                    }
                }
            };
            if let Some(id) = id {
                self.forward_parked(ctx, id, &d.data);
            }
            if self.spare.len() < parked::UDP {
                self.spare.push(d.data);
            }
        }
        self.parked.give_back(q);
    }

    /// Copies received datagram `i` aside until its flow's plugin is set up.
    fn park(&mut self, ctx: &Ctx, listener: usize, key: FrontendKey, tuple: Tuple, i: usize) {
        let mut data = self.spare.pop().unwrap_or_default();
        data.clear();
        data.extend_from_slice(self.batch.payload(i));
        let d = Datagram {
            listener,
            key,
            tuple,
            data,
        };
        self.parked.push(ctx.now, d);
    }

    /// This shard's flows, as the conntrack dump shows them.
    pub(super) fn rows<'a>(&'a self, ctx: &'a Ctx) -> impl Iterator<Item = Row> + 'a {
        (self.table.iter()).map(|(_, e, u)| ctx.row(e, &u.route, None))
    }

    /// Reads every queued datagram of nodePort socket `idx`, in batches, and forwards each run
    /// of consecutive datagrams of one flow with a single sendmmsg.
    pub(super) fn receive(&mut self, ctx: &mut Ctx, idx: usize) {
        self.pacer.before_read(ctx.now);
        loop {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let (key, local) = (l.key, l.local);
            let n = match self.batch.recv(l.sock.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(frontend = %key, error = %e, "nodePort receive error");
                    return;
                }
            };
            let mut run: Option<(FlowId, usize)> = None;
            for i in 0..n {
                let Some(r) = self.batch.meta(i) else {
                    continue;
                };
                let node = std::net::SocketAddr::new(r.to.unwrap_or(local.ip()), local.port());
                let tuple = Tuple {
                    protocol: Protocol::Udp,
                    client: r.from,
                    node,
                };
                let id = match self.table.lookup(&tuple) {
                    Some(id) => Some(id),
                    None => {
                        let limit = ctx.cfg.park_limit();
                        ctx.policy.may_wait = self.parked.may_wait(ctx.now, ctx.now, limit);
                        match self.new_flow(ctx, idx, key, tuple) {
                            Started::Flow(id) => Some(id),
                            Started::Refused => None,
                            Started::Pending => {
                                self.park(ctx, idx, key, tuple, i);
                                None
                            }
                        }
                    }
                };
                match (run, id) {
                    (Some((flow, _)), Some(id)) if flow == id => {}
                    _ => {
                        if let Some((flow, start)) = run.take() {
                            self.forward(ctx, flow, start..i);
                        }
                        run = id.map(|id| (id, i));
                    }
                }
            }
            if let Some((flow, start)) = run {
                self.forward(ctx, flow, start..n);
            }
            if n < BATCH {
                return; // the queue was drained: a new datagram raises a new edge
            }
            self.pacer.between_batches();
        }
    }

    fn new_flow(&mut self, ctx: &mut Ctx, idx: usize, key: FrontendKey, tuple: Tuple) -> Started {
        let Some(route) = ctx.routes.get(&key).cloned() else {
            return Started::Refused;
        };
        let flow = ctx.new_flow(key, tuple.client, tuple.node);
        let backends = route.backends(flow.family);
        let picked = (ctx.policy)
            .admit_datagram(&*route.policy, flow, backends)
            .and_then(|flow| {
                let endpoint = route.policy.pick(&mut ctx.policy, &flow, backends, &[])?;
                Ok((flow, endpoint))
            });
        let (flow, endpoint) = match picked {
            Ok(pair) => pair,
            Err(Refused::Pending) => return Started::Pending,
            Err(why) => {
                route.refuse(why);
                return Started::Refused;
            }
        };
        let source = ctx.source_for(&route, &tuple.client, &endpoint);
        let upstream = match udp_upstream(endpoint, source) {
            Ok(s) => mio::net::UdpSocket::from_std(s),
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "cannot open UDP socket to endpoint");
                route.metrics.refuse(Refusal::Dropped);
                return Started::Refused;
            }
        };
        if !ctx.take_slot() {
            route.metrics.refuse(Refusal::TableFull);
            return Started::Refused;
        }
        let (timeout, now) = (ctx.cfg.udp_timeout, ctx.now);
        let entry = Entry::new(tuple, key, endpoint, State::Unreplied, now, timeout);
        let u = UdpFlow {
            upstream,
            listener: idx,
            route,
            flow,
        };
        let (id, generation) = self.table.insert(entry, u, true);
        let token = token::flow(Protocol::Udp, id, generation, true);
        let Some((_, u)) = self.table.get_mut(id, generation) else {
            return Started::Refused;
        };
        if let Err(e) = (ctx.registry).register(&mut u.upstream, token, Interest::READABLE) {
            tracing::warn!(error = %e, "cannot watch UDP upstream socket");
            u.route.metrics.refuse(Refusal::Dropped);
            self.table.remove(id);
            ctx.release_slot();
            return Started::Refused;
        }
        u.route.metrics.flows.inc();
        u.route.metrics.active.inc();
        Started::Flow(id)
    }

    /// Sends received datagrams `range` to the flow's endpoint.
    fn forward(&mut self, ctx: &Ctx, id: FlowId, range: Range<usize>) {
        let Udp { table, batch, .. } = self;
        let Some((entry, u, _)) = table.get_by_id(id) else {
            return;
        };
        entry.last_seen = ctx.now;
        let count = range.len();
        let sent = (batch)
            .send(u.upstream.as_raw_fd(), range.clone(), None, None)
            .unwrap_or(0);
        let bytes = batch.bytes(range.start..range.start + sent);
        entry.orig.bytes += bytes;
        entry.orig.packets += sent as u64;
        u.route.metrics.bytes_in.inc_by(bytes);
        for _ in sent..count {
            u.route.metrics.refuse(Refusal::Dropped);
        }
    }

    /// Sends one parked datagram to the flow's endpoint.
    fn forward_parked(&mut self, ctx: &Ctx, id: FlowId, data: &[u8]) {
        let Some((entry, u, _)) = self.table.get_by_id(id) else {
            return;
        };
        entry.last_seen = ctx.now;
        match u.upstream.send(data) {
            Ok(n) => {
                entry.orig.bytes += n as u64;
                entry.orig.packets += 1;
                u.route.metrics.bytes_in.inc_by(n as u64);
            }
            Err(_) => u.route.metrics.refuse(Refusal::Dropped),
        }
    }

    /// Relays every reply queued on a flow's upstream socket back to the client, in batches,
    /// from the node address the client used.
    pub(super) fn reply(&mut self, ctx: &Ctx, f: FlowRef) {
        let Some(generation) = self.table.live(f.id, f.generation) else {
            return;
        };
        let Udp {
            table,
            listeners,
            batch,
            pacer,
            ..
        } = self;
        let Some((entry, u)) = table.get_mut(f.id, generation) else {
            return;
        };
        let Some(l) = listeners.get(u.listener) else {
            return;
        };
        let from = l.wildcard.then_some(entry.tuple.node.ip());
        let client = entry.tuple.client;
        pacer.before_read(ctx.now);
        loop {
            let n = match batch.recv(u.upstream.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // ICMP unreachable from the endpoint surfaces here: count, keep the flow.
                    u.route.metrics.refuse(Refusal::Dropped);
                    continue;
                }
            };
            if entry.state != State::Retired {
                entry.last_seen = ctx.now;
            }
            if entry.state == State::Unreplied {
                entry.state = State::Replied;
                entry.timeout = ctx.cfg.udp_stream_timeout;
            }
            let sent = (batch)
                .send(l.sock.as_raw_fd(), 0..n, Some(&client), from)
                .unwrap_or(0);
            let bytes = batch.bytes(0..sent);
            entry.reply.bytes += bytes;
            entry.reply.packets += sent as u64;
            u.route.metrics.bytes_out.inc_by(bytes);
            for _ in sent..n {
                u.route.metrics.refuse(Refusal::Dropped);
            }
            if n < BATCH {
                break;
            }
            pacer.between_batches();
        }
    }
}
