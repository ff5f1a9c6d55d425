//! Probes of plugin configs, off the control-plane thread. Before a Service port's chain
//! reaches the workers, each plugin's `configure` is tried with the port's config on a probe
//! instance (so a refused config never reaches a worker). A probe may take up to the setup
//! deadline (a hostile `configure` never returns), so it runs on a small pool of probe
//! threads; the control plane asks [`Prober::check`], which answers at once from what it
//! remembers, and is told (the `done` callback) when a result comes in.
//!
//! Outcomes are remembered per (plugin digest, config): Services that share a config share
//! one probe, and a probe is not run again until the file (digest) or the config changes. A
//! refusal (the plugin's own `Err`) is final for that pair; a failure (deadline, trap, memory,
//! instantiate) is tried again after a backoff (5 s, doubling to 5 min), on the next
//! resolution once it is due ([`Prober::retry_due`] says when).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bindings::types;
use super::contract::Plugin;
use super::instance::Instance;
use super::offload::Offload;
use super::runtime::Runtime;

/// Threads that run probes: enough that one hostile plugin does not hold every other
/// plugin's probes behind it for long, few enough to stay off the workers' cores.
const THREADS: usize = 2;
/// First wait before a failed probe is tried again; doubled per failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What a probe is remembered by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    digest: String,
    config: String,
}

/// What is known of one (digest, config).
#[derive(Debug, Clone)]
enum State {
    /// A probe is queued or running; the backoff of the failure it retries, if any.
    Pending(Option<Duration>),
    /// `configure` accepted it.
    Accepted,
    /// The plugin refused the config (final for this pair).
    Refused(String),
    /// `configure` failed (deadline, trap, ...); tried again at `retry_at`.
    Failed {
        error: String,
        retry_at: Instant,
        backoff: Duration,
    },
}

/// The answer of [`Prober::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The config was accepted.
    Accepted,
    /// The probe runs; the `done` callback fires when it ends.
    Pending,
    /// Refused, or failed (the message says which and why).
    Rejected(String),
}

/// Raw result of one probe, as the probe thread reports it.
type Outcome = Result<(), (String, bool)>;

struct Job {
    key: Key,
    plugin: Arc<Plugin>,
    services: Vec<types::Service>,
}

/// The probe pool and what it has learnt.
pub struct Prober {
    states: HashMap<Key, State>,
    pool: Offload<Job, (Key, Outcome)>,
}

impl Prober {
    /// Starts the probe threads; `done` is called (on a probe thread) after each result, so
    /// the control plane can resolve the Services that wait for it.
    pub fn start(
        runtime: Arc<Runtime>,
        done: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Self> {
        let pool = Offload::start(
            "plugin-probe",
            THREADS,
            move |job: Job| {
                let outcome = probe(&runtime, &job.plugin, &job.services, &job.key.config);
                (job.key, outcome)
            },
            done,
        )?;
        Ok(Self {
            states: HashMap::new(),
            pool,
        })
    }

    /// What is known of `plugin` with `config`; queues a probe (with `services`, what
    /// `configure` is told, one per address family) when nothing is, or a failure's backoff
    /// is over.
    pub fn check(
        &mut self,
        plugin: &Arc<Plugin>,
        config: &str,
        services: impl FnOnce() -> Vec<types::Service>,
    ) -> Checked {
        self.collect();
        let key = Key {
            digest: plugin.digest.clone(),
            config: config.to_string(),
        };
        let name = &plugin.name;
        match self.states.get(&key) {
            Some(State::Pending(_)) => return Checked::Pending,
            Some(State::Accepted) => return Checked::Accepted,
            Some(State::Refused(msg)) => {
                return Checked::Rejected(format!(
                    "plugin {name} refused its config {config:?}: {msg}"
                ))
            }
            Some(State::Failed {
                error, retry_at, ..
            }) if Instant::now() < *retry_at => {
                return Checked::Rejected(format!("plugin {name} failed in configure: {error}"))
            }
            _ => {}
        }
        let job = Job {
            key: key.clone(),
            plugin: plugin.clone(),
            services: services(),
        };
        if !self.pool.submit(job) {
            return Checked::Rejected(format!("plugin {name}: no probe thread runs"));
        }
        // A failure's backoff survives the retry, so the next failure doubles it.
        let backoff = match self.states.get(&key) {
            Some(State::Failed { backoff, .. }) => Some(*backoff),
            _ => None,
        };
        self.states.insert(key, State::Pending(backoff));
        Checked::Pending
    }

    /// Whether a failed probe's backoff is over (its Services should be resolved again).
    pub fn retry_due(&mut self) -> bool {
        self.collect();
        let now = Instant::now();
        self.states
            .values()
            .any(|s| matches!(s, State::Failed { retry_at, .. } if *retry_at <= now))
    }

    /// Waits, at most `bound`, until no probe runs; false when some still does.
    pub fn wait_idle(&mut self, bound: Duration) -> bool {
        // A state is Pending exactly while its probe is out of the pool.
        let (results, idle) = self.pool.settle(bound);
        for r in results {
            self.record(r);
        }
        idle
    }

    /// Forgets every outcome of plugin versions not in `live` (digests).
    pub fn retain(&mut self, live: &[&str]) {
        self.states
            .retain(|k, s| matches!(s, State::Pending(_)) || live.contains(&k.digest.as_str()));
    }

    /// Takes in the results the probe threads reported.
    fn collect(&mut self) {
        while let Some(r) = self.pool.try_take() {
            self.record(r);
        }
    }

    fn record(&mut self, (key, outcome): (Key, Outcome)) {
        let previous = match self.states.get(&key) {
            Some(State::Pending(b)) => *b,
            _ => None,
        };
        self.states
            .insert(key, settle(outcome, previous, Instant::now()));
    }
}

/// The state a probe's outcome leaves: a failure waits `FIRST_BACKOFF`, or twice the
/// `previous` failure's wait (up to `MAX_BACKOFF`).
fn settle(outcome: Outcome, previous: Option<Duration>, now: Instant) -> State {
    match outcome {
        Ok(()) => State::Accepted,
        Err((msg, true)) => State::Refused(msg),
        Err((error, false)) => {
            let backoff = previous.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
            State::Failed {
                error,
                retry_at: now + backoff,
                backoff,
            }
        }
    }
}

/// Runs `configure` for each of `services` on a fresh instance. Err((message, refused)).
fn probe(rt: &Runtime, plugin: &Plugin, services: &[types::Service], config: &str) -> Outcome {
    let mut inst = Instance::new(rt, plugin, usize::MAX, 0)
        .map_err(|f| (format!("cannot instantiate: {f}"), false))?;
    for s in services {
        match inst.configure(s, config) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err((msg, true)),
            Err(f) => return Err((f.to_string(), false)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_backs_off_doubling_up_to_the_cap_and_a_refusal_is_final() {
        let now = Instant::now();
        let failed = || Err(("deadline".to_string(), false));
        let State::Failed {
            backoff, retry_at, ..
        } = settle(failed(), None, now)
        else {
            panic!("a failure");
        };
        assert_eq!((backoff, retry_at), (FIRST_BACKOFF, now + FIRST_BACKOFF));
        let State::Failed { backoff, .. } = settle(failed(), Some(backoff), now) else {
            panic!("a failure");
        };
        assert_eq!(backoff, FIRST_BACKOFF * 2);
        let State::Failed { backoff, .. } = settle(failed(), Some(MAX_BACKOFF), now) else {
            panic!("a failure");
        };
        assert_eq!(backoff, MAX_BACKOFF);
        assert!(matches!(
            settle(Err(("no".into(), true)), Some(backoff), now),
            State::Refused(m) if m == "no"
        ));
        assert!(matches!(
            settle(Ok(()), Some(backoff), now),
            State::Accepted
        ));
    }
}
