//! The host's clock and random generator (a plugin has no WASI), with native stand-ins for
//! plugins' unit tests.

#[cfg(target_arch = "wasm32")]
use crate::__private::bindings::nodeport::plugin::host;

/// The host's monotonic clock in nanoseconds (arbitrary origin, the same for every plugin).
///
/// Plugins have no WASI, so this is their only clock: use it for rates and expiry.
///
/// Outside wasm (a plugin's native unit tests) it reads the process's monotonic clock instead.
pub fn now_nanos() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return host::now_nanos();
    #[cfg(not(target_arch = "wasm32"))]
    {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// 64 random bits from the host's per-worker generator: plugins have no other entropy
/// source, and a fixed seed would make every worker and node choose alike.
///
/// Outside wasm (native unit tests) it uses std's randomly keyed hasher instead.
pub fn random_u64() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return host::random_u64();
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_nanos());
        h.finish()
    }
}
