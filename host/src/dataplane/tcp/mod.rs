//! A worker's TCP side: its TCP nodePort sockets, its TCP conntrack shard and the relay
//! pools. Connections are accepted and placed (`accept`), connected to an endpoint with
//! bounded time and retries (`connect`), then relayed both ways with splice, honouring
//! half-close (`flow`). A reset on either side resets the other.
//!
//! The worker lends it a `Ctx` (routes, policy, clock, registry, peers); nothing here reaches
//! back into the worker.

mod accept;
mod connect;
mod flow;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::config::DataplaneConfig;
use super::conntrack::{FlowId, Row, Table};
use super::context::Ctx;
use super::control::Handoff;
use super::nodeports::NodePorts;
use super::parked::{self, Parked};
use super::relay::{Buffers, Pipe};
use super::token::FlowRef;
use crate::model::{FrontendKey, Protocol};
use crate::policy::Ending;
use flow::TcpFlow;

/// What the relay borrows beside a flow: pools and the copy buffer.
struct Pools {
    scratch: Box<[u8]>,
    buffers: Buffers,
    pipes: Vec<Pipe>,
    /// Relay with splice(2); cleared when the kernel turns out not to support it.
    splice: bool,
    /// Bytes a new pipe asks for.
    pipe_bytes: usize,
}

/// A TCP flow parked until its plugin's setup is back, at the step it waits in.
enum Waiting {
    /// Accepted, to be admitted.
    Admit(Handoff),
    /// Admitted, to be given its first endpoint.
    Start(Handoff),
    /// Tracked; a connect failed and the next endpoint is to be picked.
    Reconnect(FlowId, u32),
}

/// A worker's TCP listeners and flows.
pub(super) struct Tcp {
    parked: Parked<Waiting>,
    listeners: NodePorts<mio::net::TcpListener>,
    table: Table<TcpFlow>,
    connect_timers: BinaryHeap<Reverse<(Instant, FlowId, u32)>>,
    /// Listeners (by control id) to accept on again, and when.
    accept_retry: Vec<(Instant, u64)>,
    /// Last accept-failure warning (at most one a second).
    accept_warned: Option<Instant>,
    pools: Pools,
}

impl Tcp {
    /// Nothing served yet.
    pub(super) fn new(cfg: &DataplaneConfig) -> Self {
        Self {
            parked: Parked::new(parked::TCP),
            listeners: NodePorts::new(Protocol::Tcp),
            table: Table::new(cfg.max_flows_per_worker),
            connect_timers: BinaryHeap::new(),
            accept_retry: Vec::new(),
            accept_warned: None,
            pools: Pools {
                scratch: vec![0u8; 65536].into_boxed_slice(),
                buffers: Buffers::default(),
                pipes: Vec::new(),
                splice: cfg.splice,
                pipe_bytes: cfg.pipe_bytes,
            },
        }
    }

    /// Flows tracked.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Starts serving a listening socket; connections already queued are accepted now.
    pub(super) fn add_listener(
        &mut self,
        ctx: &mut Ctx,
        id: u64,
        key: FrontendKey,
        l: std::net::TcpListener,
    ) {
        let local = l.local_addr();
        let l = mio::net::TcpListener::from_std(l);
        if let Some(idx) = (self.listeners).add(&ctx.registry, ctx.index, id, key, l, local) {
            self.accept(ctx, idx);
        }
    }

    /// Closes the listener with control id `id`; false when it is not one of these.
    /// Established flows carry on: they do not need it.
    pub(super) fn remove_listener(&mut self, ctx: &Ctx, id: u64) -> bool {
        self.listeners
            .index_of(id)
            .is_some_and(|idx| self.listeners.remove(&ctx.registry, idx))
    }

    /// Closes every listener (shutdown).
    pub(super) fn close_listeners(&mut self, ctx: &Ctx) {
        for idx in self.listeners.indices() {
            self.listeners.remove(&ctx.registry, idx);
        }
    }

    /// Readiness on one of a flow's sockets.
    pub(super) fn ready(&mut self, ctx: &mut Ctx, f: FlowRef, ev: &mio::event::Event) {
        if let Some(generation) = self.table.live(f.id, f.generation) {
            self.flow_ready(ctx, f.id, generation, f.upstream, ev);
        }
    }

    /// Decides parked flows again: all of them (`all`, a setup came back) or those that
    /// waited their limit, which the failure policy now decides without waiting.
    pub(super) fn resume(&mut self, ctx: &mut Ctx, all: bool) {
        let limit = ctx.cfg.park_limit();
        let mut q = self.parked.take();
        for (since, w) in q.drain(..) {
            if !all && ctx.now < since + limit {
                self.parked.push(since, w);
                continue;
            }
            match w {
                Waiting::Admit(h) => match ctx.routes.get(&h.flow.frontend).cloned() {
                    Some(route) => self.admit(ctx, route, h, since),
                    None => flow::reset(&h.stream),
                },
                Waiting::Start(h) => self.start_at(ctx, h, since),
                Waiting::Reconnect(id, generation) => self.reconnect(ctx, id, generation, since),
            }
        }
        self.parked.give_back(q);
    }

    /// Whether a flow parked since `since` may wait (on), told to the policy before it decides.
    fn may_wait(&self, ctx: &mut Ctx, since: std::time::Instant) {
        ctx.policy.may_wait = (self.parked).may_wait(since, ctx.now, ctx.cfg.park_limit());
    }

    /// Expired connects, listeners due for another accept, flows parked too long, idle flows.
    pub(super) fn run_timers(&mut self, ctx: &mut Ctx) {
        if self.parked.overdue(ctx.now, ctx.cfg.park_limit()) {
            self.resume(ctx, false);
        }
        while let Some(Reverse((deadline, id, generation))) = self.connect_timers.peek().copied() {
            if deadline > ctx.now {
                break;
            }
            self.connect_timers.pop();
            self.connect_timed_out(ctx, id, generation);
        }
        if !self.accept_retry.is_empty() {
            let now = ctx.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.accept_retry.drain(..).partition(|(t, _)| *t <= now);
            self.accept_retry = later;
            for (_, id) in due {
                if let Some(idx) = self.listeners.index_of(id) {
                    self.accept(ctx, idx);
                }
            }
        }
        while let Some(id) = self.table.pop_expired(ctx.now) {
            self.close_flow(ctx, id, Ending::Closed);
        }
    }

    /// The earliest timer, so the worker knows how long it may sleep.
    pub(super) fn next_deadline(&self, ctx: &Ctx) -> Option<Instant> {
        let connect = self.connect_timers.peek().map(|Reverse((d, _, _))| *d);
        let retry = self.accept_retry.iter().map(|(t, _)| *t).min();
        let parked = self.parked.next_deadline(ctx.cfg.park_limit());
        [connect, retry, parked, self.table.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Ends a flow: sockets close, pipes go back to the pool, and the worker's context
    /// learns that it ended.
    fn close_flow(&mut self, ctx: &mut Ctx, id: FlowId, ending: Ending) {
        let Some((entry, t)) = self.table.remove(id) else {
            return;
        };
        ctx.add_load(-1);
        ctx.ended(&t.route, &t.flow, &entry, ending);
        t.release(&mut self.pools.pipes, &mut self.pools.buffers);
    }

    /// Ends a flow with RST on both sides.
    fn abort(&mut self, ctx: &mut Ctx, id: FlowId, ending: Ending) {
        if let Some((_, t, _)) = self.table.get_by_id(id) {
            t.reset_both();
        }
        self.close_flow(ctx, id, ending);
    }

    /// This shard's flows, as the conntrack dump shows them.
    pub(super) fn rows<'a>(&'a self, ctx: &'a Ctx) -> impl Iterator<Item = Row> + 'a {
        (self.table.iter()).map(|(_, e, t)| ctx.row(e, &t.route, t.segments()))
    }
}
