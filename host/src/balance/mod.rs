//! Backend selection for new flows: the native default (kube-proxy's uniform random, plus
//! ClientIP affinity). One algorithm per module; WASM plugins plug in at the same seam.

pub mod affinity;
pub mod random;

use std::net::SocketAddr;

use crate::model::{Backend, FrontendKey};

/// What a selector may know about a new flow: fixed-size data only.
#[derive(Copy, Clone, Debug)]
pub struct FlowInfo {
    /// Unique per daemon run (worker index in the top byte).
    pub id: u64,
    /// The frontend the flow came in on.
    pub frontend: FrontendKey,
    /// Client address and port.
    pub client: SocketAddr,
    /// Node address and nodePort.
    pub node: SocketAddr,
    /// Hash of (protocol, client, node), or of the affinity key when there is one: the same
    /// on every worker and run, so hashing selectors agree.
    pub hash: u64,
    /// Key and lifetime of the affinity entry a plugin asked for.
    pub affinity: Option<(u64, std::time::Duration)>,
}

impl FlowInfo {
    /// A new flow's info; `seq` numbers the worker's flows.
    pub fn new(
        worker: usize,
        seq: u64,
        frontend: FrontendKey,
        client: SocketAddr,
        node: SocketAddr,
    ) -> Self {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        frontend.protocol.hash(&mut h);
        client.hash(&mut h);
        node.hash(&mut h);
        Self {
            id: ((worker as u64) << 56) | (seq & ((1 << 56) - 1)),
            frontend,
            client,
            node,
            hash: mix(h.finish()),
            affinity: None,
        }
    }

    /// Sets a plugin's affinity key; the flow then hashes as its key does.
    pub fn with_affinity(mut self, key: u64, ttl: std::time::Duration) -> Self {
        self.affinity = Some((key, ttl));
        self.hash = mix(key);
        self
    }
}

/// A full-avalanche 64-bit mix (splitmix64's finaliser): FxHash alone leaves low bits weak.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Picks an endpoint for a new flow among `backends`, never one in `exclude` (endpoints that
/// already failed to connect for this flow). None when nothing is left.
pub trait Selector {
    /// Index into `backends`.
    fn select(
        &mut self,
        flow: &FlowInfo,
        backends: &[Backend],
        exclude: &[SocketAddr],
    ) -> Option<usize>;
}
