//! The nodePort sockets a worker serves for one protocol: registered in its poll under a
//! listener token, found by slab index (events) or by control-plane id (removal).

use std::io;
use std::net::SocketAddr;

use mio::{Interest, Registry};
use slab::Slab;

use super::token;
use crate::model::{Family, FrontendKey, Protocol};

/// A nodePort socket owned by this worker.
pub(super) struct NodePort<S> {
    /// Control-plane id.
    pub(super) id: u64,
    pub(super) key: FrontendKey,
    pub(super) family: Family,
    /// Bound to a wildcard address: replies must name their source address.
    pub(super) wildcard: bool,
    pub(super) local: SocketAddr,
    pub(super) sock: S,
}

/// One protocol's nodePort sockets.
pub(super) struct NodePorts<S> {
    protocol: Protocol,
    slab: Slab<NodePort<S>>,
}

impl<S: mio::event::Source> NodePorts<S> {
    /// No sockets yet.
    pub(super) fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            slab: Slab::new(),
        }
    }

    /// Registers `sock` (bound to `local`) and returns its index; None (logged, naming the
    /// frontend) when it cannot be watched.
    pub(super) fn add(
        &mut self,
        registry: &Registry,
        worker: usize,
        id: u64,
        key: FrontendKey,
        sock: S,
        local: io::Result<SocketAddr>,
    ) -> Option<usize> {
        let added = self.try_add(registry, id, key, sock, local);
        if let Err(e) = &added {
            tracing::error!(worker, frontend = %key, error = %e, "cannot watch nodePort socket");
        }
        added.ok()
    }

    fn try_add(
        &mut self,
        registry: &Registry,
        id: u64,
        key: FrontendKey,
        mut sock: S,
        local: io::Result<SocketAddr>,
    ) -> io::Result<usize> {
        let local = local?;
        let entry = self.slab.vacant_entry();
        let idx = entry.key();
        registry.register(
            &mut sock,
            token::listener(self.protocol, idx),
            Interest::READABLE,
        )?;
        entry.insert(NodePort {
            id,
            key,
            family: Family::of(&local.ip()),
            wildcard: local.ip().is_unspecified(),
            local,
            sock,
        });
        Ok(idx)
    }

    /// The socket at `idx`.
    pub(super) fn get(&self, idx: usize) -> Option<&NodePort<S>> {
        self.slab.get(idx)
    }

    /// The index of the socket with control id `id`.
    pub(super) fn index_of(&self, id: u64) -> Option<usize> {
        self.slab.iter().find(|(_, l)| l.id == id).map(|(i, _)| i)
    }

    /// Deregisters and closes the socket at `idx`; false when there is none.
    pub(super) fn remove(&mut self, registry: &Registry, idx: usize) -> bool {
        let Some(mut l) = self.slab.try_remove(idx) else {
            return false;
        };
        let _ = registry.deregister(&mut l.sock);
        true
    }

    /// Every index in use.
    pub(super) fn indices(&self) -> Vec<usize> {
        self.slab.iter().map(|(i, _)| i).collect()
    }
}
