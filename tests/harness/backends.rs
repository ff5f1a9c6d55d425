//! Real backends on sockets: a TCP one that answers its id then echoes, and a UDP one that
//! answers each datagram with its id; both serve on threads stopped on drop.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A TCP backend: for each connection it reads one line, answers `"{id}\n"`, then echoes
/// everything until the client's EOF, then closes. It counts the peer addresses it accepted.
pub struct TcpBackend {
    addr: SocketAddr,
    id: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    peers: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    open: Arc<Mutex<BTreeMap<usize, TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

fn serve_tcp_conn(mut s: TcpStream, id: &str, proxy: bool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    // A PROXY-aware endpoint answers with what the header said (or why there was none).
    let id = if proxy {
        match crate::proxy::read_proxy_v2(&mut s) {
            Ok((client, node)) => format!("{id} client={client} node={node}"),
            Err(e) => format!("{id} header-error={e}"),
        }
    } else {
        id.to_string()
    };
    // The first line, byte by byte so nothing after it is consumed here.
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    if s.write_all(format!("{id}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

impl TcpBackend {
    /// Listens on `addr` (port 0 for a free one) and serves on a thread.
    pub fn start(addr: impl ToSocketAddrs, id: &str) -> Self {
        Self::serve(addr, id, false)
    }

    /// A backend on 127.0.0.1 that expects a PROXY protocol v2 header first on every
    /// connection and answers `"{id} client={addr} node={addr}\n"` from it (or
    /// `"{id} header-error=..."`).
    pub fn proxy_v2(id: &str) -> Self {
        Self::proxy_v2_at("127.0.0.1:0", id)
    }

    /// Like [`TcpBackend::proxy_v2`] on `addr` (a pod's address, say).
    pub fn proxy_v2_at(addr: impl ToSocketAddrs, id: &str) -> Self {
        Self::serve(addr, id, true)
    }

    fn serve(addr: impl ToSocketAddrs, id: &str, proxy: bool) -> Self {
        let listener = TcpListener::bind(addr).expect("bind TCP backend");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(BTreeMap::new()));
        let open = Arc::new(Mutex::new(BTreeMap::new()));
        let thread = {
            let (stop, accepted, peers, open, id) = (
                stop.clone(),
                accepted.clone(),
                peers.clone(),
                open.clone(),
                id.to_string(),
            );
            std::thread::Builder::new()
                .name(format!("backend-{id}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(s) = conn else { continue };
                        if let Ok(p) = s.peer_addr() {
                            *peers.lock().unwrap().entry(p.ip()).or_default() += 1;
                        }
                        let n = accepted.fetch_add(1, Ordering::SeqCst);
                        // A handle Drop can shut down, removed once the connection is served.
                        if let Ok(c) = s.try_clone() {
                            open.lock().unwrap().insert(n, c);
                        }
                        let (id, open) = (id.clone(), open.clone());
                        let _ = std::thread::Builder::new()
                            .name(format!("backend-{id}-conn"))
                            .spawn(move || {
                                serve_tcp_conn(s, &id, proxy);
                                open.lock().unwrap().remove(&n);
                            });
                    }
                })
                .expect("spawn backend")
        };
        Self {
            addr,
            id: id.into(),
            stop,
            accepted,
            peers,
            open,
            thread: Some(thread),
        }
    }

    /// Listens on a free port of 127.0.0.1.
    pub fn local(id: &str) -> Self {
        Self::start("127.0.0.1:0", id)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id it answers with.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The peer (source) addresses of the connections accepted so far, and how many came from
    /// each: what the endpoint sees as its client. Counted before the connection is served,
    /// so a client that got its answer is counted.
    pub fn peers(&self) -> BTreeMap<IpAddr, usize> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in std::mem::take(&mut *self.open.lock().unwrap()).into_values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A UDP backend answering each datagram with `"{id}:{payload}"`.
pub struct UdpBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
    peers: Arc<Mutex<BTreeMap<SocketAddr, usize>>>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    /// Binds `addr` (port 0 for a free one) and serves on a thread.
    pub fn start(addr: impl ToSocketAddrs, id: &str) -> Self {
        let sock = UdpSocket::bind(addr).expect("bind UDP backend");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(BTreeMap::new()));
        let thread = {
            let (stop, received, peers, id) = (
                stop.clone(),
                received.clone(),
                peers.clone(),
                id.to_string(),
            );
            std::thread::Builder::new()
                .name(format!("udp-backend-{id}"))
                .spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((n, from)) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        received.fetch_add(1, Ordering::SeqCst);
                        *peers.lock().unwrap().entry(from).or_default() += 1;
                        let mut reply = format!("{id}:").into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = sock.send_to(&reply, from);
                    }
                })
                .expect("spawn UDP backend")
        };
        Self {
            addr,
            stop,
            received,
            peers,
            thread: Some(thread),
        }
    }

    /// Binds a free port of 127.0.0.1.
    pub fn local(id: &str) -> Self {
        Self::start("127.0.0.1:0", id)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Source addresses seen (the proxy's upstream sockets) and datagrams from each.
    pub fn peers(&self) -> BTreeMap<SocketAddr, usize> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
