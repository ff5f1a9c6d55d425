//! Selection by Maglev hashing (as IPVS's `mh` scheduler and Google's Maglev balancer do):
//! when endpoints change, a lookup table of a prime size M (at least 32 slots per endpoint,
//! from fixed size classes) is filled by each endpoint's own permutation of the slots, so
//! `flow.hash % M` picks an endpoint in O(1) however many there are. Flows spread evenly and, when an endpoint comes
//! or goes, few flows other than its own move (rendezvous hashing, `consistent-hash`, moves
//! none but costs O(endpoints) per flow). Ready endpoints are preferred: the table holds the
//! ready ones (all of them when none is ready). A retry after a failed connect walks the
//! flow's rendezvous ranking after the table's pick, so it never repeats an endpoint.
use nodeport_plugin::{export, mix, Backend, Flow, HandleMap, Plugin, Selection};

/// Slots per endpoint (at least): the table's imbalance between endpoints is about 1/SPREAD.
const SPREAD: usize = 32;

/// One Service port's endpoints and table.
#[derive(Default)]
struct Port {
    /// (endpoint identity hash, ready), in the host's index order.
    endpoints: Vec<(u64, bool)>,
    /// Slot -> endpoint index; empty when there are no endpoints.
    table: Vec<u32>,
}

/// Table sizes: primes near powers of two. The size is the smallest with at least SPREAD
/// slots per endpoint, so it stays the same while the endpoint count moves within a class
/// (a new size remaps every flow, as with any Maglev table).
const SIZES: [usize; 11] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139,
];

impl Port {
    fn new(endpoints: Vec<(u64, bool)>) -> Self {
        let any_ready = endpoints.iter().any(|e| e.1);
        let mut eligible: Vec<usize> = (0..endpoints.len())
            .filter(|&i| endpoints[i].1 || !any_ready)
            .collect();
        // Fill in an order of the endpoints' identities, not the list's: the same set of
        // endpoints always gives the same table.
        eligible.sort_by_key(|&i| endpoints[i].0);
        let mut table = Vec::new();
        if !eligible.is_empty() {
            let want = SPREAD * eligible.len();
            let m = SIZES
                .iter()
                .copied()
                .find(|&m| m >= want)
                .unwrap_or(SIZES[SIZES.len() - 1]);
            table = vec![u32::MAX; m];
            // Each endpoint walks its own permutation of the slots: offset + k * skip (mod m,
            // m prime, skip in 1..m), taking the next free slot, in turns until all are full.
            let perm: Vec<(usize, usize)> = eligible
                .iter()
                .map(|&i| {
                    let h = endpoints[i].0;
                    (
                        (mix(h) % m as u64) as usize,
                        (mix(h ^ 0x9e37_79b9_7f4a_7c15) % (m as u64 - 1)) as usize + 1,
                    )
                })
                .collect();
            let mut next = vec![0usize; eligible.len()];
            let mut filled = 0;
            'fill: loop {
                for (j, &i) in eligible.iter().enumerate() {
                    let (offset, skip) = perm[j];
                    loop {
                        let slot = (offset + next[j] * skip) % m;
                        next[j] += 1;
                        if table[slot] == u32::MAX {
                            table[slot] = i as u32;
                            break;
                        }
                    }
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Port { endpoints, table }
    }

    /// The table's pick for a hash.
    fn first(&self, hash: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        (m > 0).then(|| self.table[(hash % m) as usize] as usize)
    }

    /// Rendezvous rank of endpoint `i` for a hash: ready first, then score, then index.
    fn rank(&self, hash: u64, i: usize) -> Option<(u64, usize)> {
        let &(h, up) = self.endpoints.get(i)?;
        Some(((up as u64) << 63 | mix(hash ^ h) >> 1, i))
    }
}

/// Per Service handle.
#[derive(Default)]
pub struct Maglev {
    ports: HandleMap<Port>,
}

impl Plugin for Maglev {
    fn forget(&mut self, handle: u32) {
        self.ports.remove(&handle);
    }
}

impl Selection for Maglev {
    fn set_backends(&mut self, handle: u32, backends: Vec<Backend>) {
        let endpoints = backends.iter().map(|b| (b.key_hash(), b.ready)).collect();
        self.ports.insert(handle, Port::new(endpoints));
    }

    fn select(&mut self, flow: &Flow, excluded: Option<u32>) -> Option<u32> {
        let port = self.ports.get(&flow.handle)?;
        let first = port.first(flow.hash);
        let Some(failed) = excluded.map(|e| e as usize) else {
            return first.map(|i| i as u32);
        };
        // Retry order: the table's pick, then the rendezvous ranking without it. Everything
        // before the endpoint that just failed has failed too.
        let below = if Some(failed) == first {
            None
        } else {
            Some(port.rank(flow.hash, failed)?)
        };
        let mut best = None;
        for r in (0..port.endpoints.len()).filter_map(|i| port.rank(flow.hash, i)) {
            if Some(r.1) != first && below.is_none_or(|b| r < b) && best.is_none_or(|b| r > b) {
                best = Some(r);
            }
        }
        best.map(|(_, i)| i as u32)
    }
}

export!(Maglev: selection);

#[cfg(test)]
mod tests;
