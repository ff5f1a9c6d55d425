//! kube-proxy's default: every usable endpoint equally likely.

use std::net::SocketAddr;

use super::FlowInfo;
use crate::model::Backend;

/// Uniform random choice with a per-worker generator (no shared state).
pub struct Random {
    rng: fastrand::Rng,
}

impl Random {
    /// Seeded per worker so workers do not pick in lockstep.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
        }
    }
}

impl Random {
    /// An index into `backends`, never one whose address is in `exclude`; None when nothing
    /// is left. The flow is not consulted: every endpoint is equally likely.
    pub fn select(
        &mut self,
        _flow: &FlowInfo,
        backends: &[Backend],
        exclude: &[SocketAddr],
    ) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        if exclude.is_empty() {
            return Some(self.rng.usize(..backends.len()));
        }
        let left = backends
            .iter()
            .filter(|b| !exclude.contains(&b.addr))
            .count();
        if left == 0 {
            return None;
        }
        let nth = self.rng.usize(..left);
        backends
            .iter()
            .enumerate()
            .filter(|(_, b)| !exclude.contains(&b.addr))
            .nth(nth)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKey, Protocol};

    fn backends(n: u8) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend::ready(SocketAddr::from(([198, 18, 1, i], 80))))
            .collect()
    }

    fn flow() -> FlowInfo {
        FlowInfo::new(
            0,
            1,
            FrontendKey {
                protocol: Protocol::Tcp,
                node_port: 30000,
            },
            SocketAddr::from(([198, 18, 0, 2], 40000)),
            SocketAddr::from(([198, 18, 0, 1], 30000)),
        )
    }

    #[test]
    fn spreads_over_all_backends() {
        let b = backends(4);
        let mut r = Random::new(7);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[r.select(&flow(), &b, &[]).unwrap()] += 1;
        }
        assert!(hits.iter().all(|h| *h > 800), "uneven spread: {hits:?}");
    }

    #[test]
    fn never_picks_excluded() {
        let b = backends(3);
        let mut r = Random::new(1);
        let exclude = [b[0].addr, b[2].addr];
        for _ in 0..100 {
            assert_eq!(r.select(&flow(), &b, &exclude), Some(1));
        }
        assert_eq!(
            r.select(&flow(), &b, &[b[0].addr, b[1].addr, b[2].addr]),
            None
        );
        assert_eq!(r.select(&flow(), &[], &[]), None);
    }
}
