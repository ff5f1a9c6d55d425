//! Plugin setup off the flow path. Making an instance, `configure`, `set-backends` and
//! `forget` may run for up to the setup deadline (100 ms by default, against 5 ms for a
//! per-flow call): done on a worker they would stall every flow of every Service on it. So a
//! worker lends the instance to a setup thread with the steps it needs ([`Job`]), and the
//! thread hands it back ([`Done`]) through the worker's control queue. Meanwhile the flows
//! that need that instance wait (the dataplane parks them, bounded); flows of other plugins
//! and of native Services go on.
//!
//! Fairness: a plugin's jobs run one at a time, whichever worker sent them, and there are
//! [`THREADS`] threads. A plugin that spins in `set-backends` therefore holds one thread for
//! at most the setup deadline per job, and the others keep serving other plugins' jobs.
//!
//! The plugin bench and the runtime tests run jobs inline ([`run`] on the caller's thread):
//! one code path, two places to run it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustc_hash::{FxHashMap, FxHashSet};

use super::bindings::types;
use super::chain::Chain;
use super::contract::Plugin;
use super::failure::{Failure, FailureKind};
use super::instance::Instance;
use super::runtime::Runtime;
use super::wire;
use crate::model::Backend;

/// Setup threads. Two, so one stalling plugin (its jobs run one at a time) never holds all.
pub const THREADS: usize = 2;

/// A live instance and the handles it was configured for (with the endpoint list it has).
pub(super) struct Live {
    pub(super) inst: Instance,
    pub(super) handles: FxHashMap<u32, Option<Arc<[Backend]>>>,
}

/// One thing to do to an instance.
pub(super) enum Step {
    /// Tell it a handle is gone.
    Forget(u32),
    /// Hand it a Service handle and its config.
    Configure {
        handle: u32,
        service: types::Service,
        config: String,
    },
    /// Send a handle's endpoint list.
    Backends { handle: u32, list: Arc<[Backend]> },
}

/// The Service port whose call asked for a job: its failures are booked there.
#[derive(Clone)]
pub struct Blame {
    /// The chain that made the call.
    pub(super) chain: Arc<Chain>,
    /// Index of the link (the plugin) in it.
    pub(super) link: usize,
}

/// Where a worker wants its [`Done`] delivered (its control queue, then its waker).
pub type Reply = Arc<dyn Fn(Done) + Send + Sync>;

/// Work on one worker's instance of one plugin.
pub(super) struct Job {
    pub(super) rt: Arc<Runtime>,
    pub(super) plugin: Arc<Plugin>,
    pub(super) worker: usize,
    /// Seed for a new instance's `random`.
    pub(super) seed: u64,
    /// The instance (None: make one first).
    pub(super) live: Option<Live>,
    pub(super) steps: Vec<Step>,
    pub(super) blame: Option<Blame>,
}

/// A job's outcome: the instance back (None when it could not be made or can no longer be
/// trusted) and the first failure, if any (the steps after it were not run).
pub struct Done {
    pub(super) plugin: Arc<Plugin>,
    pub(super) live: Option<Live>,
    pub(super) failure: Option<Failure>,
    pub(super) blame: Option<Blame>,
}

/// Runs a job on the calling thread. A panic below it (a host bug, never plugin code, which
/// traps) costs the instance, not the thread.
pub(super) fn run(job: Job) -> Done {
    let Job {
        rt,
        plugin,
        worker,
        seed,
        live,
        steps,
        blame,
    } = job;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        apply(&rt, &plugin, worker, seed, live, steps)
    }));
    let (live, failure) = outcome.unwrap_or_else(|_| {
        let f = Failure::new(
            FailureKind::Trap,
            "the host panicked while setting up the plugin",
        );
        (None, Some(f))
    });
    Done {
        plugin,
        live,
        failure,
        blame,
    }
}

fn apply(
    rt: &Runtime,
    plugin: &Plugin,
    worker: usize,
    seed: u64,
    live: Option<Live>,
    steps: Vec<Step>,
) -> (Option<Live>, Option<Failure>) {
    let mut live = match live {
        Some(l) => l,
        None => match Instance::new(rt, plugin, worker, seed) {
            Ok(inst) => Live {
                inst,
                handles: FxHashMap::default(),
            },
            Err(f) => return (None, Some(f)),
        },
    };
    for step in steps {
        let outcome = match step {
            Step::Forget(handle) => {
                live.handles.remove(&handle);
                live.inst.forget(handle)
            }
            Step::Configure {
                handle,
                service,
                config,
            } => match live.inst.configure(&service, &config) {
                Ok(Ok(())) => {
                    live.handles.insert(handle, None);
                    Ok(())
                }
                Ok(Err(msg)) => Err(Failure::new(
                    FailureKind::Configure,
                    format!("configure refused {config:?}: {msg}"),
                )),
                Err(f) => Err(f),
            },
            Step::Backends { handle, list } => {
                let r = live.inst.set_backends(handle, &wire::backends(&list));
                if r.is_ok() {
                    live.handles.insert(handle, Some(list));
                }
                r
            }
        };
        if let Err(f) = outcome {
            let keep = !f.kind.poisons();
            return (keep.then_some(live), Some(f));
        }
    }
    (Some(live), None)
}

/// The setup threads and their queue. Dropping it lets the threads finish their job and exit.
pub struct Pool {
    queue: Arc<Queue<(Job, Reply)>>,
}

/// Jobs by arrival, each with the key (a plugin version) of which one runs at a time.
struct Queue<T> {
    state: Mutex<Waiting<T>>,
    more: Condvar,
}

struct Waiting<T> {
    jobs: VecDeque<(usize, T)>,
    /// Keys with a job running now.
    running: FxHashSet<usize>,
    closed: bool,
}

fn key(p: &Arc<Plugin>) -> usize {
    Arc::as_ptr(p) as usize
}

impl<T> Queue<T> {
    fn new() -> Self {
        Self {
            state: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                running: FxHashSet::default(),
                closed: false,
            }),
            more: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting<T>> {
        // A poisoned lock only means a thread panicked outside `run` (which catches): the
        // queue itself is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, key: usize, job: T) {
        self.lock().jobs.push_back((key, job));
        // All: a woken thread may find only jobs of a key that is running and wait again.
        self.more.notify_all();
    }

    /// The oldest job whose key has none running (marked running), or None once closed
    /// and empty. Blocks while there is none.
    fn take(&self) -> Option<(usize, T)> {
        let mut w = self.lock();
        loop {
            if let Some(job) = Self::eligible(&mut w) {
                return Some(job);
            }
            if w.closed && w.jobs.is_empty() {
                return None;
            }
            w = self.more.wait(w).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn eligible(w: &mut Waiting<T>) -> Option<(usize, T)> {
        let i = (w.jobs.iter()).position(|(k, _)| !w.running.contains(k))?;
        let job = w.jobs.remove(i)?;
        w.running.insert(job.0);
        Some(job)
    }

    fn finished(&self, key: usize) {
        self.lock().running.remove(&key);
        self.more.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.more.notify_all();
    }
}

impl Pool {
    /// Starts [`THREADS`] setup threads.
    pub fn start() -> std::io::Result<Self> {
        let queue = Arc::new(Queue::new());
        for i in 0..THREADS {
            let q: Arc<Queue<(Job, Reply)>> = queue.clone();
            std::thread::Builder::new()
                .name(format!("plugin-setup-{i}"))
                .spawn(move || {
                    while let Some((k, (job, reply))) = q.take() {
                        let done = run(job);
                        q.finished(k);
                        reply(done);
                    }
                })?;
        }
        Ok(Self { queue })
    }

    /// Queues a job; `reply` gets its outcome.
    pub(super) fn submit(&self, job: Job, reply: Reply) {
        self.queue.push(key(&job.plugin), (job, reply));
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_per_key_at_a_time_and_others_pass_it() {
        let q: Queue<&str> = Queue::new();
        q.push(1, "a1");
        q.push(1, "a2");
        q.push(2, "b1");
        let mut w = q.lock();
        assert_eq!(Queue::eligible(&mut w), Some((1, "a1")));
        assert_eq!(
            Queue::eligible(&mut w),
            Some((2, "b1")),
            "a second job of a running key waits; another key's job goes first"
        );
        assert_eq!(Queue::eligible(&mut w), None);
        drop(w);
        q.finished(1);
        assert_eq!(q.take(), Some((1, "a2")));
    }

    #[test]
    fn a_closed_queue_still_hands_out_what_it_holds() {
        let q: Queue<u8> = Queue::new();
        q.push(7, 1);
        q.close();
        assert_eq!(q.take(), Some((7, 1)));
        q.finished(7);
        assert_eq!(q.take(), None);
    }
}
