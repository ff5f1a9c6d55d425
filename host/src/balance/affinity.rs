//! sessionAffinity ClientIP: new flows from one client IP go to the endpoint its last flow
//! used, while that was less than the timeout ago (each new flow refreshes it, as kube-proxy's
//! `recent` match does). Workers receive a client's flows by client-IP hash, so each worker's
//! table is authoritative for its clients and no table is shared.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::model::FrontendKey;

/// Per-worker ClientIP affinity entries.
#[derive(Default)]
pub struct AffinityTable {
    entries: FxHashMap<(FrontendKey, IpAddr), (SocketAddr, Instant)>,
}

impl AffinityTable {
    /// The endpoint remembered for this client, if still within `timeout`.
    pub fn lookup(
        &self,
        frontend: FrontendKey,
        client: IpAddr,
        timeout: Duration,
        now: Instant,
    ) -> Option<SocketAddr> {
        let (addr, last) = self.entries.get(&(frontend, client))?;
        (now.saturating_duration_since(*last) < timeout).then_some(*addr)
    }

    /// Records (or refreshes) the endpoint used by a client's new flow.
    pub fn record(
        &mut self,
        frontend: FrontendKey,
        client: IpAddr,
        endpoint: SocketAddr,
        now: Instant,
    ) {
        self.entries.insert((frontend, client), (endpoint, now));
    }

    /// Drops entries of a frontend (its Service went away or dropped affinity).
    pub fn forget_frontend(&mut self, frontend: FrontendKey) {
        self.entries.retain(|(f, _), _| *f != frontend);
    }

    /// Drops entries idle longer than `max_timeout` (the longest any Service uses).
    pub fn sweep(&mut self, now: Instant, max_timeout: Duration) {
        self.entries
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < max_timeout);
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
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let ep = SocketAddr::from(([198, 18, 1, 2], 80));
        let t = Duration::from_secs(10);
        let now = Instant::now();
        let mut a = AffinityTable::default();
        a.record(fe, ip, ep, now);
        assert_eq!(a.lookup(fe, ip, t, now + Duration::from_secs(9)), Some(ep));
        a.record(fe, ip, ep, now + Duration::from_secs(9));
        assert_eq!(a.lookup(fe, ip, t, now + Duration::from_secs(18)), Some(ep));
        assert_eq!(a.lookup(fe, ip, t, now + Duration::from_secs(20)), None);
        a.sweep(now + Duration::from_secs(30), t);
        assert!(a.is_empty());
    }
}
