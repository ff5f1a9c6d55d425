//! Selection by rendezvous (highest-random-weight) hashing on `flow.hash`: every endpoint
//! scores every flow and the highest score wins, so a client keeps its endpoint while others
//! come and go (only the flows of an endpoint that leaves move, and a new endpoint takes only
//! the flows it now wins). Ready endpoints beat not-ready ones. A retry after a failed
//! connect gets the next endpoint in the flow's ranking. No configuration.
use nodeport_plugin::{export, mix, Backend, Flow, HandleMap, Plugin, Selection};

/// Per Service handle: (endpoint identity hash, ready), in the host's index order.
#[derive(Default)]
pub struct ConsistentHash {
    backends: HandleMap<Vec<(u64, bool)>>,
}

impl Plugin for ConsistentHash {
    fn forget(&mut self, handle: u32) {
        self.backends.remove(&handle);
    }
}

impl Selection for ConsistentHash {
    fn set_backends(&mut self, handle: u32, backends: Vec<Backend>) {
        let list = backends.iter().map(|b| (b.key_hash(), b.ready)).collect();
        self.backends.insert(handle, list);
    }

    fn select(&mut self, flow: &Flow, excluded: Option<u32>) -> Option<u32> {
        let list = self.backends.get(&flow.handle)?;
        // Rank: ready first (top bit), then the flow's score for the endpoint, then index.
        let rank = |i: usize| {
            list.get(i)
                .map(|&(h, up)| ((up as u64) << 63 | mix(flow.hash ^ h) >> 1, i))
        };
        // On a retry, every endpoint ranked at or above the one that failed has failed.
        let below = excluded.and_then(|e| rank(e as usize));
        let mut best = None;
        for r in (0..list.len()).filter_map(rank) {
            if below.is_none_or(|b| r < b) && best.is_none_or(|b| r > b) {
                best = Some(r);
            }
        }
        best.map(|(_, i)| i as u32)
    }
}

export!(ConsistentHash: selection);

#[cfg(test)]
mod tests;
