//! UDP client tuples that admission refused, remembered for a second: a UDP flow is refused
//! per datagram, and without this memory a plugin would be asked for every one of them.
//! Bounded, so a spoofed flood cannot grow it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// How long a refused tuple stays refused without asking again.
const DENIED_FOR: Duration = Duration::from_secs(1);
/// Most refused tuples remembered.
const DENIED_MAX: usize = 65536;

/// (client, node address) pairs refused, until when.
#[derive(Default)]
pub struct Denied {
    until: FxHashMap<(SocketAddr, SocketAddr), Instant>,
}

impl Denied {
    /// Remembers a refusal made at `now`.
    pub fn insert(&mut self, key: (SocketAddr, SocketAddr), now: Instant) {
        if self.until.len() >= DENIED_MAX {
            self.sweep(now);
            if self.until.len() >= DENIED_MAX {
                self.until.clear();
            }
        }
        self.until.insert(key, now + DENIED_FOR);
    }

    /// Whether `key` is still refused at `now`.
    pub fn contains(&self, key: &(SocketAddr, SocketAddr), now: Instant) -> bool {
        self.until.get(key).is_some_and(|until| *until > now)
    }

    /// Drops what has expired.
    pub fn sweep(&mut self, now: Instant) {
        self.until.retain(|_, until| *until > now);
    }

    /// Tuples remembered.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> (SocketAddr, SocketAddr) {
        (
            SocketAddr::from(([198, 18, 0, 2], port)),
            SocketAddr::from(([198, 18, 0, 1], 30053)),
        )
    }

    #[test]
    fn remembers_for_a_second_and_stays_bounded() {
        let now = Instant::now();
        let mut d = Denied::default();
        d.insert(key(1), now);
        assert!(d.contains(&key(1), now + Duration::from_millis(999)));
        assert!(!d.contains(&key(1), now + DENIED_FOR));
        assert!(!d.contains(&key(2), now));
        for p in 0..(DENIED_MAX as u32 + 10) {
            d.insert(key(p as u16), now);
        }
        assert!(d.len() <= DENIED_MAX);
        d.sweep(now + DENIED_FOR);
        assert!(d.is_empty());
    }
}
