//! UDP flows: one per client address and nodePort, each with its own connected socket to the
//! endpoint. Datagrams from the client go out on that socket; replies come back on it and
//! leave from the nodePort socket with the address the client used. Idle flows expire (30 s
//! until the endpoint answers, the longer stream timeout after).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use mio::Interest;

use super::conntrack::{Counters, Entry, FlowId, State, Tuple};
use super::listener::udp_upstream;
use super::pktinfo;
use super::worker::{flow_token, FlowIo, Sock, Worker};
use super::Route;
use crate::admin::metrics::Refusal;
use crate::balance::FlowInfo;
use crate::model::Protocol;

/// A UDP flow's upstream socket and the nodePort socket it answers through.
pub struct UdpFlow {
    upstream: mio::net::UdpSocket,
    /// Index of the nodePort socket (in this worker) replies leave from.
    pub(super) listener: usize,
    /// Route the flow started on (metrics).
    pub(super) route: Arc<Route>,
}

impl Worker {
    /// Reads every queued datagram of a nodePort socket and forwards each.
    pub(super) fn udp_receive(&mut self, idx: usize) {
        loop {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let Sock::Udp(sock) = &l.sock else { return };
            let r = match pktinfo::recv(sock.as_raw_fd(), &mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(frontend = %l.key, error = %e, "nodePort receive error");
                    continue;
                }
            };
            let node = std::net::SocketAddr::new(r.to.unwrap_or(l.local.ip()), l.local.port());
            let tuple = Tuple {
                protocol: Protocol::Udp,
                client: r.from,
                node,
            };
            let id = match self.table.lookup(&tuple) {
                Some(id) => id,
                None => match self.new_udp_flow(idx, tuple) {
                    Some(id) => id,
                    None => continue,
                },
            };
            self.udp_forward(id, r.len);
        }
    }

    fn new_udp_flow(&mut self, idx: usize, tuple: Tuple) -> Option<FlowId> {
        let l = self.listeners.get(idx)?;
        let (key, family) = (l.key, l.family);
        let route = self.routes.get(&key).cloned()?;
        let flow = FlowInfo {
            frontend: key,
            client: tuple.client,
            node: tuple.node,
        };
        let Some(endpoint) = self.pick(&route, family, &flow, &[]) else {
            route.metrics.refuse(Refusal::NoEndpoint);
            return None;
        };
        let upstream = match udp_upstream(endpoint) {
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
            self.close_flow(id);
            return None;
        }
        metrics.flows.inc();
        metrics.active.inc();
        Some(id)
    }

    /// Sends the datagram in the worker buffer to the flow's endpoint.
    fn udp_forward(&mut self, id: FlowId, len: usize) {
        let now = self.now;
        let Some((entry, FlowIo::Udp(u), _)) = self.table.get_by_id(id) else {
            return;
        };
        entry.last_seen = now;
        match u.upstream.send(&self.buf[..len]) {
            Ok(_) => {
                entry.orig.bytes += len as u64;
                entry.orig.packets += 1;
                u.route.metrics.bytes_in.inc_by(len as u64);
            }
            Err(_) => u.route.metrics.refuse(Refusal::Dropped),
        }
    }

    /// Relays every reply queued on a flow's upstream socket back to the client.
    pub(super) fn udp_reply(&mut self, id: FlowId, generation: u32) {
        let now = self.now;
        let stream_timeout = self.cfg.udp_stream_timeout;
        let Worker {
            table,
            listeners,
            buf,
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
        loop {
            let n = match u.upstream.recv(buf) {
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
            match pktinfo::send(nodeport.as_raw_fd(), &buf[..n], from, &entry.tuple.client) {
                Ok(_) => {
                    entry.reply.bytes += n as u64;
                    entry.reply.packets += 1;
                    u.route.metrics.bytes_out.inc_by(n as u64);
                }
                Err(_) => u.route.metrics.refuse(Refusal::Dropped),
            }
        }
    }
}
