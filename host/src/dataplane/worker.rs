//! A dataplane worker: one thread, one mio event loop, its own TCP and UDP shards. Nothing
//! here is shared with other workers except the hand-off queues (accepted TCP connections)
//! and the control queue (route swaps, listeners, dumps, shutdown).
//!
//! The worker owns the loop, the timers' schedule and the control messages; `tcp` and `udp`
//! own their sockets and flows, and get the worker's `Ctx` lent for each call.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::{Events, Poll};

use super::config::DataplaneConfig;
use super::conntrack::Row;
use super::context::Ctx;
use super::control::{Control, Handoff, ListenerSocket, Parts, Peer};
use super::tcp::Tcp;
use super::token::{self, Ready};
use super::udp::Udp;
use super::wake::Wake;
use crate::model::Protocol;
use crate::plugin::WorkerInstances;
use crate::policy::PolicyState;

/// How often idle affinity entries and refused UDP tuples are swept.
const AFFINITY_SWEEP: Duration = Duration::from_secs(30);

/// The worker state; `run` is its thread body.
pub struct Worker {
    ctx: Ctx,
    poll: Poll,
    tcp: Tcp,
    udp: Udp,
    control: Receiver<Control>,
    inbox: Receiver<Handoff>,
    /// This worker's own waker (its entry in the peers).
    wake: Arc<Wake>,
    shutdown: Option<Instant>,
    next_sweep: Instant,
}

impl Worker {
    /// Builds a worker from its parts; `peers` includes itself at `index`.
    pub fn new(
        index: usize,
        cfg: Arc<DataplaneConfig>,
        parts: Parts,
        peers: Arc<[Peer]>,
    ) -> io::Result<Self> {
        let now = Instant::now();
        // Plugin setups run on the setup threads; their outcome comes back as a control message.
        let me = peers[index].clone();
        let reply: crate::plugin::setup::Reply = Arc::new(move |done| {
            me.send(Control::PluginSetup(Box::new(done)));
        });
        let plugins = WorkerInstances::off_worker(cfg.plugins.clone(), index, reply);
        let plugins = Box::new(plugins);
        let policy = PolicyState::new(index, plugins, now);
        let registry = parts.poll.registry().try_clone()?;
        let wake = peers[index].waker.clone();
        Ok(Self {
            wake,
            tcp: Tcp::new(&cfg),
            udp: Udp::new(&cfg),
            ctx: Ctx::new(index, cfg, registry, policy, peers, now),
            poll: parts.poll,
            control: parts.control,
            inbox: parts.inbox,
            shutdown: None,
            next_sweep: now + AFFINITY_SWEEP,
        })
    }

    /// The event loop. Returns when shut down and drained (or the grace period ran out).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.poll_timeout();
            // Senders write the eventfd only to a worker about to sleep (see `wake`); a
            // poll that will not block need not tell them.
            let queued = || !self.control.is_empty() || !self.inbox.is_empty();
            if !timeout.is_zero() && !self.wake.may_sleep(queued) {
                timeout = Duration::ZERO;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.ctx.index, error = %e, "poll failed; worker stops");
                    return;
                }
            }
            self.wake.woke();
            self.ctx.set_now(Instant::now());
            let ctx = &mut self.ctx;
            for ev in events.iter() {
                match token::decode(ev.token()) {
                    Ready::Waker => {}
                    Ready::Listener(Protocol::Tcp, idx) => self.tcp.accept(ctx, idx),
                    Ready::Listener(Protocol::Udp, idx) => self.udp.receive(ctx, idx),
                    Ready::Flow(Protocol::Tcp, f) => self.tcp.ready(ctx, f, ev),
                    Ready::Flow(Protocol::Udp, f) if f.upstream => self.udp.reply(ctx, f),
                    Ready::Flow(Protocol::Udp, _) => {}
                }
            }
            self.drain_control();
            while let Ok(h) = self.inbox.try_recv() {
                self.tcp.start(&mut self.ctx, h);
            }
            self.run_timers();
            if let Some(deadline) = self.shutdown {
                let left = self.tcp.len() + self.udp.len();
                if left == 0 || self.ctx.now >= deadline {
                    if left > 0 {
                        tracing::warn!(
                            worker = self.ctx.index,
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
        let now = self.ctx.now;
        let next = [
            Some(now + Duration::from_secs(1)),
            self.tcp.next_deadline(&self.ctx),
            self.udp.next_deadline(&self.ctx),
            self.shutdown,
        ];
        let next = next.into_iter().flatten().min().unwrap_or(now);
        // Measured from the loop's clock reading: one clock read per round (it can be a real
        // syscall on VMs); sleeping a little long only delays timers by the round's work.
        next.saturating_duration_since(now)
    }

    fn run_timers(&mut self) {
        self.tcp.run_timers(&mut self.ctx);
        self.udp.run_timers(&mut self.ctx);
        if self.ctx.now >= self.next_sweep {
            self.next_sweep = self.ctx.now + AFFINITY_SWEEP;
            self.ctx.policy.sweep();
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
                        self.on_control(Control::Shutdown(self.ctx.now));
                    }
                    return;
                }
            }
        }
    }

    fn on_control(&mut self, msg: Control) {
        let ctx = &mut self.ctx;
        match msg {
            Control::Route(key, Some(route)) => {
                let old = ctx.routes.insert(key, route.clone());
                let forget = old.is_some() && route.forget_affinity;
                let old_policy = old.as_ref().map(|o| &o.policy);
                (ctx.policy).replace(key, old_policy, Some(&route.policy), forget);
                // Only an endpoint that stopped serving costs a scan of the shard.
                let lost = old.as_ref().is_some_and(|o| {
                    (o.frontend.serving.iter()).any(|a| !route.frontend.is_serving(a))
                });
                if lost {
                    self.udp.clear_flows(ctx, key, Some(&route));
                }
            }
            Control::Route(key, None) => {
                let old = ctx.routes.remove(&key);
                let old_policy = old.as_ref().map(|o| &o.policy);
                ctx.policy.replace(key, old_policy, None, true);
                self.udp.clear_flows(ctx, key, None);
            }
            Control::AddListener { id, key, socket } => match socket {
                ListenerSocket::Tcp(l) => self.tcp.add_listener(ctx, id, key, l),
                ListenerSocket::Udp(u) => self.udp.add_listener(ctx, id, key, u),
            },
            Control::RemoveListener { id, done } => {
                if !self.tcp.remove_listener(ctx, id) {
                    self.udp.remove_listener(ctx, id);
                }
                let _ = done.send(());
            }
            Control::NodeIps(ips) => self.ctx.node_ips = ips,
            Control::Dump(reply) => {
                let _ = reply.send(self.dump());
            }
            Control::Barrier(done) => {
                let _ = done.send(());
            }
            Control::PluginSetup(done) => {
                ctx.policy.setup_done(*done);
                self.tcp.resume(ctx, true);
                self.udp.resume(ctx, true);
                ctx.policy.settled();
            }
            Control::Shutdown(deadline) => {
                self.tcp.close_listeners(ctx);
                self.udp.close_listeners(ctx);
                self.shutdown = Some(deadline);
            }
        }
    }

    fn dump(&self) -> Vec<Row> {
        let tcp = self.tcp.rows(&self.ctx);
        tcp.chain(self.udp.rows(&self.ctx)).collect()
    }
}
