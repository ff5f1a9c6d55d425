//! A new flow as policies see it: fixed-size data only (ids, addresses, a hash), the same
//! on every worker, so hashing decisions agree wherever the flow is carried.

use std::net::SocketAddr;

use crate::model::{Family, FrontendKey};

/// What a policy may know about a new flow: fixed-size data only.
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
    /// Address family of the nodePort socket (endpoints are of the same family).
    pub family: Family,
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
            family: Family::of(&node.ip()),
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
