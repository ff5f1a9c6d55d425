//! Work kept off the control-plane thread: a few named threads run one function on each job
//! and hand the results back, calling `done` after each so the control plane (which never
//! blocks on them) knows to take them in. Plugin loads (compiling a component takes time in
//! proportion to its code) and `configure` probes (a hostile `configure` runs to its
//! deadline) run here.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// A pool of threads running `f(job)`; results are taken with [`Offload::try_take`] or
/// [`Offload::take_timeout`].
pub struct Offload<J, R> {
    jobs: Sender<J>,
    results: Receiver<R>,
    /// Jobs submitted whose result has not been taken yet.
    running: usize,
}

impl<J: Send + 'static, R: Send + 'static> Offload<J, R> {
    /// Starts `threads` threads named `<name>-<i>`; `done` is called on one of them after
    /// each result is ready to take.
    pub fn start(
        name: &str,
        threads: usize,
        f: impl Fn(J) -> R + Send + Sync + 'static,
        done: std::sync::Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Self> {
        let (jobs, job_rx) = crossbeam_channel::unbounded::<J>();
        let (result_tx, results) = crossbeam_channel::unbounded();
        let f = std::sync::Arc::new(f);
        for i in 0..threads {
            let (rx, tx, f, done) = (job_rx.clone(), result_tx.clone(), f.clone(), done.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        if tx.send(f(job)).is_err() {
                            return;
                        }
                        done();
                    }
                })?;
        }
        Ok(Self {
            jobs,
            results,
            running: 0,
        })
    }

    /// Queues `job`; never blocks. False when no thread is left to run it.
    pub fn submit(&mut self, job: J) -> bool {
        let sent = self.jobs.send(job).is_ok();
        self.running += usize::from(sent);
        sent
    }

    /// Whether a submitted job's result has not been taken yet.
    pub fn busy(&self) -> bool {
        self.running > 0
    }

    /// A result that is ready, if any.
    pub fn try_take(&mut self) -> Option<R> {
        let r = self.results.try_recv().ok()?;
        self.running -= 1;
        Some(r)
    }

    /// The next result, waiting at most `bound` for one.
    pub fn take_timeout(&mut self, bound: Duration) -> Option<R> {
        let r = self.results.recv_timeout(bound).ok()?;
        self.running -= 1;
        Some(r)
    }

    /// Waits, at most `bound`, until no submitted job is out: the results taken meanwhile,
    /// and whether none is still out.
    pub fn settle(&mut self, bound: Duration) -> (Vec<R>, bool) {
        let deadline = Instant::now() + bound;
        let mut taken = Vec::new();
        while self.busy() {
            match self.take_timeout(deadline.saturating_duration_since(Instant::now())) {
                Some(r) => taken.push(r),
                None => return (taken, false),
            }
        }
        (taken, true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_slow_job_does_not_hold_the_submitter_or_a_job_on_the_other_thread() {
        let (release, held) = crossbeam_channel::bounded::<()>(1);
        let (told, dones) = crossbeam_channel::unbounded::<()>();
        let mut pool = Offload::start(
            "offload-test",
            2,
            move |job: &'static str| {
                if job == "slow" {
                    // Held until the test releases it (bounded, so a broken test ends).
                    let _ = held.recv_timeout(Duration::from_secs(10));
                }
                format!("{job} done")
            },
            Arc::new(move || {
                let _ = told.send(());
            }),
        )
        .expect("threads");
        assert!(pool.submit("slow"));
        assert!(pool.submit("quick"));
        assert!(pool.busy());
        assert_eq!(
            pool.take_timeout(Duration::from_secs(10)).as_deref(),
            Some("quick done")
        );
        assert!(pool.busy(), "the slow job is still out");
        assert_eq!(pool.try_take(), None);
        release.send(()).expect("release");
        assert_eq!(
            pool.take_timeout(Duration::from_secs(10)).as_deref(),
            Some("slow done")
        );
        assert!(!pool.busy());
        for _ in 0..2 {
            let told = dones.recv_timeout(Duration::from_secs(10));
            assert!(told.is_ok(), "done is called after each result");
        }
        assert!(dones.try_recv().is_err(), "and only then");
    }

    #[test]
    fn settling_takes_every_result_or_says_one_is_still_out() {
        let (release, held) = crossbeam_channel::bounded::<()>(1);
        let mut pool = Offload::start(
            "offload-settle",
            2,
            move |job: &'static str| {
                if job == "slow" {
                    let _ = held.recv_timeout(Duration::from_secs(10));
                }
                job
            },
            Arc::new(|| {}),
        )
        .expect("threads");
        assert_eq!(pool.settle(Duration::ZERO), (vec![], true), "nothing out");
        assert!(pool.submit("slow") && pool.submit("quick"));
        let (taken, idle) = pool.settle(Duration::from_millis(200));
        assert_eq!((taken, idle), (vec!["quick"], false), "slow is held");
        release.send(()).expect("release");
        assert_eq!(pool.settle(Duration::from_secs(10)), (vec!["slow"], true));
        assert!(!pool.busy());
    }
}
