//! Flows waiting for a plugin setup. A plugin's instance is made, configured and given its
//! endpoints on a setup thread, never on a worker (see `crate::plugin::setup`); a new flow
//! that needs it meanwhile is parked here, in arrival order, and decided again when the
//! worker is told the setup is back. The wait is bounded twice: at most [`TCP`] connections
//! and [`UDP`] datagrams per worker, and at most twice the setup deadline per flow; past
//! either bound the flow does not wait, and the Service's failure policy decides it (open:
//! the native default, closed: refused).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// TCP connections one worker holds while their plugin is being set up.
pub(super) const TCP: usize = 1024;
/// UDP datagrams one worker holds (copied) while their plugin is being set up.
pub(super) const UDP: usize = 256;

/// Waiting flows, each with when it started to wait.
pub(super) struct Parked<T> {
    items: VecDeque<(Instant, T)>,
    /// Kept between rounds so that resuming does not allocate.
    spare: VecDeque<(Instant, T)>,
    cap: usize,
}

impl<T> Parked<T> {
    /// Room for `cap` flows.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            spare: VecDeque::new(),
            cap,
        }
    }

    /// Whether a flow that started waiting at `since` may (still) wait: there is room, and
    /// it has waited less than `limit`.
    pub(super) fn may_wait(&self, since: Instant, now: Instant, limit: Duration) -> bool {
        self.items.len() < self.cap && now < since + limit
    }

    /// Parks a flow (a caller that asked [`Self::may_wait`] has room).
    pub(super) fn push(&mut self, since: Instant, item: T) {
        self.items.push_back((since, item));
    }

    /// Every parked flow, oldest first, to be decided again (those that must wait on go back
    /// with [`Self::push`]). Hand the emptied queue back with [`Self::give_back`].
    pub(super) fn take(&mut self) -> VecDeque<(Instant, T)> {
        std::mem::replace(&mut self.items, std::mem::take(&mut self.spare))
    }

    /// Returns a drained queue for reuse.
    pub(super) fn give_back(&mut self, q: VecDeque<(Instant, T)>) {
        if q.is_empty() && q.capacity() > self.spare.capacity() {
            self.spare = q;
        }
    }

    /// Drops the parked flows `doomed` picks (their socket went away).
    pub(super) fn drop_where(&mut self, doomed: impl Fn(&T) -> bool) {
        self.items.retain(|(_, t)| !doomed(t));
    }

    /// When the longest-waiting flow runs out of time (None: nothing waits).
    pub(super) fn next_deadline(&self, limit: Duration) -> Option<Instant> {
        self.items.iter().map(|(since, _)| *since + limit).min()
    }

    /// Whether a parked flow has waited `limit` or longer.
    pub(super) fn overdue(&self, now: Instant, limit: Duration) -> bool {
        self.next_deadline(limit).is_some_and(|d| d <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_and_by_time() {
        let t0 = Instant::now();
        let limit = Duration::from_millis(200);
        let mut p = Parked::new(2);
        assert!(p.may_wait(t0, t0, limit));
        p.push(t0, 'a');
        p.push(t0 + limit / 2, 'b');
        assert!(!p.may_wait(t0, t0, limit), "full");
        assert_eq!(p.next_deadline(limit), Some(t0 + limit));
        assert!(!p.overdue(t0 + limit / 2, limit));
        assert!(p.overdue(t0 + limit, limit));
        let q = p.take();
        assert_eq!(q.iter().map(|(_, c)| *c).collect::<String>(), "ab");
        assert!(
            !p.may_wait(t0, t0 + limit, limit),
            "a flow that waited its limit waits no more"
        );
        assert!(p.may_wait(t0, t0 + limit / 2, limit));
        p.give_back(q);
        assert_eq!(p.next_deadline(limit), None);
    }
}
