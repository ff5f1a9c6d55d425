//! Hashing for plugin state: [`HandleMap`] for per-Service state keyed by handle, a keyed
//! [`RandomState`] for client-derived keys, and the [`mix`] finalizer.

use crate::random_u64;

/// Per-Service state keyed by the host's handle, with a cheap hash. Handles are chosen by the
/// host, never by clients, so no keyed hash is needed; a per-flow lookup then costs a few
/// nanoseconds instead of a SipHash round. For client-derived keys use [`RandomState`].
pub type HandleMap<V> = std::collections::HashMap<u32, V, BuildHandleHasher>;

/// Builds [`HandleHasher`]s for [`HandleMap`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildHandleHasher;

impl std::hash::BuildHasher for BuildHandleHasher {
    type Hasher = HandleHasher;

    fn build_hasher(&self) -> HandleHasher {
        HandleHasher(0)
    }
}

/// Hashes a handle with [`mix`] (full avalanche, as hashbrown needs in high and low bits).
#[derive(Clone, Copy, Debug, Default)]
pub struct HandleHasher(u64);

impl std::hash::Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(n);
    }
}

/// A `BuildHasher` keyed from the host's random generator, for maps keyed by data a client
/// controls (addresses, ports).
///
/// std's own `RandomState` has no entropy source on wasm32-unknown-unknown and derives its
/// keys from memory addresses, which are the same in every instance: a client who knows them
/// could pick addresses that all collide and make every lookup linear. Use
/// `HashMap<K, V, nodeport_plugin::RandomState>`.
#[derive(Clone, Debug)]
pub struct RandomState {
    k0: u64,
    k1: u64,
}

impl Default for RandomState {
    fn default() -> Self {
        RandomState {
            k0: random_u64(),
            k1: random_u64(),
        }
    }
}

impl std::hash::BuildHasher for RandomState {
    #[allow(deprecated)] // SipHasher is deprecated only in favour of unstable names
    type Hasher = std::hash::SipHasher;

    #[allow(deprecated)]
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::SipHasher::new_with_keys(self.k0, self.k1)
    }
}

/// A fast 64-bit mixer (the SplitMix64 finalizer): spreads nearby inputs over the whole
/// range, which `flow.hash ^ x` or small counters need before being compared or reduced.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
