//! UDP flows: one per client address and nodePort, each with its own connected socket to the
//! endpoint. Datagrams from the client go out on that socket; replies come back on it and
//! leave from the nodePort socket with the address the client used. Idle flows expire (30 s
//! until the endpoint answers, the longer stream timeout after).

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use mio::Interest;

use super::batch::BATCH;
use super::conntrack::{Counters, Entry, FlowId, State, Tuple};
use super::listener::udp_upstream;
use super::refusal::Refusal;
use super::worker::{flow_token, FlowIo, Sock, Worker};
use super::Route;
use crate::model::Protocol;
use crate::policy::{Ending, FlowInfo};

/// A UDP flow's upstream socket and the nodePort socket it answers through.
pub struct UdpFlow {
    upstream: mio::net::UdpSocket,
    /// Index of the nodePort socket (in this worker) replies leave from.
    pub(super) listener: usize,
    /// Route the flow started on (metrics).
    pub(super) route: Arc<Route>,
    /// The flow as its policy saw it.
    pub(super) flow: FlowInfo,
}

impl Worker {
    /// Reads every queued datagram of a nodePort socket, in batches, and forwards each run of
    /// consecutive datagrams of one flow with a single sendmmsg.
    pub(super) fn udp_receive(&mut self, idx: usize) {
        loop {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let Sock::Udp(sock) = &l.sock else { return };
            let (key, local) = (l.key, l.local);
            let n = match self.batch.recv(sock.as_raw_fd()) {
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
                    None => self.new_udp_flow(idx, tuple),
                };
                match (run, id) {
                    (Some((flow, _)), Some(id)) if flow == id => {}
                    _ => {
                        if let Some((flow, start)) = run.take() {
                            self.udp_forward(flow, start..i);
                        }
                        run = id.map(|id| (id, i));
                    }
                }
            }
            if let Some((flow, start)) = run {
                self.udp_forward(flow, start..n);
            }
            if n < BATCH {
                return; // the queue was drained: a new datagram raises a new edge
            }
        }
    }

    fn new_udp_flow(&mut self, idx: usize, tuple: Tuple) -> Option<FlowId> {
        let l = self.listeners.get(idx)?;
        let key = l.key;
        let route = self.routes.get(&key).cloned()?;
        let flow = self.new_flow(key, tuple.client, tuple.node);
        let backends = route.backends(flow.family);
        let picked = self
            .policy
            .admit_datagram(&*route.policy, flow)
            .and_then(|flow| {
                let endpoint = route.policy.pick(&mut self.policy, &flow, backends, &[])?;
                Ok((flow, endpoint))
            });
        let (flow, endpoint) = match picked {
            Ok(pair) => pair,
            Err(why) => {
                route.refuse(why);
                return None;
            }
        };
        let upstream =
            match udp_upstream(endpoint, self.source_for(&route, &tuple.client, &endpoint)) {
                Ok(s) => mio::net::UdpSocket::from_std(s),
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "cannot open UDP socket to endpoint");
                    route.metrics.refuse(Refusal::Dropped);
                    return None;
                }
            };
        let entry = Entry {
            tuple,
            frontend: key,
            endpoint,
            state: State::Unreplied,
            started: self.now,
            last_seen: self.now,
            timeout: self.cfg.udp_timeout,
            orig: Counters::default(),
            reply: Counters::default(),
        };
        let metrics = route.metrics.clone();
        let io = FlowIo::Udp(UdpFlow {
            upstream,
            listener: idx,
            route,
            flow,
        });
        let Some((id, generation)) = self.table.insert(entry, io, true) else {
            metrics.refuse(Refusal::TableFull);
            return None;
        };
        let registry = self.poll.registry();
        let Some((_, FlowIo::Udp(u))) = self.table.get_mut(id, generation) else {
            return None;
        };
        if let Err(e) = registry.register(
            &mut u.upstream,
            flow_token(id, generation, true),
            Interest::READABLE,
        ) {
            tracing::warn!(error = %e, "cannot watch UDP upstream socket");
            self.close_flow(id, Ending::Closed);
            return None;
        }
        metrics.flows.inc();
        metrics.active.inc();
        Some(id)
    }

    /// Sends received datagrams `range` to the flow's endpoint.
    fn udp_forward(&mut self, id: FlowId, range: Range<usize>) {
        let now = self.now;
        let Worker { table, batch, .. } = self;
        let Some((entry, FlowIo::Udp(u), _)) = table.get_by_id(id) else {
            return;
        };
        entry.last_seen = now;
        let count = range.len();
        let sent = batch
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

    /// Relays every reply queued on a flow's upstream socket back to the client, in batches,
    /// from the node address the client used.
    pub(super) fn udp_reply(&mut self, id: FlowId, generation: u32) {
        let now = self.now;
        let stream_timeout = self.cfg.udp_stream_timeout;
        let Worker {
            table,
            listeners,
            batch,
            ..
        } = self;
        let Some((entry, FlowIo::Udp(u))) = table.get_mut(id, generation) else {
            return;
        };
        let Some(l) = listeners.get(u.listener) else {
            return;
        };
        let Sock::Udp(nodeport) = &l.sock else { return };
        let from = l.wildcard.then_some(entry.tuple.node.ip());
        let client = entry.tuple.client;
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
            entry.last_seen = now;
            if entry.state == State::Unreplied {
                entry.state = State::Replied;
                entry.timeout = stream_timeout;
            }
            let sent = batch
                .send(nodeport.as_raw_fd(), 0..n, Some(&client), from)
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
        }
    }
}
