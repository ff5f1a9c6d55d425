//! TCP flows: accept on a nodePort, connect to an endpoint (bounded time, retry on another
//! endpoint), then relay both directions with splice, honouring half-close. A reset on either
//! side resets the other.

use std::cmp::Reverse;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::Interest;

use super::conntrack::{Counters, Entry, FlowId, State, Tuple};
use super::control::Handoff;
use super::listener::tcp_connect;
use super::refusal::Refusal;
use super::relay::{splice_unsupported, Buffers, Conduit, Pipe};
use super::worker::{flow_token, FlowIo, Sock, Worker};
use super::Route;
use crate::model::Protocol;
use crate::policy::{Ending, FlowInfo};

/// Pause before accepting again after accept failed for lack of resources.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Connections accepted per listener before other events get their turn.
const ACCEPT_BATCH: usize = 64;

/// One direction of a relay.
struct Half {
    conduit: Option<Conduit>,
    /// The source has sent FIN (or failed): read until EOF, a short read proves nothing.
    src_closed: bool,
    eof: bool,
    shut: bool,
}

impl Half {
    fn new() -> Self {
        Self {
            conduit: None,
            src_closed: false,
            eof: false,
            shut: false,
        }
    }
}

enum Phase {
    /// Waiting for the endpoint to accept; `tried` holds endpoints that failed.
    Connecting { tried: Vec<SocketAddr> },
    /// Bytes flow both ways.
    Relaying,
}

/// A TCP flow's sockets and relay state.
pub struct TcpFlow {
    client: mio::net::TcpStream,
    upstream: mio::net::TcpStream,
    phase: Phase,
    up: Half,
    down: Half,
    /// The flow as first seen (its id, hash and affinity key serve retries).
    pub(super) flow: FlowInfo,
    /// The route the flow started on: its metrics, and endpoints for retries.
    pub(super) route: Arc<Route>,
}

impl TcpFlow {
    /// Gives pipes and buffers back to the worker's pools.
    pub(super) fn release(self, pipes: &mut Vec<Pipe>, buffers: &mut Buffers) {
        for c in [self.up.conduit, self.down.conduit].into_iter().flatten() {
            c.release(pipes, buffers);
        }
    }

    /// Segments received from the client and from the endpoint, from TCP_INFO.
    pub(super) fn segments(&self) -> Option<(u64, u64)> {
        Some((segs_in(&self.client)?, segs_in(&self.upstream)?))
    }
}

fn segs_in(s: &impl AsRawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_segs_in as u64)
    }
}

/// Closes a client with RST: what a refused connection looks like once accepted.
fn reset(stream: &mio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

impl Worker {
    /// Accepts the pending connections of a TCP listener and routes each to its carrier. After
    /// ACCEPT_BATCH it yields to the other events and comes back on the next round, so a
    /// connection storm on one port cannot starve established flows.
    pub(super) fn accept(&mut self, idx: usize) {
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let Sock::Tcp(sock) = &l.sock else { return };
            let (key, family) = (l.key, l.family);
            let (stream, client) = match sock.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors or memory: connections stay queued, and with
                    // edge-triggered readiness no new event may come for them. Try again soon.
                    if self
                        .accept_warned
                        .is_none_or(|t| self.now >= t + Duration::from_secs(1))
                    {
                        tracing::warn!(worker = self.index, frontend = %key, error = %e, "accept failed; retrying");
                        self.accept_warned = Some(self.now);
                    }
                    let id = l.id;
                    self.accept_retry.push((self.now + ACCEPT_RETRY, id));
                    return;
                }
            };
            let node = stream.local_addr().unwrap_or(l.local);
            let Some(route) = self.routes.get(&key).cloned() else {
                reset(&stream);
                continue;
            };
            if route.frontend.backends(family).is_empty() {
                route.metrics.refuse(Refusal::NoEndpoint);
                reset(&stream);
                continue;
            }
            let flow = self.new_flow(key, client, node);
            let flow = match route.policy.admit(&mut self.policy, flow) {
                Ok(flow) => flow,
                Err(why) => {
                    route.refuse(why);
                    reset(&stream);
                    continue;
                }
            };
            let h = Handoff { stream, flow };
            let target = self.carrier(&route, &flow);
            if target == self.index {
                self.start_tcp(h);
                continue;
            }
            let peer = &self.peers[target];
            match peer.handoff.try_send(h) {
                Ok(()) => {
                    let _ = peer.waker.wake();
                }
                // That worker is backed up: carry the flow here rather than drop it.
                Err(e) => self.start_tcp(e.into_inner()),
            }
        }
        // Batch used up: more may be queued, and no new edge will say so.
        if let Some(l) = self.listeners.get(idx) {
            self.accept_retry.push((self.now, l.id));
        }
    }

    /// Starts a flow for an accepted connection: pick, connect, track.
    pub(super) fn start_tcp(&mut self, h: Handoff) {
        let flow = h.flow;
        let Some(route) = self.routes.get(&flow.frontend).cloned() else {
            reset(&h.stream);
            return;
        };
        let mut tried = Vec::new();
        let (endpoint, upstream) = match self.connect_next(&route, &flow, &mut tried) {
            Ok(pair) => pair,
            Err(why) => {
                route.metrics.refuse(why);
                reset(&h.stream);
                return;
            }
        };
        let _ = h.stream.set_nodelay(true);
        let entry = Entry {
            tuple: Tuple {
                protocol: Protocol::Tcp,
                client: flow.client,
                node: flow.node,
            },
            frontend: flow.frontend,
            endpoint,
            state: State::SynSent,
            started: self.now,
            last_seen: self.now,
            timeout: self.cfg.tcp_idle_timeout,
            orig: Counters::default(),
            reply: Counters::default(),
        };
        let metrics = route.metrics.clone();
        let io = FlowIo::Tcp(TcpFlow {
            client: h.stream,
            upstream,
            phase: Phase::Connecting { tried },
            up: Half::new(),
            down: Half::new(),
            flow,
            route,
        });
        let Some((id, generation)) = self.table.insert(entry, io, false) else {
            metrics.refuse(Refusal::TableFull);
            return; // dropping the io closes both sockets
        };
        metrics.flows.inc();
        metrics.active.inc();
        self.peers[self.index].load.add(1);
        if self.register_tcp(id, generation).is_err() {
            self.abort(id, Ending::Reset);
            return;
        }
        self.arm_connect_timer(id, generation);
    }

    /// Picks endpoints (never one in `tried`) and starts a connect to the first that takes
    /// one, until `--connect-attempts` endpoints were tried. Failures are added to `tried`;
    /// Err is why the flow is refused.
    fn connect_next(
        &mut self,
        route: &Route,
        flow: &FlowInfo,
        tried: &mut Vec<SocketAddr>,
    ) -> Result<(SocketAddr, mio::net::TcpStream), Refusal> {
        let backends = route.backends(flow.family);
        while tried.len() < self.cfg.connect_attempts {
            let addr = match route.policy.pick(&mut self.policy, flow, backends, tried) {
                Ok(addr) => addr,
                Err(crate::policy::Refused::NoEndpoint) if !tried.is_empty() => break,
                Err(why) => return Err(why.into()),
            };
            match tcp_connect(addr, self.source_for(route, &flow.client, &addr)) {
                Ok(s) => return Ok((addr, mio::net::TcpStream::from_std(s))),
                Err(e) => {
                    tracing::debug!(endpoint = %addr, error = %e, "connect failed at once");
                    tried.push(addr);
                }
            }
        }
        Err(Refusal::ConnectFailed)
    }

    fn arm_connect_timer(&mut self, id: FlowId, generation: u32) {
        self.connect_timers.push(Reverse((
            self.now + self.cfg.connect_timeout,
            id,
            generation,
        )));
    }

    fn register_tcp(&mut self, id: FlowId, generation: u32) -> io::Result<()> {
        // Borrowed apart from the table: cloning the registry would dup the epoll descriptor
        // (a system call) for every new flow.
        let Worker { poll, table, .. } = self;
        let registry = poll.registry();
        let Some((_, FlowIo::Tcp(t))) = table.get_mut(id, generation) else {
            return Ok(());
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        registry.register(&mut t.client, flow_token(id, generation, false), both)?;
        registry.register(&mut t.upstream, flow_token(id, generation, true), both)
    }

    /// Readiness on one of a flow's sockets.
    pub(super) fn tcp_ready(
        &mut self,
        id: FlowId,
        generation: u32,
        upstream: bool,
        ev: &mio::event::Event,
    ) {
        let Some((_, FlowIo::Tcp(t))) = self.table.get_mut(id, generation) else {
            return;
        };
        // A FIN that came with the last data raises no further edge: remember it, whatever
        // the phase, so the relay reads through to EOF.
        if ev.is_read_closed() || ev.is_error() {
            if upstream {
                t.down.src_closed = true;
            } else {
                t.up.src_closed = true;
            }
        }
        if matches!(t.phase, Phase::Connecting { .. }) {
            if upstream {
                self.connect_progress(id, generation);
            }
            return;
        }
        // Which directions can move: reading a side feeds the other, writing drains into it.
        let (up, down) = if upstream {
            (
                ev.is_writable() || ev.is_error(),
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            )
        } else {
            (
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                ev.is_writable() || ev.is_error(),
            )
        };
        self.relay(id, generation, up, down);
    }

    /// The upstream socket became writable (or failed) while connecting.
    fn connect_progress(&mut self, id: FlowId, generation: u32) {
        let Some((_, FlowIo::Tcp(t))) = self.table.get_mut(id, generation) else {
            return;
        };
        let outcome = match t.upstream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match t.upstream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(()) => self.established(id, generation),
            Err(e) => self.retry(id, generation, e),
        }
    }

    pub(super) fn connect_timed_out(&mut self, id: FlowId, generation: u32) {
        if matches!(
            self.table.get_mut(id, generation),
            Some((
                _,
                FlowIo::Tcp(TcpFlow {
                    phase: Phase::Connecting { .. },
                    ..
                })
            ))
        ) {
            self.retry(id, generation, io::Error::from(io::ErrorKind::TimedOut));
        }
    }

    /// A connect failed: try another endpoint, or reset the client when none is left.
    fn retry(&mut self, id: FlowId, generation: u32, error: io::Error) {
        let Some((entry, FlowIo::Tcp(t))) = self.table.get_mut(id, generation) else {
            return;
        };
        let failed = entry.endpoint;
        let Phase::Connecting { tried } = &mut t.phase else {
            return;
        };
        tried.push(failed);
        tracing::debug!(endpoint = %failed, service = %t.route.frontend.service, %error, "connect to endpoint failed");
        let tried = tried.clone();
        // Retry among the endpoints as they are now, not as they were when the flow began.
        let route = self
            .routes
            .get(&entry.frontend)
            .cloned()
            .unwrap_or_else(|| t.route.clone());
        let flow = t.flow;
        let mut tried_now = tried;
        let next = self.connect_next(&route, &flow, &mut tried_now);
        let Ok((addr, mut stream)) = next.map_err(|why| route.metrics.refuse(why)) else {
            tracing::info!(service = %route.frontend.service, client = %flow.client, "no endpoint accepted the connection; resetting client");
            self.abort(id, Ending::ConnectFailed);
            return;
        };
        let Worker { poll, table, .. } = self;
        let Some((entry, FlowIo::Tcp(t))) = table.get_mut(id, generation) else {
            return;
        };
        entry.endpoint = addr;
        let ok = poll.registry().register(
            &mut stream,
            flow_token(id, generation, true),
            Interest::READABLE | Interest::WRITABLE,
        );
        t.upstream = stream; // the failed socket closes here
        t.phase = Phase::Connecting { tried: tried_now };
        if ok.is_err() {
            self.abort(id, Ending::Reset);
            return;
        }
        self.arm_connect_timer(id, generation);
    }

    fn established(&mut self, id: FlowId, generation: u32) {
        let Some((entry, FlowIo::Tcp(t))) = self.table.get_mut(id, generation) else {
            return;
        };
        entry.state = State::Established;
        t.phase = Phase::Relaying;
        // Directions start by copy and move to splice once they carry bulk data.
        t.up.conduit = Some(Conduit::copy());
        t.down.conduit = Some(Conduit::copy());
        // Edges that arrived while connecting were not acted on: move what is there now.
        self.relay(id, generation, true, true);
    }

    /// Pumps the ready directions, then half-closes, finishes or aborts the flow.
    fn relay(&mut self, id: FlowId, generation: u32, up: bool, down: bool) {
        let now = self.now;
        let Worker {
            table,
            buf,
            buffers,
            pipes,
            splice,
            ..
        } = self;
        let Some((entry, FlowIo::Tcp(t))) = table.get_mut(id, generation) else {
            return;
        };
        let client = t.client.as_raw_fd();
        let upstream = t.upstream.as_raw_fd();
        let mut io = Io {
            scratch: buf,
            buffers,
            pipes,
            splice,
        };
        let mut result = Ok(());
        if up {
            result = io.pump(
                &mut t.up,
                client,
                upstream,
                &mut entry.orig,
                &t.route.metrics.bytes_in,
            );
        }
        if down && result.is_ok() {
            result = io.pump(
                &mut t.down,
                upstream,
                client,
                &mut entry.reply,
                &t.route.metrics.bytes_out,
            );
        }
        entry.last_seen = now;
        if let Err(e) = result {
            if splice_unsupported(&e) && self.splice {
                tracing::warn!(error = %e, "splice unavailable; relaying by copy from now on");
                self.splice = false;
            }
            self.abort(id, Ending::Reset);
            return;
        }
        if t.up.eof && !t.up.shut && t.up.conduit.as_ref().is_some_and(|c| c.pending() == 0) {
            let _ = t.upstream.shutdown(std::net::Shutdown::Write);
            t.up.shut = true;
        }
        if t.down.eof && !t.down.shut && t.down.conduit.as_ref().is_some_and(|c| c.pending() == 0) {
            let _ = t.client.shutdown(std::net::Shutdown::Write);
            t.down.shut = true;
        }
        if t.up.shut && t.down.shut {
            self.close_flow(id, Ending::Closed);
        } else if t.up.shut || t.down.shut {
            entry.state = State::FinWait;
        }
    }

    /// Ends a flow with RST on both sides.
    pub(super) fn abort(&mut self, id: FlowId, ending: Ending) {
        if let Some((_, FlowIo::Tcp(t), _)) = self.table.get_by_id(id) {
            reset(&t.client);
            reset(&t.upstream);
        }
        self.close_flow(id, ending);
    }
}

/// The worker's relay resources, borrowed apart from its flow table.
struct Io<'a> {
    scratch: &'a mut [u8],
    buffers: &'a mut Buffers,
    pipes: &'a mut Vec<Pipe>,
    splice: &'a bool,
}

impl Io<'_> {
    fn pump(
        &mut self,
        half: &mut Half,
        src: RawFd,
        dst: RawFd,
        counters: &mut Counters,
        metric: &prometheus_client::metrics::counter::Counter,
    ) -> io::Result<()> {
        let Some(conduit) = half.conduit.as_mut() else {
            return Ok(());
        };
        if half.shut {
            return Ok(());
        }
        let p = conduit.pump(
            src,
            dst,
            half.eof,
            half.src_closed,
            self.scratch,
            self.buffers,
        )?;
        half.eof = p.eof;
        if p.bytes > 0 {
            counters.bytes += p.bytes;
            counters.packets += 1;
            metric.inc_by(p.bytes);
        }
        if p.bulk && *self.splice && !conduit.is_splice() && conduit.pending() == 0 && !half.eof {
            let pipe = match self.pipes.pop() {
                Some(p) => Ok(p),
                None => Pipe::new(),
            };
            if let Ok(pipe) = pipe {
                *conduit = Conduit::splice(pipe);
                // The socket may still hold data: the next edge might never come.
                return self.pump(half, src, dst, counters, metric);
            }
        }
        Ok(())
    }
}
