//! Failure backoff of one plugin on one worker: a small pure state machine that counts
//! failures, disables the plugin when it keeps failing, and lets one call through (probation)
//! once the disable period is over. Time is passed in (`now`), never read here.
//!
//! Rules:
//! - Streak: [`STREAK`] (3) failures in a row disable.
//! - Rate: [`RATE_FAILURES`] (10) failures among the last [`RATE_CALLS`] (100) calls disable,
//!   so a plugin that fails every third call (whose streak a success always resets) is caught.
//!   The window counts calls, not seconds: a busy Service with a rare failure is not disabled,
//!   and failures slide out of the window as calls succeed.
//! - A disable lasts [`FIRST_PERIOD`] (1 s). Then one call is tried: a failure disables again
//!   at once for twice the period (up to [`MAX_PERIOD`], 60 s), a success clears the period
//!   back to 1 s. A disable starts the streak and the rate window afresh.

use std::time::{Duration, Instant};

/// Failures in a row that disable a plugin.
pub const STREAK: u32 = 3;
/// Failures within the rate window that disable a plugin.
pub const RATE_FAILURES: u32 = 10;
/// Calls the rate window spans (at most 128: the window is a bit set).
pub const RATE_CALLS: u32 = 100;
/// First disable period.
pub const FIRST_PERIOD: Duration = Duration::from_secs(1);
/// Longest disable period.
pub const MAX_PERIOD: Duration = Duration::from_secs(60);

const WINDOW_MASK: u128 = (1u128 << RATE_CALLS) - 1;

/// Whether a call may be made now.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Call as usual.
    Call,
    /// The disable period just ended: this call is the probation call (log it).
    Probation,
    /// Disabled: do not call.
    Disabled,
}

/// Why a plugin was disabled.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// [`STREAK`] failures in a row.
    Streak,
    /// [`RATE_FAILURES`] failures among the last [`RATE_CALLS`] calls.
    Rate,
    /// The probation call after a disable failed.
    Probation,
}

impl crate::metrics::LabelValue for Cause {
    const ALL: &'static [Self] = &[Self::Streak, Self::Rate, Self::Probation];

    fn label(self) -> &'static str {
        self.as_str()
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Cause {
    /// Label for log lines (and for a metric, should disables be counted by cause).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streak => "streak",
            Self::Rate => "rate",
            Self::Probation => "probation",
        }
    }
}

/// What a failure did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; the plugin stays enabled.
    Counted,
    /// The plugin is now disabled for this long.
    Disabled(Duration, Cause),
}

/// The backoff state of one plugin on one worker.
#[derive(Clone, Debug)]
pub struct Backoff {
    streak: u32,
    /// Bit i set: the i-th most recent call failed (bit 0 the last one).
    window: u128,
    disabled_until: Option<Instant>,
    probation: bool,
    period: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Enabled, no failures.
    pub fn new() -> Self {
        Self {
            streak: 0,
            window: 0,
            disabled_until: None,
            probation: false,
            period: FIRST_PERIOD,
        }
    }

    /// Whether a call may be made at `now`; ends the disable period once it is over.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.disabled_until {
            Some(until) if now < until => Permit::Disabled,
            Some(_) => {
                self.disabled_until = None;
                self.probation = true;
                Permit::Probation
            }
            None => Permit::Call,
        }
    }

    /// Books a call that succeeded.
    pub fn record_success(&mut self) {
        self.streak = 0;
        self.window = (self.window << 1) & WINDOW_MASK;
        if self.probation {
            self.probation = false;
            self.period = FIRST_PERIOD;
        }
    }

    /// Books a call that failed at `now`, and says whether that disabled the plugin.
    pub fn record_failure(&mut self, now: Instant) -> Outcome {
        self.streak += 1;
        self.window = ((self.window << 1) | 1) & WINDOW_MASK;
        let cause = if self.probation {
            self.period = (self.period * 2).min(MAX_PERIOD);
            Cause::Probation
        } else if self.streak >= STREAK {
            Cause::Streak
        } else if self.window.count_ones() >= RATE_FAILURES {
            Cause::Rate
        } else {
            return Outcome::Counted;
        };
        self.disabled_until = Some(now + self.period);
        self.probation = false;
        self.streak = 0;
        self.window = 0;
        Outcome::Disabled(self.period, cause)
    }

    /// Whether the plugin is disabled at `now` (without ending the period).
    pub fn is_disabled(&self, now: Instant) -> bool {
        self.disabled_until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Fails until disabled; returns the outcome of the failure that disabled.
    fn fail_streak(b: &mut Backoff, now: Instant) -> Outcome {
        assert_eq!(b.permit(now), Permit::Call);
        assert_eq!(b.record_failure(now), Outcome::Counted);
        assert_eq!(b.record_failure(now), Outcome::Counted);
        b.record_failure(now)
    }

    #[test]
    fn three_failures_in_a_row_disable_for_a_second() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        assert_eq!(
            fail_streak(&mut b, t0),
            Outcome::Disabled(FIRST_PERIOD, Cause::Streak)
        );
        assert_eq!(b.permit(t0 + 999 * MS), Permit::Disabled);
        assert!(b.is_disabled(t0 + 999 * MS));
        assert!(!b.is_disabled(t0 + 1000 * MS));
        assert_eq!(b.permit(t0 + 1000 * MS), Permit::Probation);
    }

    #[test]
    fn a_success_resets_the_streak() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        for _ in 0..5 {
            assert_eq!(b.record_failure(t0), Outcome::Counted);
            assert_eq!(b.record_failure(t0), Outcome::Counted);
            b.record_success();
            // 2 failures per 3 calls would trip the rate rule by the fifth round; keep the
            // window below it with successes in between.
            for _ in 0..30 {
                b.record_success();
            }
        }
        assert_eq!(b.permit(t0), Permit::Call);
    }

    #[test]
    fn failing_every_third_call_is_disabled_by_rate() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        let mut failures = 0;
        let outcome = loop {
            assert_eq!(
                b.permit(t0),
                Permit::Call,
                "not disabled before the 10th failure"
            );
            b.record_success();
            b.record_success();
            failures += 1;
            match b.record_failure(t0) {
                Outcome::Counted => assert!(failures < RATE_FAILURES),
                o => break o,
            }
        };
        assert_eq!(failures, RATE_FAILURES);
        assert_eq!(outcome, Outcome::Disabled(FIRST_PERIOD, Cause::Rate));
        assert_eq!(b.permit(t0 + 500 * MS), Permit::Disabled);
    }

    #[test]
    fn rate_window_forgets_old_failures() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        for _ in 0..RATE_FAILURES - 1 {
            assert_eq!(b.record_failure(t0), Outcome::Counted);
            b.record_success();
        }
        // The nine failures slide out of the window...
        for _ in 0..RATE_CALLS {
            b.record_success();
        }
        // ...so nine more, spread out, do not disable either.
        for _ in 0..RATE_FAILURES - 1 {
            assert_eq!(b.record_failure(t0), Outcome::Counted);
            b.record_success();
        }
        assert_eq!(b.permit(t0), Permit::Call);
        // The tenth within the window does.
        assert_eq!(
            b.record_failure(t0),
            Outcome::Disabled(FIRST_PERIOD, Cause::Rate)
        );
    }

    /// Waits out a disable of `period` from `now`: the next call is on probation.
    fn probation_after(b: &mut Backoff, now: Instant, period: Duration) -> Instant {
        assert_eq!(b.permit(now + period - MS), Permit::Disabled);
        assert_eq!(b.permit(now + period), Permit::Probation);
        now + period
    }

    /// A backoff disabled by a streak at t0 whose first period is over: on probation at t1.
    fn on_probation() -> (Backoff, Instant) {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        fail_streak(&mut b, t0);
        let t1 = probation_after(&mut b, t0, FIRST_PERIOD);
        (b, t1)
    }

    #[test]
    fn probation_failure_doubles_the_period() {
        let (mut b, t1) = on_probation();
        assert_eq!(
            b.record_failure(t1),
            Outcome::Disabled(2 * FIRST_PERIOD, Cause::Probation),
            "one failure on probation is enough"
        );
        let t2 = probation_after(&mut b, t1, 2 * FIRST_PERIOD);
        assert_eq!(
            b.record_failure(t2),
            Outcome::Disabled(4 * FIRST_PERIOD, Cause::Probation)
        );
    }

    #[test]
    fn probation_success_clears_the_period() {
        let (mut b, t1) = on_probation();
        b.record_failure(t1);
        let t2 = probation_after(&mut b, t1, 2 * FIRST_PERIOD);
        b.record_success();
        assert_eq!(
            b.permit(t2),
            Permit::Call,
            "enabled after a good probation call"
        );
        // A later streak starts again from the first period.
        assert_eq!(
            fail_streak(&mut b, t2),
            Outcome::Disabled(FIRST_PERIOD, Cause::Streak)
        );
    }

    #[test]
    fn period_stops_doubling_at_the_maximum() {
        let mut now = Instant::now();
        let mut b = Backoff::new();
        let Outcome::Disabled(mut period, _) = fail_streak(&mut b, now) else {
            panic!("a streak disables");
        };
        let mut periods = vec![period];
        for _ in 0..10 {
            now = probation_after(&mut b, now, period);
            let Outcome::Disabled(p, Cause::Probation) = b.record_failure(now) else {
                panic!("a probation failure disables");
            };
            period = p;
            periods.push(p);
        }
        let secs: Vec<u64> = periods.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60]);
        assert_eq!(period, MAX_PERIOD);
    }
}
