//! How the control plane and other workers reach a worker: its control queue (route swaps,
//! listeners, dumps, barriers, shutdown), its hand-off queue (accepted TCP connections), its
//! waker and its published load. Also the one fan-out helper for asking every worker.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::Poll;

use super::conntrack::Row;
use super::route::Route;
use super::token::WAKER;
use super::wake::Wake;
use crate::model::FrontendKey;
use crate::policy::FlowInfo;

/// A nodePort socket handed to a worker.
pub enum ListenerSocket {
    /// Accepts connections.
    Tcp(std::net::TcpListener),
    /// Receives datagrams.
    Udp(std::net::UdpSocket),
}

/// Messages from the control plane.
pub enum Control {
    /// Swap in (or remove) the route of a frontend.
    Route(FrontendKey, Option<Arc<Route>>),
    /// Start serving a nodePort socket.
    AddListener {
        /// Control-plane id of the socket.
        id: u64,
        /// Frontend it serves.
        key: FrontendKey,
        /// The socket.
        socket: ListenerSocket,
    },
    /// Stop serving a nodePort socket and close it; `done` is told once it is closed.
    RemoveListener {
        /// Control-plane id.
        id: u64,
        /// Acknowledgement.
        done: Sender<()>,
    },
    /// The node's own addresses (from its interfaces and its Node object): an endpoint there
    /// is host-network, and its flows never get the client's source address.
    NodeIps(Arc<[std::net::IpAddr]>),
    /// Send back a copy of this worker's conntrack shard.
    Dump(Sender<Vec<Row>>),
    /// Answer once every earlier message has been applied.
    Barrier(Sender<()>),
    /// A plugin setup this worker started is back: flows parked on it are decided again.
    PluginSetup(Box<crate::plugin::setup::Done>),
    /// Close listeners, let flows finish until the deadline, then exit.
    Shutdown(Instant),
}

/// An accepted connection passed to the worker that will carry it.
pub struct Handoff {
    pub(super) stream: mio::net::TcpStream,
    /// The flow, admitted, with its affinity key if a plugin gave one.
    pub(super) flow: FlowInfo,
}

/// A worker's count of TCP flows, alone on its cache line: written by its worker only, read
/// by the others when they place a new connection.
#[repr(align(128))]
#[derive(Default)]
pub struct Load(std::sync::atomic::AtomicUsize);

impl Load {
    pub(super) fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn add(&self, delta: isize) {
        if delta >= 0 {
            self.0
                .fetch_add(delta as usize, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.0
                .fetch_sub(delta.unsigned_abs(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// How other threads reach a worker.
#[derive(Clone)]
pub struct Peer {
    pub(super) control: Sender<Control>,
    pub(super) handoff: Sender<Handoff>,
    pub(super) waker: Arc<Wake>,
    pub(super) load: Arc<Load>,
}

impl Peer {
    /// Sends a control message and wakes the worker.
    pub fn send(&self, msg: Control) -> bool {
        self.control.send(msg).is_ok() && self.waker.wake().is_ok()
    }
}

/// Channels and poll of a worker not yet started.
pub struct Parts {
    pub(super) poll: Poll,
    pub(super) control: Receiver<Control>,
    pub(super) inbox: Receiver<Handoff>,
}

/// Creates a worker's poll, waker and queues.
pub fn parts() -> io::Result<(Parts, Peer)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Wake::new(poll.registry(), WAKER)?);
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let (ho_tx, ho_rx) = crossbeam_channel::bounded(4096);
    Ok((
        Parts {
            poll,
            control: ctl_rx,
            inbox: ho_rx,
        },
        Peer {
            control: ctl_tx,
            handoff: ho_tx,
            waker,
            load: Arc::default(),
        },
    ))
}

/// Sends every worker the message `make` builds around a reply channel and collects the
/// replies, waiting at most `wait` for each: a stuck worker delays the answer, never blocks it.
pub(super) fn ask_all<T>(
    peers: &[Peer],
    make: impl Fn(Sender<T>) -> Control,
    wait: Duration,
) -> Vec<T> {
    let replies: Vec<_> = peers
        .iter()
        .filter_map(|p| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            p.send(make(tx)).then_some(rx)
        })
        .collect();
    replies
        .into_iter()
        .filter_map(|rx| rx.recv_timeout(wait).ok())
        .collect()
}
