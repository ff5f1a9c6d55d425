//! Accepting on a TCP nodePort: admit each connection through its route's policy (parked
//! while its plugin is being set up) and place it on the worker that will carry it (this
//! one, or a peer through its hand-off queue).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flow::reset;
use super::{Tcp, Waiting};
use crate::dataplane::context::Ctx;
use crate::dataplane::control::Handoff;
use crate::dataplane::refusal::Refusal;
use crate::dataplane::route::Route;
use crate::policy::Refused;

/// Pause before accepting again after accept failed for lack of resources.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Connections accepted per listener before other events get their turn.
const ACCEPT_BATCH: usize = 64;

impl Tcp {
    /// Accepts the pending connections of listener `idx` and routes each to its carrier. After
    /// ACCEPT_BATCH it yields to the other events and comes back on the next round, so a
    /// connection storm on one port cannot starve established flows.
    pub(in crate::dataplane) fn accept(&mut self, ctx: &mut Ctx, idx: usize) {
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let (key, family) = (l.key, l.family);
            let (stream, client) = match l.sock.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors or memory: connections stay queued, and with
                    // edge-triggered readiness no new event may come for them. Try again soon.
                    if (self.accept_warned).is_none_or(|t| ctx.now >= t + Duration::from_secs(1)) {
                        tracing::warn!(worker = ctx.index, frontend = %key, error = %e, "accept failed; retrying");
                        self.accept_warned = Some(ctx.now);
                    }
                    self.accept_retry.push((ctx.now + ACCEPT_RETRY, l.id));
                    return;
                }
            };
            // A listener bound to one address names the node address itself; only a
            // wildcard one needs getsockname to say which address the client reached.
            let node = if l.local.ip().is_unspecified() {
                stream.local_addr().unwrap_or(l.local)
            } else {
                l.local
            };
            let Some(route) = ctx.routes.get(&key).cloned() else {
                reset(&stream);
                continue;
            };
            if route.frontend.backends(family).is_empty() {
                route.metrics.refuse(Refusal::NoEndpoint);
                reset(&stream);
                continue;
            }
            let flow = ctx.new_flow(key, client, node);
            self.admit(ctx, route, Handoff { stream, flow }, ctx.now);
        }
        // Batch used up: more may be queued, and no new edge will say so.
        if let Some(l) = self.listeners.get(idx) {
            self.accept_retry.push((ctx.now, l.id));
        }
    }

    /// Admits an accepted connection (waiting since `since`) through its route's policy and
    /// hands it to its carrier; parked while its plugin is being set up.
    pub(super) fn admit(&mut self, ctx: &mut Ctx, route: Arc<Route>, h: Handoff, since: Instant) {
        self.may_wait(ctx, since);
        let flow = match route.policy.admit(&mut ctx.policy, h.flow, None) {
            Ok(flow) => flow,
            Err(Refused::Pending) => {
                self.parked.push(since, Waiting::Admit(h));
                return;
            }
            Err(why) => {
                route.refuse(why);
                reset(&h.stream);
                return;
            }
        };
        let h = Handoff {
            stream: h.stream,
            flow,
        };
        let target = ctx.carrier(&route, &flow);
        if target == ctx.index {
            self.start(ctx, h);
            return;
        }
        let peer = &ctx.peers[target];
        match peer.handoff.try_send(h) {
            Ok(()) => {
                let _ = peer.waker.wake();
            }
            // That worker is backed up: carry the flow here rather than drop it.
            Err(e) => self.start(ctx, e.into_inner()),
        }
    }
}
