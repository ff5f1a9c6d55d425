//! Connecting a new TCP flow to an endpoint: its policy picks, a non-blocking connect starts,
//! and a timer bounds it. A failed or timed-out connect asks the policy again, never for an
//! endpoint already tried, until `--connect-attempts` were used; then the client is reset.
//! A pick that waits for its plugin's setup parks the connection (see `parked`).

use std::cmp::Reverse;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::Interest;

use super::flow::{reset, Phase, TcpFlow};
use super::{Tcp, Waiting};
use crate::dataplane::conntrack::{Entry, FlowId, State, Tuple};
use crate::dataplane::context::Ctx;
use crate::dataplane::control::Handoff;
use crate::dataplane::listener::tcp_connect;
use crate::dataplane::proxy_header::ProxyHeader;
use crate::dataplane::refusal::Refusal;
use crate::dataplane::route::Route;
use crate::dataplane::token;
use crate::model::Protocol;
use crate::policy::{Ending, FlowInfo, Refused};

fn flow_token(id: FlowId, generation: u32, upstream: bool) -> mio::Token {
    token::flow(Protocol::Tcp, id, generation, upstream)
}

impl Tcp {
    /// Starts a flow for an accepted (and admitted) connection: pick, connect, track.
    pub(in crate::dataplane) fn start(&mut self, ctx: &mut Ctx, h: Handoff) {
        self.start_at(ctx, h, ctx.now);
    }

    /// [`Self::start`] for a connection waiting since `since`; parked while its plugin is
    /// being set up.
    pub(super) fn start_at(&mut self, ctx: &mut Ctx, h: Handoff, since: Instant) {
        let flow = h.flow;
        let Some(route) = ctx.routes.get(&flow.frontend).cloned() else {
            reset(&h.stream);
            return;
        };
        if !ctx.take_slot() {
            route.metrics.refuse(Refusal::TableFull);
            reset(&h.stream);
            return;
        }
        let mut tried = Vec::new();
        self.may_wait(ctx, since);
        let (endpoint, upstream) = match connect_next(ctx, &route, &flow, &mut tried) {
            Ok(pair) => pair,
            Err(Stop::Pending) => {
                ctx.release_slot();
                self.parked.push(since, Waiting::Start(h));
                return;
            }
            Err(Stop::Refused(why)) => {
                route.metrics.refuse(why);
                reset(&h.stream);
                // The place taken was never used by a flow.
                ctx.release_slot();
                return;
            }
        };
        let tuple = Tuple {
            protocol: Protocol::Tcp,
            client: flow.client,
            node: flow.node,
        };
        let timeout = ctx.cfg.tcp_idle_timeout;
        let entry = Entry::new(
            tuple,
            flow.frontend,
            endpoint,
            State::SynSent,
            ctx.now,
            timeout,
        );
        route.metrics.flows.inc();
        route.metrics.active.inc();
        ctx.add_load(1);
        let t = TcpFlow::new(h.stream, upstream, Phase::Connecting { tried }, flow, route);
        let (id, generation) = self.table.insert(entry, t, false);
        if self.register(ctx, id, generation).is_err() {
            self.abort(ctx, id, Ending::Reset);
            return;
        }
        self.arm_connect_timer(ctx, id, generation);
    }

    fn arm_connect_timer(&mut self, ctx: &Ctx, id: FlowId, generation: u32) {
        let deadline = ctx.now + ctx.cfg.connect_timeout;
        self.connect_timers
            .push(Reverse((deadline, id, generation)));
    }

    fn register(&mut self, ctx: &Ctx, id: FlowId, generation: u32) -> io::Result<()> {
        let Some((_, t)) = self.table.get_mut(id, generation) else {
            return Ok(());
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let r = &ctx.registry;
        r.register(&mut t.client, flow_token(id, generation, false), both)?;
        r.register(&mut t.upstream, flow_token(id, generation, true), both)
    }

    /// The upstream socket became writable (or failed) while connecting. Linux raises
    /// EPOLLOUT on a connecting socket only once it is connected, and EPOLLERR / EPOLLHUP
    /// when the connect failed: a writable event without either is the success, with no
    /// system call to confirm it (getsockopt and getpeername were two per connection).
    pub(super) fn connect_progress(
        &mut self,
        ctx: &mut Ctx,
        id: FlowId,
        generation: u32,
        ev: &mio::event::Event,
    ) {
        let Some((_, t)) = self.table.get_mut(id, generation) else {
            return;
        };
        let failed = ev.is_error() || ev.is_write_closed();
        if !failed && !ev.is_writable() {
            return; // not yet
        }
        let outcome = if failed {
            match t.upstream.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => Err(io::Error::from(io::ErrorKind::ConnectionReset)),
            }
        } else {
            Ok(())
        };
        match outcome {
            Ok(()) => self.established(ctx, id, generation),
            Err(e) => self.retry(ctx, id, generation, e),
        }
    }

    pub(super) fn connect_timed_out(&mut self, ctx: &mut Ctx, id: FlowId, generation: u32) {
        let connecting = self
            .table
            .get_mut(id, generation)
            .is_some_and(|(_, t)| matches!(t.phase, Phase::Connecting { .. }));
        if connecting {
            let e = io::Error::from(io::ErrorKind::TimedOut);
            self.retry(ctx, id, generation, e);
        }
    }

    /// A connect failed: try another endpoint, or reset the client when none is left.
    fn retry(&mut self, ctx: &mut Ctx, id: FlowId, generation: u32, error: io::Error) {
        let Some((entry, t)) = self.table.get_mut(id, generation) else {
            return;
        };
        let failed = entry.endpoint;
        let Phase::Connecting { tried } = &mut t.phase else {
            return;
        };
        tried.push(failed);
        tracing::debug!(endpoint = %failed, service = %t.route.frontend.service, %error, "connect to endpoint failed");
        t.phase = Phase::Waiting {
            tried: std::mem::take(tried),
        };
        self.reconnect(ctx, id, generation, ctx.now);
    }

    /// Connects a flow whose connect failed (waiting since `since`) to its next endpoint,
    /// or resets the client when none is left; parked while its plugin is being set up.
    pub(super) fn reconnect(&mut self, ctx: &mut Ctx, id: FlowId, generation: u32, since: Instant) {
        self.may_wait(ctx, since);
        let Some((entry, t)) = self.table.get_mut(id, generation) else {
            return;
        };
        let Phase::Waiting { tried } = &mut t.phase else {
            return;
        };
        let mut tried = std::mem::take(tried);
        // Retry among the endpoints as they are now, not as they were when the flow began.
        let route = (ctx.routes.get(&entry.frontend).cloned()).unwrap_or_else(|| t.route.clone());
        let flow = t.flow;
        let (addr, mut stream) = match connect_next(ctx, &route, &flow, &mut tried) {
            Ok(pair) => pair,
            Err(Stop::Pending) => {
                if let Some((_, t)) = self.table.get_mut(id, generation) {
                    t.phase = Phase::Waiting { tried };
                    self.parked.push(since, Waiting::Reconnect(id, generation));
                }
                return;
            }
            Err(Stop::Refused(why)) => {
                route.metrics.refuse(why);
                tracing::info!(service = %route.frontend.service, client = %flow.client, "no endpoint accepted the connection; resetting client");
                self.abort(ctx, id, Ending::ConnectFailed);
                return;
            }
        };
        let Some((entry, t)) = self.table.get_mut(id, generation) else {
            return;
        };
        entry.endpoint = addr;
        let ok = ctx.registry.register(
            &mut stream,
            flow_token(id, generation, true),
            Interest::READABLE | Interest::WRITABLE,
        );
        t.reconnect(stream, tried);
        if ok.is_err() {
            self.abort(ctx, id, Ending::Reset);
            return;
        }
        self.arm_connect_timer(ctx, id, generation);
    }

    fn established(&mut self, ctx: &mut Ctx, id: FlowId, generation: u32) {
        let Some((entry, t)) = self.table.get_mut(id, generation) else {
            return;
        };
        if t.route.frontend.proxy_protocol {
            // Before any client byte: on a socket that just connected the send buffer is
            // empty, so the whole header goes or the connection is broken.
            let header = ProxyHeader::v2(t.flow.client, t.flow.node);
            match (&t.upstream).write(header.bytes()) {
                Ok(n) if n == header.bytes().len() => {}
                outcome => {
                    tracing::debug!(endpoint = %entry.endpoint, ?outcome, "cannot send the PROXY header");
                    self.abort(ctx, id, Ending::Reset);
                    return;
                }
            }
        }
        entry.state = State::Established;
        t.start_relaying();
        // Edges that arrived while connecting were not acted on: move what is there now.
        self.relay(ctx, id, generation, true, true);
    }
}

/// Why no connect was started.
enum Stop {
    /// The policy waits for its plugin's setup: park the flow.
    Pending,
    /// The flow is refused.
    Refused(Refusal),
}

/// Picks endpoints (never one in `tried`) and starts a connect to the first that takes one,
/// until `--connect-attempts` endpoints were tried. Failures are added to `tried`.
fn connect_next(
    ctx: &mut Ctx,
    route: &Route,
    flow: &FlowInfo,
    tried: &mut Vec<SocketAddr>,
) -> Result<(SocketAddr, mio::net::TcpStream), Stop> {
    let backends = route.backends(flow.family);
    while tried.len() < ctx.cfg.connect_attempts {
        let addr = match route.policy.pick(&mut ctx.policy, flow, backends, tried) {
            Ok(addr) => addr,
            Err(Refused::Pending) => return Err(Stop::Pending),
            Err(Refused::NoEndpoint) if !tried.is_empty() => break,
            Err(why) => return Err(Stop::Refused(why.into())),
        };
        match tcp_connect(addr, ctx.source_for(route, &flow.client, &addr)) {
            Ok(s) => return Ok((addr, mio::net::TcpStream::from_std(s))),
            Err(e) => {
                tracing::debug!(endpoint = %addr, error = %e, "connect failed at once");
                tried.push(addr);
            }
        }
    }
    Err(Stop::Refused(Refusal::ConnectFailed))
}
