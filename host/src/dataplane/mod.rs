//! The dataplane: worker threads that carry flows, and the control-side handle that programs
//! them. The control side owns socket lifecycle (bind errors surface here, naming the Service);
//! workers own flows. Routes reach workers as immutable `Arc<Route>` swaps, per frontend.

pub mod batch;
pub mod config;
pub mod conntrack;
mod context;
pub mod control;
pub mod listener;
mod nodeports;
mod pace;
mod parked;
mod pipe;
pub mod pktinfo;
mod proxy_header;
pub mod refusal;
pub mod relay;
pub mod route;
mod series;
pub mod steer;
mod tcp;
mod token;
pub mod transparent;
mod udp;
mod wake;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::model::{Frontend, FrontendKey, Protocol};
pub use config::DataplaneConfig;
use conntrack::Row;
use control::{ask_all, Control, ListenerSocket, Peer};
use listener::BindAddresses;
pub use refusal::Refusal;
pub use route::Route;
use worker::Worker;

enum SocketState {
    /// Handed to worker `owner` under control id `id`; a spread UDP nodePort has one member
    /// per worker (in the order the group's steering counts them).
    Serving(Vec<Member>),
    /// TCP, no endpoint: bound, not listening (SYN gets RST).
    Held(socket2::Socket),
    /// UDP, no endpoint: closed, so the kernel answers ICMP port unreachable.
    Closed,
}

/// One socket of a served nodePort: its control id and the worker that owns it.
#[derive(Clone, Copy)]
struct Member {
    id: u64,
    owner: usize,
}

struct NodePortSocket {
    addr: SocketAddr,
    state: SocketState,
    /// Served by every worker (a spread UDP nodePort).
    spread: bool,
}

struct Programmed {
    route: Arc<Route>,
    sockets: Vec<NodePortSocket>,
}

/// The control-side handle of the dataplane.
pub struct Dataplane {
    peers: Arc<[Peer]>,
    threads: Vec<JoinHandle<()>>,
    programmed: HashMap<FrontendKey, Programmed>,
    next_id: u64,
    metrics: Arc<Metrics>,
    open_sockets: i64,
    /// Node addresses in use (re-read by `refresh_addresses`).
    bind: BindAddresses,
    /// The node's own addresses the workers know, when source preservation needs them.
    own: Option<OwnAddresses>,
}

/// The node's own addresses, from its interfaces (re-read with the nodePort addresses) and
/// from its Node object (the API source), as told to the workers.
#[derive(Default)]
struct OwnAddresses {
    interfaces: Vec<std::net::IpAddr>,
    node: Vec<std::net::IpAddr>,
    told: Vec<std::net::IpAddr>,
}

impl OwnAddresses {
    /// Their union, when it differs from what the workers were told last.
    fn changed(&mut self) -> Option<Arc<[std::net::IpAddr]>> {
        let mut all: Vec<_> = self.interfaces.iter().chain(&self.node).copied().collect();
        all.sort();
        all.dedup();
        if all == self.told {
            return None;
        }
        self.told = all.clone();
        Some(all.into())
    }
}

/// A cheap handle for reading the conntrack table from another thread (the admin server).
#[derive(Clone)]
pub struct ConntrackReader {
    peers: Arc<[Peer]>,
}

impl ConntrackReader {
    /// Every worker's flows. Blocks for at most a second per worker.
    pub fn dump(&self) -> Vec<Row> {
        let parts = ask_all(&self.peers, Control::Dump, Duration::from_secs(1));
        parts.into_iter().flatten().collect()
    }
}

impl Dataplane {
    /// Starts the workers.
    pub fn start(cfg: DataplaneConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let bind = cfg.bind.clone();
        let own = (cfg.preserve_source_v4 || cfg.preserve_source_v6).then(|| {
            let mut own = OwnAddresses {
                interfaces: cfg.node_ips.clone(),
                ..Default::default()
            };
            own.changed();
            own
        });
        let cfg = Arc::new(cfg);
        let mut parts = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..cfg.workers.max(1) {
            let (p, peer) = control::parts()?;
            parts.push(p);
            peers.push(peer);
        }
        let peers: Arc<[Peer]> = peers.into();
        let mut threads = Vec::new();
        for (i, p) in parts.into_iter().enumerate() {
            let w = Worker::new(i, cfg.clone(), p, peers.clone())?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("nodeportd-worker-{i}"))
                    .spawn(move || w.run())?,
            );
        }
        Ok(Self {
            peers,
            threads,
            programmed: HashMap::new(),
            next_id: 1,
            metrics,
            open_sockets: 0,
            bind,
            own,
        })
    }

    /// A reader for the conntrack dump.
    pub fn conntrack(&self) -> ConntrackReader {
        ConntrackReader {
            peers: self.peers.clone(),
        }
    }

    /// The frontend currently programmed for `key`.
    pub fn programmed(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.programmed.get(key).map(|p| &p.route.frontend)
    }

    fn owner(&self, key: &FrontendKey, addr: &SocketAddr) -> usize {
        let spread = key.node_port as usize
            + (key.protocol == Protocol::Udp) as usize
            + addr.is_ipv6() as usize;
        spread % self.peers.len()
    }

    fn broadcast(&self, key: FrontendKey, route: Option<Arc<Route>>) {
        for p in self.peers.iter() {
            p.send(Control::Route(key, route.clone()));
        }
    }

    /// Programs a frontend (new or changed). Its sockets are bound, held or closed to match
    /// its endpoints. Err names what could not be bound; a new frontend is then not
    /// programmed at all, an existing one keeps what it had, except a UDP port whose spread
    /// changed: its old socket is closed first, so it stays down until a retry binds it.
    pub fn upsert(
        &mut self,
        frontend: Frontend,
        chain: Option<Arc<crate::plugin::Chain>>,
    ) -> Result<(), String> {
        let key = frontend.key;
        let metrics = self.metrics.frontend(&(&frontend).into());
        let previous = self.programmed.get(&key).map(|p| &*p.route);
        let route = Arc::new(Route::new(frontend, metrics, chain, previous));
        let spread = route.frontend.spread && self.peers.len() > 1;
        let wanted: Vec<(SocketAddr, bool)> = route
            .frontend
            .families
            .iter()
            .flat_map(|fam| {
                let serve = !route.frontend.backends(*fam).is_empty();
                self.bind
                    .of(*fam)
                    .iter()
                    .map(move |ip| (SocketAddr::new(*ip, key.node_port), serve))
            })
            .collect();
        let existing = self.programmed.remove(&key);
        let is_new = existing.is_none();
        let old_chain = existing.as_ref().and_then(|p| p.route.chain.clone());
        let mut old: Vec<NodePortSocket> = existing.map(|p| p.sockets).unwrap_or_default();
        // Workers learn the route before any socket that needs it.
        self.broadcast(key, Some(route.clone()));
        let mut sockets = Vec::new();
        let mut errors = Vec::new();
        for (addr, serve) in wanted {
            let prev = old
                .iter()
                .position(|s| s.addr == addr)
                .map(|i| old.swap_remove(i));
            match self.converge(key, addr, serve, spread, prev) {
                Ok(s) => sockets.push(s),
                Err(e) => errors.push(format!("{addr} ({}): {e}", key.protocol)),
            }
        }
        for s in old {
            self.close_socket(s);
        }
        if !errors.is_empty() && is_new {
            for s in sockets {
                self.close_socket(s);
            }
            self.broadcast(key, None);
            series::forget(&self.metrics, &route.frontend, route.chain.as_deref());
            return Err(format!("cannot bind nodePort: {}", errors.join("; ")));
        }
        let (old, new) = (old_chain.as_deref(), route.chain.as_deref());
        series::switch_plugins(&self.metrics, &route.frontend, old, new);
        self.programmed.insert(key, Programmed { route, sockets });
        self.metrics.listeners.set(self.open_sockets);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("cannot bind nodePort: {}", errors.join("; ")))
        }
    }

    /// Re-reads the node addresses (with --nodeport-addresses) and, when they changed,
    /// rebinds every frontend on the new set. Returns what could not be bound.
    pub fn refresh_addresses(&mut self) -> Vec<String> {
        if let Some(own) = &mut self.own {
            match listener::node_ips() {
                Ok(ips) => own.interfaces = ips,
                Err(e) => tracing::warn!(error = %e, "cannot read the node's addresses"),
            }
            self.tell_own_addresses();
        }
        let now = match self.bind.refresh() {
            Ok(Some(now)) => now,
            Ok(None) => return Vec::new(),
            Err(e) => return vec![format!("cannot read node addresses: {e}")],
        };
        tracing::info!(v4 = ?now.of(crate::model::Family::V4), v6 = ?now.of(crate::model::Family::V6), "node addresses changed; rebinding nodePorts");
        self.bind = now;
        let frontends: Vec<_> = self
            .programmed
            .values()
            .map(|p| (p.route.frontend.clone(), p.route.chain.clone()))
            .collect();
        frontends
            .into_iter()
            .filter_map(|(fe, chain)| {
                let name = format!("Service {} port {:?}", fe.service, fe.port_name);
                self.upsert(fe, chain).err().map(|e| format!("{name}: {e}"))
            })
            .collect()
    }

    /// The node's addresses from its Node object (`status.addresses`): with those of its
    /// interfaces, endpoints there are host-network (no source preservation for them).
    pub fn set_node_addresses(&mut self, ips: Vec<std::net::IpAddr>) {
        if let Some(own) = &mut self.own {
            own.node = ips;
            self.tell_own_addresses();
        }
    }

    fn tell_own_addresses(&mut self) {
        if let Some(ips) = self.own.as_mut().and_then(OwnAddresses::changed) {
            tracing::info!(addresses = ?ips, "node's own addresses (host-network endpoints)");
            for p in self.peers.iter() {
                p.send(Control::NodeIps(ips.clone()));
            }
        }
    }

    /// Removes a frontend: its sockets close (the port is released), its UDP flows are
    /// cleared, its TCP flows finish.
    pub fn remove(&mut self, key: &FrontendKey) {
        if let Some(p) = self.programmed.remove(key) {
            for s in p.sockets {
                self.close_socket(s);
            }
            self.broadcast(*key, None);
            series::forget(&self.metrics, &p.route.frontend, p.route.chain.as_deref());
            self.metrics.listeners.set(self.open_sockets);
        }
    }

    /// Brings one socket to the wanted state from `prev`. A UDP nodePort that changes between
    /// one socket and a spread group is closed and bound again (its flows are re-steered).
    fn converge(
        &mut self,
        key: FrontendKey,
        addr: SocketAddr,
        serve: bool,
        spread: bool,
        prev: Option<NodePortSocket>,
    ) -> std::io::Result<NodePortSocket> {
        let spread = spread && key.protocol == Protocol::Udp;
        let state = match prev {
            Some(p) if p.spread != spread && matches!(p.state, SocketState::Serving(_)) => {
                self.close_socket(p);
                SocketState::Closed
            }
            Some(p) => p.state,
            None => SocketState::Closed,
        };
        let state = match (state, serve, key.protocol) {
            (s @ SocketState::Serving(_), true, _) => s,
            (SocketState::Serving(members), false, proto) => {
                self.unserve(&members);
                match proto {
                    Protocol::Tcp => self.hold(addr)?,
                    Protocol::Udp => SocketState::Closed,
                }
            }
            (SocketState::Held(s), true, _) => {
                self.serve(key, addr, ListenerSocket::Tcp(listener::tcp_listen(s)?))
            }
            (SocketState::Held(s), false, _) => SocketState::Held(s),
            (SocketState::Closed, true, Protocol::Tcp) => {
                let s = listener::tcp_hold(addr)?;
                self.open_sockets += 1;
                match listener::tcp_listen(s) {
                    Ok(l) => self.serve(key, addr, ListenerSocket::Tcp(l)),
                    Err(e) => {
                        self.open_sockets -= 1;
                        return Err(e);
                    }
                }
            }
            (SocketState::Closed, true, Protocol::Udp) if spread => {
                match listener::udp_group(addr, self.peers.len()) {
                    Ok(group) => {
                        self.open_sockets += group.len() as i64;
                        self.serve_group(key, group)
                    }
                    // A port another process holds fails the same way alone: say that.
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e),
                    Err(e) => {
                        tracing::warn!(frontend = %key, %addr, error = %e, "cannot spread the UDP nodePort over workers; serving it from one socket");
                        let s = listener::udp_bind(addr)?;
                        self.open_sockets += 1;
                        self.serve(key, addr, ListenerSocket::Udp(s))
                    }
                }
            }
            (SocketState::Closed, true, Protocol::Udp) => {
                let s = listener::udp_bind(addr)?;
                self.open_sockets += 1;
                self.serve(key, addr, ListenerSocket::Udp(s))
            }
            (SocketState::Closed, false, Protocol::Tcp) => self.hold(addr)?,
            (SocketState::Closed, false, Protocol::Udp) => SocketState::Closed,
        };
        Ok(NodePortSocket {
            addr,
            state,
            spread,
        })
    }

    fn hold(&mut self, addr: SocketAddr) -> std::io::Result<SocketState> {
        let s = listener::tcp_hold(addr)?;
        self.open_sockets += 1;
        Ok(SocketState::Held(s))
    }

    fn serve(&mut self, key: FrontendKey, addr: SocketAddr, socket: ListenerSocket) -> SocketState {
        let owner = self.owner(&key, &addr);
        SocketState::Serving(vec![self.hand(key, owner, socket)])
    }

    /// A spread group: socket `i` to worker `i`, as the steering program counts them.
    fn serve_group(&mut self, key: FrontendKey, group: Vec<std::net::UdpSocket>) -> SocketState {
        let members = group
            .into_iter()
            .enumerate()
            .map(|(owner, s)| self.hand(key, owner, ListenerSocket::Udp(s)))
            .collect();
        SocketState::Serving(members)
    }

    /// Hands `socket` to worker `owner` under a new control id.
    fn hand(&mut self, key: FrontendKey, owner: usize, socket: ListenerSocket) -> Member {
        let id = self.next_id;
        self.next_id += 1;
        self.peers[owner].send(Control::AddListener { id, key, socket });
        Member { id, owner }
    }

    /// Asks the owning workers to close their sockets and waits until they have, so the port
    /// can be bound again at once.
    fn unserve(&mut self, members: &[Member]) {
        let mut waits = Vec::with_capacity(members.len());
        for m in members {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if self.peers[m.owner].send(Control::RemoveListener { id: m.id, done: tx }) {
                waits.push(rx);
            }
            self.open_sockets -= 1;
        }
        for rx in waits {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }

    fn close_socket(&mut self, s: NodePortSocket) {
        match s.state {
            SocketState::Serving(members) => self.unserve(&members),
            SocketState::Held(_) => self.open_sockets -= 1,
            SocketState::Closed => {}
        }
    }

    /// Returns once every worker has applied everything sent so far (benchmarks, tests).
    pub fn barrier(&self) {
        ask_all(&self.peers, Control::Barrier, Duration::from_secs(5));
    }

    /// Stops accepting, lets flows finish for `grace`, then returns once workers exit.
    pub fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for p in self.peers.iter() {
            p.send(Control::Shutdown(deadline));
        }
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// The plugin chain the frontend `key` runs now (None: the native default, or `key` is
    /// not programmed). The sync loop asks here instead of keeping a copy.
    pub fn chain(&self, key: &FrontendKey) -> Option<&Arc<crate::plugin::Chain>> {
        self.programmed
            .get(key)
            .and_then(|p| p.route.chain.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::OwnAddresses;

    #[test]
    fn own_addresses_are_told_as_one_sorted_union_and_only_when_it_changes() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let mut own = OwnAddresses {
            interfaces: vec![ip("198.18.0.2"), ip("127.0.0.1")],
            ..Default::default()
        };
        assert_eq!(
            own.changed().as_deref(),
            Some(&[ip("127.0.0.1"), ip("198.18.0.2")][..])
        );
        assert_eq!(own.changed(), None);
        own.node = vec![ip("198.18.0.2"), ip("198.19.0.11")];
        assert_eq!(own.changed().map(|a| a.len()), Some(3));
        assert_eq!(own.changed(), None);
    }
}
