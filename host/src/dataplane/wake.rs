//! Waking a worker from another thread without a system call when it is awake anyway.
//!
//! A worker blocked in epoll_wait needs its eventfd written; a worker that is busy with
//! events, or already woken and not yet running (the common case on a CPU shared with the
//! backends), will look at its queues before it sleeps again, so writing is a wasted system
//! call and, on some kernels, a wasted wake-up. The worker says when it is about to sleep;
//! the first sender after that writes, the others do not.
//!
//! The handshake is Dekker's: the sender queues, then reads the flag; the worker sets the
//! flag, then reads the queues. With a full fence between each pair, at least one of them
//! sees the other's write, so a message is never left in a queue while the worker sleeps.

use std::io;
use std::sync::atomic::{fence, AtomicBool, Ordering};

use mio::{Registry, Token, Waker};

/// A worker's waker with its "about to sleep" flag.
pub struct Wake {
    waker: Waker,
    asleep: AtomicBool,
}

impl Wake {
    /// A waker on `registry` that raises `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Self> {
        Ok(Self {
            waker: Waker::new(registry, token)?,
            asleep: AtomicBool::new(false),
        })
    }

    /// Called after queuing a message: writes the eventfd only if the worker may be (about
    /// to be) blocked and no other sender has written since it last went to sleep.
    pub fn wake(&self) -> io::Result<()> {
        fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.waker.wake()
        } else {
            Ok(())
        }
    }

    /// Called by the worker before it blocks. `queued` reads its queues; when it finds work
    /// the worker must not block (returns false), since its senders may have seen it awake.
    pub fn may_sleep(&self, queued: impl FnOnce() -> bool) -> bool {
        self.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if queued() {
            self.asleep.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Called by the worker when poll returns, whatever woke it: it will look at its queues
    /// before it sleeps again, so senders need not write until then.
    pub fn woke(&self) {
        self.asleep.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    const T: Token = Token(7);

    fn woken(poll: &mut Poll) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_millis(0)))
            .unwrap();
        events.iter().any(|e| e.token() == T)
    }

    #[test]
    fn an_awake_worker_is_not_written_to() {
        let mut poll = Poll::new().unwrap();
        let w = Wake::new(poll.registry(), T).unwrap();
        w.wake().unwrap();
        assert!(!woken(&mut poll), "an awake worker got an eventfd write");
    }

    #[test]
    fn a_sleeping_worker_is_written_to_once() {
        let mut poll = Poll::new().unwrap();
        let w = Wake::new(poll.registry(), T).unwrap();
        assert!(w.may_sleep(|| false));
        w.wake().unwrap();
        assert!(woken(&mut poll));
        // The first sender cleared the flag: the next ones do not write again.
        w.wake().unwrap();
        assert!(!woken(&mut poll));
    }

    #[test]
    fn queued_work_keeps_the_worker_awake() {
        let poll = Poll::new().unwrap();
        let w = Wake::new(poll.registry(), T).unwrap();
        assert!(!w.may_sleep(|| true));
        // A sender that saw it awake and skipped the write is covered by that answer.
        assert!(!w.asleep.load(Ordering::SeqCst));
    }

    #[test]
    fn no_message_is_left_while_the_worker_sleeps() {
        // A sender thread queues and wakes while the worker loops sleeping and draining:
        // every message must be seen, or the worker would block with work queued.
        let mut poll = Poll::new().unwrap();
        let w = std::sync::Arc::new(Wake::new(poll.registry(), T).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        const N: u32 = 20_000;
        let sender = {
            let w = w.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    tx.send(i).unwrap();
                    w.wake().unwrap();
                }
            })
        };
        let mut events = Events::with_capacity(4);
        let mut got = 0;
        while got < N {
            if w.may_sleep(|| !rx.is_empty()) {
                // Blocks until woken: more is to come, so a sender will see the flag. A
                // lost wake-up shows as the 10 s timeout with no event.
                poll.poll(&mut events, Some(Duration::from_secs(10)))
                    .unwrap();
                assert!(!events.is_empty(), "lost wake-up after {got} messages");
            }
            while rx.try_recv().is_ok() {
                got += 1;
            }
        }
        sender.join().unwrap();
    }
}
