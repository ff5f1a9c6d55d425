//! A TCP flow's sockets and relay state, and the relay itself: each ready direction is pumped
//! (copy, then splice once it carries bulk data), half-closes are passed on once a direction
//! is drained, and a flow whose both directions are shut is closed.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::{Pools, Tcp};
use crate::dataplane::conntrack::{Counters, FlowId, State};
use crate::dataplane::context::Ctx;
use crate::dataplane::relay::{splice_unsupported, Buffers, Closed, Conduit, Pipe};
use crate::dataplane::route::Route;
use crate::policy::{Ending, FlowInfo};

/// One direction of a relay.
struct Half {
    conduit: Option<Conduit>,
    /// What readiness said about the source's end: its FIN (a short read reaches EOF) or
    /// a failure (read on until it shows).
    src_closed: Closed,
    eof: bool,
    shut: bool,
}

impl Half {
    /// The source reached EOF and everything read was written: time to pass the FIN on.
    fn drained(&self) -> bool {
        self.eof && !self.shut && self.conduit.as_ref().is_some_and(|c| c.pending() == 0)
    }

    /// Bytes wait for the destination: only then does its writability matter. (Without
    /// them a writable edge, which comes with every readable one, would read the source
    /// for nothing: an EAGAIN per request.)
    fn stalled(&self) -> bool {
        self.conduit.as_ref().is_some_and(|c| c.pending() > 0)
    }

    fn new() -> Self {
        Self {
            conduit: None,
            src_closed: Closed::No,
            eof: false,
            shut: false,
        }
    }
}

pub(super) enum Phase {
    /// Waiting for the endpoint to accept; `tried` holds endpoints that failed.
    Connecting { tried: Vec<SocketAddr> },
    /// A connect failed and the next pick waits for its plugin's setup (parked).
    Waiting { tried: Vec<SocketAddr> },
    /// Bytes flow both ways.
    Relaying,
}

/// A TCP flow's sockets and relay state.
pub(super) struct TcpFlow {
    pub(super) client: mio::net::TcpStream,
    pub(super) upstream: mio::net::TcpStream,
    pub(super) phase: Phase,
    up: Half,
    down: Half,
    /// The flow as first seen (its id, hash and affinity key serve retries).
    pub(super) flow: FlowInfo,
    /// The route the flow started on: its metrics, and endpoints for retries.
    pub(super) route: Arc<Route>,
}

impl TcpFlow {
    /// A flow whose connect to the endpoint has started.
    pub(super) fn new(
        client: mio::net::TcpStream,
        upstream: mio::net::TcpStream,
        phase: Phase,
        flow: FlowInfo,
        route: Arc<Route>,
    ) -> Self {
        Self {
            client,
            upstream,
            phase,
            up: Half::new(),
            down: Half::new(),
            flow,
            route,
        }
    }

    /// The endpoint accepted: directions start by copy and move to splice once they carry
    /// bulk data.
    pub(super) fn start_relaying(&mut self) {
        self.phase = Phase::Relaying;
        self.up.conduit = Some(Conduit::copy());
        self.down.conduit = Some(Conduit::copy());
    }

    /// A connect to another endpoint replaces the failed socket (closed here). What the
    /// failed socket's readiness said about its end must not carry over: a stale FIN would
    /// end the new endpoint's stream at its first short read.
    pub(super) fn reconnect(&mut self, stream: mio::net::TcpStream, tried: Vec<SocketAddr>) {
        self.upstream = stream;
        self.down = Half::new();
        self.phase = Phase::Connecting { tried };
    }

    /// Resets both sides (the flow is aborted).
    pub(super) fn reset_both(&self) {
        reset(&self.client);
        reset(&self.upstream);
    }

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
pub(super) fn reset(stream: &mio::net::TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

impl Tcp {
    /// Readiness on one of a flow's sockets.
    pub(super) fn flow_ready(
        &mut self,
        ctx: &mut Ctx,
        id: FlowId,
        generation: u32,
        upstream: bool,
        ev: &mio::event::Event,
    ) {
        let Some((_, t)) = self.table.get_mut(id, generation) else {
            return;
        };
        // A FIN that came with the last data raises no further edge: remember it, whatever
        // the phase, so the relay reads through to EOF.
        let half = if upstream { &mut t.down } else { &mut t.up };
        if ev.is_error() {
            half.src_closed = Closed::Error;
        } else if ev.is_read_closed() && half.src_closed == Closed::No {
            half.src_closed = Closed::Fin;
        }
        match t.phase {
            Phase::Connecting { .. } if upstream => {
                self.connect_progress(ctx, id, generation, ev);
                return;
            }
            // Client bytes wait in its socket: the relay reads them once connected.
            Phase::Connecting { .. } | Phase::Waiting { .. } => return,
            Phase::Relaying => {}
        }
        // Which directions can move: reading a side feeds the other; writing to a side
        // drains bytes that wait for it, if any. A source with nothing waiting is read only on
        // its own readable edge (a short read or EAGAIN ended the last pump, so new data
        // raises one).
        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
        let writable = ev.is_writable() || ev.is_error();
        let (up, down) = if upstream {
            (writable && t.up.stalled(), readable)
        } else {
            (readable, writable && t.down.stalled())
        };
        self.relay(ctx, id, generation, up, down);
    }

    /// Pumps the ready directions, then half-closes, finishes or aborts the flow.
    pub(super) fn relay(
        &mut self,
        ctx: &mut Ctx,
        id: FlowId,
        generation: u32,
        up: bool,
        down: bool,
    ) {
        let Tcp { table, pools, .. } = self;
        let Some((entry, t)) = table.get_mut(id, generation) else {
            return;
        };
        let client = t.client.as_raw_fd();
        let upstream = t.upstream.as_raw_fd();
        let mut result = Ok(());
        if up {
            let metric = &t.route.metrics.bytes_in;
            result = pools.pump(&mut t.up, client, upstream, &mut entry.orig, metric);
        }
        if down && result.is_ok() {
            let metric = &t.route.metrics.bytes_out;
            result = pools.pump(&mut t.down, upstream, client, &mut entry.reply, metric);
        }
        entry.last_seen = ctx.now;
        if let Err(e) = result {
            if splice_unsupported(&e) && pools.splice {
                tracing::warn!(error = %e, "splice unavailable; relaying by copy from now on");
                pools.splice = false;
            }
            self.abort(ctx, id, Ending::Reset);
            return;
        }
        let (up_done, down_done) = (t.up.shut || t.up.drained(), t.down.shut || t.down.drained());
        if up_done && down_done {
            // Both sides reached EOF and everything is written: closing the sockets sends
            // the FINs still owed (their receive queues are empty, so no reset), without a
            // shutdown first (two system calls per connection).
            self.close_flow(ctx, id, Ending::Closed);
            return;
        }
        if t.up.drained() {
            let _ = t.upstream.shutdown(std::net::Shutdown::Write);
            t.up.shut = true;
        }
        if t.down.drained() {
            let _ = t.client.shutdown(std::net::Shutdown::Write);
            t.down.shut = true;
        }
        if t.up.shut && t.down.shut {
            self.close_flow(ctx, id, Ending::Closed);
        } else if t.up.shut || t.down.shut {
            entry.state = State::FinWait;
        }
    }
}

impl Pools {
    /// Moves what one direction can move now; switches it to splice once it carries bulk.
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
            &mut self.scratch,
            &mut self.buffers,
        )?;
        half.eof = p.eof;
        if p.bytes > 0 {
            counters.bytes += p.bytes;
            counters.packets += 1;
            metric.inc_by(p.bytes);
        }
        if p.bulk && self.splice && !conduit.is_splice() && conduit.pending() == 0 && !half.eof {
            let pipe = match self.pipes.pop() {
                Some(p) => Ok(p),
                None => Pipe::new(self.pipe_bytes),
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
