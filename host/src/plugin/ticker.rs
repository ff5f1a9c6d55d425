//! The epoch clock that enforces plugin call deadlines, asleep while no plugin runs. Wasmtime
//! interrupts a call when the engine's epoch passes the call's deadline, so the epoch must
//! advance while a call runs, every [`TICK`]; ticking all day on an idle node was the daemon's
//! only idle cost (about 900 wake-ups a second). So the clock parks itself once no call
//! started for the longest deadline plus [`QUIET_TICKS`] (every call that started has then
//! been interrupted or has returned), and the next call wakes it before it runs.
//!
//! Cost on the flow path: [`Ticker::busy`] is one relaxed load of a line that is only written
//! once per tick (the clock clearing it, a caller setting it), so workers do not contend on it;
//! the first call after a quiet spell pays one futex wake.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// Granularity of deadlines: the epoch clock ticks this often while awake.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks without a call start, beyond the longest deadline, after which the clock parks.
pub const QUIET_TICKS: u64 = 100;

/// No call started since the clock last looked.
const QUIET: u8 = 0;
/// A call started since the clock last looked.
const BUSY: u8 = 1;
/// The clock is parked; the next caller must wake it.
const ASLEEP: u8 = 2;

/// The epoch clock's state, shared by the clock thread and every caller.
#[derive(Debug, Default)]
pub struct Ticker {
    /// Ticks without a call start after which the clock parks.
    quiet_after: u64,
    state: AtomicU8,
    stopped: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Ticker {
    /// Starts the clock thread: `tick` advances the epoch and returns false once the engine
    /// is gone (the thread then ends). `longest`: the longest deadline any call arms, in
    /// ticks; the clock stays awake at least that long after the last call started.
    pub fn start(
        longest: u64,
        tick: impl FnMut() -> bool + Send + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let t = Arc::new(Self {
            quiet_after: longest.saturating_add(QUIET_TICKS),
            ..Self::default()
        });
        let clock = t.clone();
        let handle = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || clock.run(tick))?;
        let _ = t.thread.set(handle.thread().clone());
        Ok(t)
    }

    /// Says a call is about to run: wakes the clock if it sleeps. Call it before arming a
    /// deadline (the deadline counts ticks from now, whether or not the clock was awake).
    #[inline]
    pub fn busy(&self) {
        if self.state.load(Ordering::Relaxed) != BUSY
            && self.state.swap(BUSY, Ordering::AcqRel) == ASLEEP
        {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    fn run(&self, mut tick: impl FnMut() -> bool) {
        let mut quiet = 0u64;
        loop {
            std::thread::sleep(TICK);
            if self.stopped.load(Ordering::Acquire) || !tick() {
                return;
            }
            if self.state.swap(QUIET, Ordering::AcqRel) == BUSY {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet < self.quiet_after {
                continue;
            }
            // A caller that set BUSY since the swap above keeps the clock awake.
            if self
                .state
                .compare_exchange(QUIET, ASLEEP, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // An unpark that comes before the park makes it return at once; a spurious
                // wake-up finds the state still ASLEEP and parks again.
                while self.state.load(Ordering::Acquire) == ASLEEP
                    && !self.stopped.load(Ordering::Acquire)
                {
                    std::thread::park();
                }
            }
            quiet = 0;
        }
    }

    /// Ends the clock thread (the runtime is going), asleep or not.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// True while the clock is parked.
    pub fn asleep(&self) -> bool {
        self.state.load(Ordering::Acquire) == ASLEEP
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    /// Polls `f` for at most 10 s.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never: {what}");
            std::thread::sleep(TICK);
        }
    }

    #[test]
    fn the_clock_sleeps_when_quiet_and_a_call_wakes_it() {
        let ticks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t2, s2) = (ticks.clone(), stop.clone());
        let t = Ticker::start(0, move || {
            t2.fetch_add(1, Ordering::SeqCst);
            !s2.load(Ordering::SeqCst)
        })
        .expect("start");
        eventually("the clock parks", || t.asleep());
        let parked_at = ticks.load(Ordering::SeqCst);
        assert!(parked_at >= QUIET_TICKS, "parked after {parked_at} ticks");
        // Parked, it cannot tick; whatever time passes, the count stays.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            parked_at,
            "ticked while asleep"
        );

        t.busy();
        assert!(!t.asleep(), "a call wakes the clock");
        eventually("the clock ticks again", || {
            ticks.load(Ordering::SeqCst) > parked_at
        });
        stop.store(true, Ordering::SeqCst);
        t.stop();
    }

    /// A call may run for its whole deadline after its start: the clock must tick through
    /// it, or a plugin that spins would never be interrupted.
    #[test]
    fn the_clock_stays_awake_for_the_longest_deadline_after_a_call() {
        const LONGEST: u64 = 300;
        let ticks = Arc::new(AtomicU64::new(0));
        let t2 = ticks.clone();
        let t = Ticker::start(LONGEST, move || {
            t2.fetch_add(1, Ordering::SeqCst);
            true
        })
        .expect("start");
        eventually("the clock parks", || t.asleep());
        let before = ticks.load(Ordering::SeqCst);
        t.busy();
        eventually("the clock parks again", || {
            ticks.load(Ordering::SeqCst) > before && t.asleep()
        });
        let through = ticks.load(Ordering::SeqCst) - before;
        assert!(
            through > LONGEST,
            "the clock parked {through} ticks after a call that may run {LONGEST}"
        );
        t.stop();
    }

    #[test]
    fn a_stopped_clock_ends_even_while_asleep() {
        let t = Ticker::start(0, || true).expect("start");
        eventually("the clock parks", || t.asleep());
        t.stop();
        // The clock thread holds the other reference: once it ends, only ours is left.
        eventually("the clock thread ends", || Arc::strong_count(&t) == 1);
    }
}
