//! Session affinity: new flows with the same key go to the endpoint the key's last flow used,
//! while that was less than the entry's timeout ago (each new flow refreshes it, as
//! kube-proxy's `recent` match does). Keys are the client IP (sessionAffinity ClientIP) or
//! a 64-bit key from an affinity plugin. Workers receive a key's flows by key hash, so each
//! worker's table is authoritative for its keys and no table is shared.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::model::FrontendKey;

/// What flows stick together by.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AffinityKey {
    /// sessionAffinity ClientIP.
    Client(IpAddr),
    /// A key from an affinity plugin.
    Plugin(u64),
}

/// Per-worker affinity entries.
#[derive(Default)]
pub struct AffinityTable {
    entries: FxHashMap<(FrontendKey, AffinityKey), (SocketAddr, Instant, Duration)>,
}

impl AffinityTable {
    /// The endpoint remembered for this key, if its entry is still alive.
    pub fn lookup(
        &self,
        frontend: FrontendKey,
        key: AffinityKey,
        now: Instant,
    ) -> Option<SocketAddr> {
        let (addr, last, ttl) = self.entries.get(&(frontend, key))?;
        (now.saturating_duration_since(*last) < *ttl).then_some(*addr)
    }

    /// Records (or refreshes) the endpoint used by a key's new flow, alive for `ttl`.
    pub fn record(
        &mut self,
        frontend: FrontendKey,
        key: AffinityKey,
        endpoint: SocketAddr,
        ttl: Duration,
        now: Instant,
    ) {
        self.entries.insert((frontend, key), (endpoint, now, ttl));
    }

    /// Drops entries of a frontend (its Service went away or changed its affinity).
    pub fn forget_frontend(&mut self, frontend: FrontendKey) {
        self.entries.retain(|(f, _), _| *f != frontend);
    }

    /// Drops expired entries.
    pub fn sweep(&mut self, now: Instant) {
        self.entries
            .retain(|_, (_, last, ttl)| now.saturating_duration_since(*last) < *ttl);
    }

    /// Number of entries, for metrics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    #[test]
    fn remembers_until_timeout_and_refreshes() {
        let fe = FrontendKey {
            protocol: Protocol::Tcp,
            node_port: 30000,
        };
        let ip = AffinityKey::Client("198.18.0.2".parse().unwrap());
        let ep = SocketAddr::from(([198, 18, 1, 2], 80));
        let t = Duration::from_secs(10);
        let now = Instant::now();
        let mut a = AffinityTable::default();
        a.record(fe, ip, ep, t, now);
        assert_eq!(a.lookup(fe, ip, now + Duration::from_secs(9)), Some(ep));
        a.record(fe, ip, ep, t, now + Duration::from_secs(9));
        assert_eq!(a.lookup(fe, ip, now + Duration::from_secs(18)), Some(ep));
        assert_eq!(a.lookup(fe, ip, now + Duration::from_secs(20)), None);
        assert_eq!(a.lookup(fe, AffinityKey::Plugin(7), now), None);
        a.record(fe, AffinityKey::Plugin(7), ep, Duration::from_secs(1), now);
        a.sweep(now + Duration::from_secs(30));
        assert!(a.is_empty());
    }
}
