//! The connection-tracking table: one entry per flow, one shard per worker (never shared, so
//! never locked). It indexes UDP flows by tuple, keeps counters the workers bump per packet,
//! and expires idle flows with a lazy deadline heap (re-armed on pop, not on every packet).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use slab::Slab;

use crate::model::{FrontendKey, Protocol};

/// Index of a flow in its worker's shard.
pub type FlowId = usize;

/// The client side of a flow as the node saw it: what `conntrack -L` calls the original tuple.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Client address and port.
    pub client: SocketAddr,
    /// Node address and nodePort the client reached.
    pub node: SocketAddr,
}

/// Flow state, named like the kernel's conntrack states where they match.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// TCP: connecting to the endpoint.
    SynSent,
    /// TCP: relaying both ways.
    Established,
    /// TCP: one side has closed its sending half.
    FinWait,
    /// UDP: nothing came back yet.
    Unreplied,
    /// UDP: the endpoint has answered.
    Replied,
    /// UDP: its endpoint stopped serving. It is no longer the client's flow (the client's next
    /// datagram starts a new one, to a serving endpoint), but a reply still on its way from
    /// the old endpoint is relayed until a short grace period ends.
    Retired,
}

/// Bytes and packets one way.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Payload bytes.
    pub bytes: u64,
    /// Datagrams (UDP) or segments (TCP, read from TCP_INFO when dumped).
    pub packets: u64,
}

/// One tracked flow.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Original tuple.
    pub tuple: Tuple,
    /// Frontend the flow came in on.
    pub frontend: FrontendKey,
    /// The endpoint chosen (unspecified while none is).
    pub endpoint: SocketAddr,
    /// Current state.
    pub state: State,
    /// When the flow started.
    pub started: Instant,
    /// Last packet either way.
    pub last_seen: Instant,
    /// Idle timeout; zero means none.
    pub timeout: Duration,
    /// Client to endpoint.
    pub orig: Counters,
    /// Endpoint to client.
    pub reply: Counters,
}

impl Entry {
    /// A flow that starts now with no traffic counted yet.
    pub fn new(
        tuple: Tuple,
        frontend: FrontendKey,
        endpoint: SocketAddr,
        state: State,
        now: Instant,
        timeout: Duration,
    ) -> Self {
        Self {
            tuple,
            frontend,
            endpoint,
            state,
            started: now,
            last_seen: now,
            timeout,
            orig: Counters::default(),
            reply: Counters::default(),
        }
    }
}

/// One flow as the admin server and `nodeportd conntrack` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// tcp or udp.
    pub protocol: Protocol,
    /// Flow state.
    pub state: State,
    /// Client address.
    pub client: SocketAddr,
    /// Node address and nodePort.
    pub node: SocketAddr,
    /// Endpoint.
    pub endpoint: SocketAddr,
    /// namespace/name of the Service.
    pub service: String,
    /// Service port name.
    pub port: String,
    /// Worker that owns the flow.
    pub worker: usize,
    /// Seconds since the flow started.
    pub age_seconds: f64,
    /// Seconds since the last packet.
    pub idle_seconds: f64,
    /// Idle timeout in seconds (0: none).
    pub timeout_seconds: u64,
    /// Client to endpoint.
    pub orig: Counters,
    /// Endpoint to client.
    pub reply: Counters,
}

impl Row {
    /// A row for `entry`; `segments` overrides packet counts (TCP reads them from the kernel).
    pub fn new(
        entry: &Entry,
        worker: usize,
        service: String,
        port: String,
        segments: Option<(u64, u64)>,
        now: Instant,
    ) -> Self {
        let mut orig = entry.orig;
        let mut reply = entry.reply;
        if let Some((o, r)) = segments {
            orig.packets = o;
            reply.packets = r;
        }
        Self {
            protocol: entry.tuple.protocol,
            state: entry.state,
            client: entry.tuple.client,
            node: entry.tuple.node,
            endpoint: entry.endpoint,
            service,
            port,
            worker,
            age_seconds: now.saturating_duration_since(entry.started).as_secs_f64(),
            idle_seconds: now.saturating_duration_since(entry.last_seen).as_secs_f64(),
            timeout_seconds: entry.timeout.as_secs(),
            orig,
            reply,
        }
    }

    /// One line in the style of `conntrack -L`.
    pub fn line(&self) -> String {
        format!(
            "{:<4} {:<11} src={} sport={} dst={} dport={} packets={} bytes={} endpoint={} packets={} bytes={} service={}:{} age={:.0}s idle={:.0}s",
            self.protocol.as_str(),
            format!("{:?}", self.state).to_uppercase(),
            self.client.ip(),
            self.client.port(),
            self.node.ip(),
            self.node.port(),
            self.orig.packets,
            self.orig.bytes,
            self.endpoint,
            self.reply.packets,
            self.reply.bytes,
            self.service,
            self.port,
            self.age_seconds,
            self.idle_seconds,
        )
    }
}

struct Slot<T> {
    entry: Entry,
    io: T,
    generation: u32,
}

/// A worker's shard for one protocol. `T` is what the worker keeps beside each entry (its
/// sockets). How many flows a worker may track is the worker's budget, not the table's.
pub struct Table<T> {
    slots: Slab<Slot<T>>,
    by_tuple: FxHashMap<Tuple, FlowId>,
    expiry: BinaryHeap<Reverse<(Instant, FlowId, u32)>>,
    next_generation: u32,
}

impl<T> Table<T> {
    /// A table with room for `expected` flows before it grows (address space only until used).
    pub fn new(expected: usize) -> Self {
        Self {
            slots: Slab::with_capacity(expected.min(1 << 16)),
            by_tuple: FxHashMap::default(),
            expiry: BinaryHeap::new(),
            next_generation: 0,
        }
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a flow; `indexed` flows can be found by tuple (UDP). Returns its id and generation.
    pub fn insert(&mut self, entry: Entry, io: T, indexed: bool) -> (FlowId, u32) {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let deadline = (!entry.timeout.is_zero()).then(|| entry.last_seen + entry.timeout);
        let tuple = entry.tuple;
        let id = self.slots.insert(Slot {
            entry,
            io,
            generation,
        });
        if indexed {
            self.by_tuple.insert(tuple, id);
        }
        if let Some(d) = deadline {
            self.expiry.push(Reverse((d, id, generation)));
        }
        (id, generation)
    }

    /// The full generation of flow `id` if its low 16 bits are `low` (what a token carries).
    pub fn live(&self, id: FlowId, low: u16) -> Option<u32> {
        self.slots
            .get(id)
            .map(|s| s.generation)
            .filter(|g| *g as u16 == low)
    }

    /// The flow with this tuple, if indexed.
    pub fn lookup(&self, tuple: &Tuple) -> Option<FlowId> {
        self.by_tuple.get(tuple).copied()
    }

    /// Entry and io of a live flow, checking the generation (stale events carry an old one).
    pub fn get_mut(&mut self, id: FlowId, generation: u32) -> Option<(&mut Entry, &mut T)> {
        match self.slots.get_mut(id) {
            Some(s) if s.generation == generation => Some((&mut s.entry, &mut s.io)),
            _ => None,
        }
    }

    /// Entry and io by id alone (ids come from this table's own index).
    pub fn get_by_id(&mut self, id: FlowId) -> Option<(&mut Entry, &mut T, u32)> {
        self.slots
            .get_mut(id)
            .map(|s| (&mut s.entry, &mut s.io, s.generation))
    }

    /// Takes flow `id` out of the tuple index (a new flow may then take its tuple) and gives it
    /// `timeout` from now; it stays in the table, reachable by id, until that passes.
    pub fn retire(&mut self, id: FlowId, now: Instant, timeout: Duration) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if self.by_tuple.get(&slot.entry.tuple) == Some(&id) {
            self.by_tuple.remove(&slot.entry.tuple);
        }
        slot.entry.state = State::Retired;
        slot.entry.last_seen = now;
        slot.entry.timeout = timeout;
        self.rearm(id);
    }

    /// Removes a flow and returns what it held.
    pub fn remove(&mut self, id: FlowId) -> Option<(Entry, T)> {
        let slot = self.slots.try_remove(id)?;
        if self.by_tuple.get(&slot.entry.tuple) == Some(&id) {
            self.by_tuple.remove(&slot.entry.tuple);
        }
        self.compact_expiry();
        Some((slot.entry, slot.io))
    }

    /// Deadlines of removed flows stay in the heap until they come due (a heap cannot drop an
    /// entry in the middle); with the 24 h TCP idle timeout that would keep one entry per
    /// closed connection for a day (found by the soak run: RSS grew 0.4 MiB a minute at 100
    /// connections/s). Once stale entries outnumber live flows (and a floor), the heap is
    /// rebuilt from the live flows: O(live) work at most once per that many removals, so
    /// amortised O(1), and the heap stays within twice the live flows plus the floor.
    fn compact_expiry(&mut self) {
        const FLOOR: usize = 1024;
        if self.expiry.len() <= 2 * self.slots.len() + FLOOR {
            return;
        }
        let live = self
            .slots
            .iter()
            .filter(|(_, s)| !s.entry.timeout.is_zero());
        let heap: Vec<_> = live
            .map(|(id, s)| Reverse((s.entry.last_seen + s.entry.timeout, id, s.generation)))
            .collect();
        self.expiry = BinaryHeap::from(heap);
    }

    /// Pops the next flow whose idle timeout has passed at `now`. Entries seen since they were
    /// armed are re-armed at their new deadline instead.
    pub fn pop_expired(&mut self, now: Instant) -> Option<FlowId> {
        while let Some(Reverse((deadline, id, generation))) = self.expiry.peek().copied() {
            if deadline > now {
                return None;
            }
            self.expiry.pop();
            let Some(slot) = self.slots.get(id) else {
                continue;
            };
            if slot.generation != generation || slot.entry.timeout.is_zero() {
                continue;
            }
            let due = slot.entry.last_seen + slot.entry.timeout;
            if due > now {
                self.expiry.push(Reverse((due, id, generation)));
                continue;
            }
            return Some(id);
        }
        None
    }

    /// The earliest armed deadline, so the worker knows how long it may sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Deadlines held (live and stale), for tests of the compaction.
    #[cfg(test)]
    fn armed(&self) -> usize {
        self.expiry.len()
    }

    /// Re-arms a flow whose timeout changed (a shorter one must not wait for the old deadline).
    pub fn rearm(&mut self, id: FlowId) {
        self.compact_expiry();
        if let Some(slot) = self.slots.get(id) {
            if !slot.entry.timeout.is_zero() {
                self.expiry.push(Reverse((
                    slot.entry.last_seen + slot.entry.timeout,
                    id,
                    slot.generation,
                )));
            }
        }
    }

    /// Every flow, for dumps and endpoint clean-up.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &Entry, &T)> {
        self.slots.iter().map(|(id, s)| (id, &s.entry, &s.io))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u16, now: Instant, timeout: Duration) -> Entry {
        let tuple = Tuple {
            protocol: Protocol::Udp,
            client: SocketAddr::from(([198, 18, 0, 2], port)),
            node: SocketAddr::from(([198, 18, 0, 1], 30000)),
        };
        let frontend = FrontendKey {
            protocol: Protocol::Udp,
            node_port: 30000,
        };
        let endpoint = SocketAddr::from(([198, 18, 1, 2], 53));
        Entry::new(tuple, frontend, endpoint, State::Unreplied, now, timeout)
    }

    #[test]
    fn a_retired_flow_leaves_the_index_and_expires_after_its_grace() {
        let now = Instant::now();
        let mut t: Table<()> = Table::new(4);
        let e = entry(1000, now, Duration::from_secs(120));
        let tuple = e.tuple;
        let (old, _) = t.insert(e, (), true);
        t.retire(old, now, Duration::from_secs(2));
        assert_eq!(
            t.lookup(&tuple),
            None,
            "the client's next datagram starts a new flow"
        );
        let (new, _) = t.insert(entry(1000, now, Duration::from_secs(120)), (), true);
        assert_eq!(t.lookup(&tuple), Some(new));
        assert_eq!(t.len(), 2, "the retired flow still relays replies");
        assert_eq!(t.pop_expired(now + Duration::from_secs(1)), None);
        assert_eq!(t.pop_expired(now + Duration::from_secs(2)), Some(old));
        t.remove(old);
        assert_eq!(
            t.lookup(&tuple),
            Some(new),
            "removing the old flow keeps the new one indexed"
        );
    }

    #[test]
    fn lookup_and_remove() {
        let now = Instant::now();
        let mut t: Table<()> = Table::new(4);
        let e = entry(1000, now, Duration::from_secs(30));
        let tuple = e.tuple;
        let (id, generation) = t.insert(e, (), true);
        assert_eq!(t.lookup(&tuple), Some(id));
        assert!(
            t.get_mut(id, generation.wrapping_add(1)).is_none(),
            "stale generation is refused"
        );
        assert_eq!(t.live(id, generation as u16), Some(generation));
        assert_eq!(t.live(id, generation.wrapping_add(1) as u16), None);
        t.remove(id);
        assert_eq!(t.lookup(&tuple), None);
        assert!(t.is_empty());
    }

    #[test]
    fn expiry_follows_last_seen() {
        let now = Instant::now();
        let mut t: Table<()> = Table::new(8);
        let (a, ga) = t.insert(entry(1, now, Duration::from_secs(30)), (), true);
        let (b, _) = t.insert(entry(2, now, Duration::from_secs(30)), (), true);
        assert_eq!(t.pop_expired(now + Duration::from_secs(29)), None);
        // a is seen again at +20 s: it must outlive b.
        t.get_mut(a, ga).unwrap().0.last_seen = now + Duration::from_secs(20);
        assert_eq!(t.pop_expired(now + Duration::from_secs(31)), Some(b));
        t.remove(b);
        assert_eq!(t.pop_expired(now + Duration::from_secs(31)), None);
        assert_eq!(t.pop_expired(now + Duration::from_secs(51)), Some(a));
    }

    #[test]
    fn closed_flows_do_not_leave_their_deadlines_behind() {
        let now = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut t: Table<()> = Table::new(8);
        let (kept, _) = t.insert(entry(0, now, day), (), true);
        for i in 1..60_000u16 {
            let (id, _) = t.insert(entry(i, now, day), (), true);
            t.remove(id);
        }
        assert!(
            t.armed() <= 2 * t.len() + 1024 + 1,
            "{} deadlines held for {} flow",
            t.armed(),
            t.len()
        );
        // The live flow still expires when due, and nothing else comes out.
        assert_eq!(t.pop_expired(now + day), Some(kept));
        t.remove(kept);
        assert_eq!(t.pop_expired(now + day + day), None);
    }
}
