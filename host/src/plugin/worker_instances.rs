//! A worker's plugin instances: one instance per plugin (per content version) per worker,
//! serving every Service port of that worker that uses the plugin, each by its handle. The
//! worker owns them outright, so per-flow calls take no lock. Each call reports its outcome:
//! an answer, or the [`FailureKind`] of a failure, which is counted, logged (at most once a
//! second per plugin), fed to the plugin's [`Backoff`] and, for a trap, costs the instance
//! (re-made on the next call). What a failure means for the flow (the Service's failure
//! policy) is the caller's decision, not made here.
//!
//! Only `admit`, `affinity-key` and `select` run here. When a call finds the instance missing,
//! its handle not configured or its endpoint list out of date, the instance is lent to a
//! setup thread ([`super::setup`]) and the call answers [`FailureKind::Pending`]: the caller
//! parks the flow and asks again once the worker is told the setup is done ([`Self::done`]).
//! Until then every call on that instance is Pending; other plugins are not affected.
//!
//! Isolation trade-off: Services that use the same plugin share its instance (and so its
//! linear memory) on a worker. A plugin bug can mix their state, and a trap costs every such
//! Service its plugin state (re-configured on the next flow). Per-Service instances would
//! multiply memory by the number of Services (10,000 Services x 1.1 MiB each), which does not
//! fit a node; plugins are operator-chosen code, so the shared instance is the right default.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::backoff::Permit;
use super::bindings::types;
use super::chain::Chain;
use super::contract::{checked_index, Plugin};
use super::failure::{Failure, FailureKind};
use super::instance::Instance;
use super::runtime::Runtime;
use super::setup::{self, Blame, Done, Job, Reply, Step};
use super::slot::{book, failed, needs, Slot};
use crate::metrics::Role;
use crate::model::{Backend, Family};

/// One call in this many is timed for the latency histogram.
const SAMPLE: u32 = 8;

/// Where setups run: on the caller's thread (plugin bench, runtime tests) or on the setup
/// threads, with the outcome sent back to the worker.
enum Mode {
    Inline,
    Away(Reply),
}

/// What starts setups: the runtime, where they run, and the seeds of new instances.
struct Setups {
    rt: Option<Arc<Runtime>>,
    mode: Mode,
    worker: usize,
    seed: u64,
}

impl Setups {
    /// Lends `slot`'s instance out for `steps` (or runs them here, inline). Inline: the
    /// outcome is booked at once and its failure returned; away: Err(Pending).
    fn start(
        &mut self,
        slot: &mut Slot,
        steps: Vec<Step>,
        blame: Option<Blame>,
        now: Instant,
    ) -> Result<(), FailureKind> {
        let Some(rt) = self.rt.clone() else {
            let f = Failure::new(FailureKind::Instantiate, "plugins are not enabled");
            let done = Done {
                plugin: slot.plugin.clone(),
                live: None,
                failure: Some(f),
                blame,
            };
            return book(slot, None, self.worker, done, now).map_or(Ok(()), Err);
        };
        let mut steps = steps;
        if !slot.forget.is_empty() {
            let forget = slot.forget.drain(..).map(Step::Forget);
            steps.splice(0..0, forget);
        }
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let job = Job {
            rt: rt.clone(),
            plugin: slot.plugin.clone(),
            worker: self.worker,
            seed: self.seed,
            live: slot.live.take(),
            steps,
            blame,
        };
        match &self.mode {
            Mode::Inline => {
                let done = setup::run(job);
                book(slot, Some(&rt), self.worker, done, now).map_or(Ok(()), Err)
            }
            Mode::Away(reply) => {
                slot.away = true;
                rt.setup.submit(job, reply.clone());
                Err(FailureKind::Pending)
            }
        }
    }

    /// Makes `slot` ready for link `i` of `chain`: starts the setup it lacks (instance,
    /// `configure`, endpoints `backends`), if any. Ok when nothing is missing or an inline
    /// setup succeeded; otherwise what `start` answers (Pending while away).
    fn ready(
        &mut self,
        slot: &mut Slot,
        chain: &Arc<Chain>,
        i: usize,
        family: Family,
        backends: Option<&Arc<[Backend]>>,
        now: Instant,
    ) -> Result<(), FailureKind> {
        let Some(steps) = needs(slot, chain, family, backends) else {
            return Ok(());
        };
        let blame = Some(Blame {
            chain: chain.clone(),
            link: i,
        });
        self.start(slot, steps, blame, now)
    }
}

/// The plugin instances of one worker, by plugin version.
pub struct WorkerInstances {
    setups: Setups,
    slots: FxHashMap<usize, Slot>,
    /// Counts calls, to sample latency.
    tick: u32,
}

fn key(p: &Arc<Plugin>) -> usize {
    Arc::as_ptr(p) as usize
}

impl WorkerInstances {
    /// Worker `worker`'s instances (none until routes with chains arrive), set up inline on
    /// the calling thread: for the plugin bench and tests, where no flow waits. Without a
    /// runtime (plugins not enabled) every call fails as [`FailureKind::Instantiate`].
    pub fn new(rt: Option<Arc<Runtime>>, worker: usize) -> Self {
        Self::with_mode(rt, worker, Mode::Inline)
    }

    /// A dataplane worker's instances: setups run on the setup threads and `reply` hands
    /// their outcome back to the worker, which passes it to [`Self::done`].
    pub fn off_worker(rt: Option<Arc<Runtime>>, worker: usize, reply: Reply) -> Self {
        Self::with_mode(rt, worker, Mode::Away(reply))
    }

    fn with_mode(rt: Option<Arc<Runtime>>, worker: usize, mode: Mode) -> Self {
        Self {
            setups: Setups {
                rt,
                mode,
                worker,
                // Per process and worker: plugins' `random` differs between nodes and restarts.
                seed: fastrand::u64(..) ^ worker as u64,
            },
            slots: FxHashMap::default(),
            tick: u32::MAX,
        }
    }

    /// A route with `chain` arrived on this worker. Instances are made on the first call.
    pub fn attach(&mut self, chain: &Chain) {
        for link in &chain.links {
            self.slots
                .entry(key(&link.plugin))
                .or_insert_with(|| Slot::new(link.plugin.clone()))
                .routes += 1;
        }
    }

    /// A route with `chain` left this worker: its handles are forgotten (by a setup: `forget`
    /// is plugin code too), unused instances dropped (their pooling slots return to the pool).
    pub fn detach(&mut self, chain: &Chain) {
        let now = Instant::now();
        for link in &chain.links {
            let k = key(&link.plugin);
            let Some(slot) = self.slots.get_mut(&k) else {
                continue;
            };
            slot.routes = slot.routes.saturating_sub(1);
            if slot.routes == 0 {
                self.slots.remove(&k);
                continue;
            }
            for h in [chain.handle(Family::V4), chain.handle(Family::V6)] {
                let known = (slot.live.as_mut()).is_some_and(|l| l.handles.remove(&h).is_some());
                if known || slot.away {
                    slot.forget.push(h);
                }
            }
            if !slot.away && slot.live.is_some() && !slot.forget.is_empty() {
                // Nobody waits on a forget: its failure only costs the instance.
                let _ = self.setups.start(slot, Vec::new(), None, now);
            }
        }
    }

    /// A setup came back from its thread: the instance returns to its slot (or is dropped
    /// when its plugin left this worker meanwhile) and a failure is booked. The caller then
    /// re-runs its parked flows and calls [`Self::settled`].
    pub fn done(&mut self, done: Done, now: Instant) {
        let k = key(&done.plugin);
        let Some(slot) = self.slots.get_mut(&k).filter(|s| s.away) else {
            return;
        };
        slot.away = false;
        let rt = self.setups.rt.clone();
        slot.setup_failed = book(slot, rt.as_deref(), self.setups.worker, done, now);
        if slot.live.is_some() && !slot.forget.is_empty() {
            let _ = self.setups.start(slot, Vec::new(), None, now);
        }
    }

    /// The flows parked on setups were asked again: a failed setup is tried again by the
    /// next call (subject to the backoff).
    pub fn settled(&mut self) {
        for s in self.slots.values_mut() {
            s.setup_failed = None;
        }
    }

    /// Plugin instances alive on this worker (also those on a setup thread).
    pub fn instances(&self) -> usize {
        (self.slots.values())
            .filter(|s| s.live.is_some() || s.away)
            .count()
    }

    /// Readies every link of `chain` that a new flow of `family` calls on this worker: the
    /// admission links and the affinity link, and the selection link too when `picks` is the
    /// list the flow is picked from next, here. The setups they lack (instance, `configure`,
    /// endpoints) all start now, side by side, and the answer is Pending while any of them is
    /// away. Asked before the first call, so a flow that must wait does so before any link
    /// has decided on it: once it is asked again, each link decides it once (a rate limiter
    /// counts it once, however many datagrams arrived meanwhile). Inline, where nothing
    /// waits, it does nothing; links whose setup failed or that are disabled are left to
    /// their calls, which report that.
    pub fn prepare(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        picks: Option<&Arc<[Backend]>>,
        now: Instant,
    ) -> Result<(), FailureKind> {
        if matches!(self.setups.mode, Mode::Inline) {
            return Ok(());
        }
        let mut pending = false;
        for (i, link) in chain.links.iter().enumerate() {
            let selection = picks.filter(|_| chain.selection == Some(i));
            if !(link.plugin.roles.admission || chain.affinity == Some(i) || selection.is_some()) {
                continue;
            }
            let k = key(&link.plugin);
            if !self.slots.contains_key(&k) {
                self.attach(chain);
            }
            let Some(slot) = self.slots.get_mut(&k) else {
                continue;
            };
            if slot.away {
                pending = true;
                continue;
            }
            if slot.setup_failed.is_some() || slot.backoff.is_disabled(now) {
                continue;
            }
            pending |= self
                .setups
                .ready(slot, chain, i, family, selection, now)
                .is_err();
        }
        if pending {
            return Err(FailureKind::Pending);
        }
        Ok(())
    }

    /// Link `link` (an index into `chain.links`, a link with the admission role) decides; a
    /// deny is counted in the link's metrics. A link without the admission role (or out of
    /// range) allows without a call. Err: the call failed (counted, logged) or is Pending;
    /// the caller applies the failure policy.
    pub fn admit(
        &mut self,
        chain: &Arc<Chain>,
        link: usize,
        family: Family,
        flow: types::Flow,
        now: Instant,
    ) -> Result<types::Verdict, FailureKind> {
        let Some(l) = chain.links.get(link).filter(|l| l.plugin.roles.admission) else {
            return Ok(types::Verdict::Allow);
        };
        let verdict = self.call(chain, link, family, None, now, Role::Admission, |inst| {
            inst.admit(flow)
        })?;
        if let types::Verdict::Deny(reason) = verdict {
            l.metrics.deny(reason as usize);
        }
        Ok(verdict)
    }

    /// First affinity link's key (Ok(None) when the chain has no affinity link or the plugin
    /// gives none). Err: the call failed (counted, logged) or is Pending.
    pub fn affinity_key(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        flow: types::Flow,
        now: Instant,
    ) -> Result<Option<types::Affinity>, FailureKind> {
        let Some(i) = chain.affinity else {
            return Ok(None);
        };
        self.call(chain, i, family, None, now, Role::Affinity, |inst| {
            inst.affinity_key(flow)
        })
    }

    /// First selection link's index into `backends`, never one whose addr is in `tried`;
    /// Ok(None) when it picks nothing. Err(BadAnswer) for out-of-range or already-tried
    /// answers, Err(kind) for other failures (counted, logged; the caller applies the
    /// policy) and Pending, Err(Disabled) without a count when the chain has no selection link.
    pub fn select(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        flow: types::Flow,
        backends: &Arc<[Backend]>,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Result<Option<usize>, FailureKind> {
        let Some(i) = chain.selection else {
            return Err(FailureKind::Disabled);
        };
        let excluded = tried
            .last()
            .and_then(|t| backends.iter().position(|b| b.addr == *t))
            .map(|p| p as u32);
        self.call(
            chain,
            i,
            family,
            Some(backends),
            now,
            Role::Selection,
            |inst| checked_index(inst.select(flow, excluded)?, backends, tried),
        )
    }

    /// Calls link `i` of `chain` on this worker's instance when it is ready for the call;
    /// otherwise starts the setup it needs (instance, `configure`, endpoints) and answers
    /// Pending. Times and counts the call, and books the outcome with the plugin's backoff.
    #[allow(clippy::too_many_arguments)]
    fn call<R>(
        &mut self,
        chain: &Arc<Chain>,
        i: usize,
        family: Family,
        backends: Option<&Arc<[Backend]>>,
        now: Instant,
        role: Role,
        f: impl FnOnce(&mut Instance) -> Result<R, Failure>,
    ) -> Result<R, FailureKind> {
        let link = &chain.links[i];
        let k = key(&link.plugin);
        if !self.slots.contains_key(&k) {
            self.attach(chain);
        }
        let Some(slot) = self.slots.get_mut(&k) else {
            return Err(FailureKind::Disabled);
        };
        if slot.away {
            return Err(FailureKind::Pending);
        }
        if let Some(kind) = slot.setup_failed {
            return Err(kind);
        }
        match slot.backoff.permit(now) {
            Permit::Call => {}
            Permit::Probation => {
                tracing::info!(plugin = %slot.plugin.name, worker = self.setups.worker, "plugin re-enabled after backoff; one call on probation");
            }
            Permit::Disabled => {
                link.metrics.fail(FailureKind::Disabled);
                return Err(FailureKind::Disabled);
            }
        }
        self.setups.ready(slot, chain, i, family, backends, now)?;
        let Some(live) = slot.live.as_mut() else {
            return Err(FailureKind::Instantiate);
        };
        // Two clock reads cost about a sixth of a call: time one call in SAMPLE.
        self.tick = self.tick.wrapping_add(1);
        let result = if !self.tick.is_multiple_of(SAMPLE) {
            link.metrics.call(role);
            f(&mut live.inst)
        } else {
            let t0 = Instant::now();
            let r = f(&mut live.inst);
            link.metrics
                .timed_call(role, t0.elapsed().as_nanos() as u64);
            r
        };
        match result {
            Ok(v) => {
                slot.backoff.record_success();
                Ok(v)
            }
            Err(failure) => {
                let kind = failure.kind;
                link.metrics.fail(kind);
                let rt = self.setups.rt.as_deref();
                if let Some(cause) = failed(slot, rt, self.setups.worker, chain, failure, now) {
                    link.metrics.disable(cause);
                }
                Err(kind)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailurePolicy, Protocol};
    use crate::plugin::wire;

    /// A chain with no links (its fields are public, so no Frontend is needed).
    fn empty_chain() -> Chain {
        Chain {
            links: Vec::new(),
            policy: FailurePolicy::Closed,
            handle: 4,
            namespace: "unit".into(),
            name: "svc".into(),
            port_name: String::new(),
            node_port: 30080,
            protocol: Protocol::Tcp,
            local: false,
            affinity: None,
            selection: None,
            admission: false,
        }
    }

    fn flow() -> types::Flow {
        let a: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let n: SocketAddr = "198.18.255.1:30080".parse().unwrap();
        wire::flow(4, Protocol::Tcp, a, n, 1, 2)
    }

    #[test]
    fn a_chain_without_links_makes_no_instance_and_no_call() {
        let mut w = WorkerInstances::new(None, 0);
        let ch = Arc::new(empty_chain());
        w.attach(&ch);
        assert_eq!(w.instances(), 0);
        let now = Instant::now();
        assert!(matches!(
            w.admit(&ch, 0, Family::V4, flow(), now),
            Ok(types::Verdict::Allow)
        ));
        assert!(matches!(
            w.affinity_key(&ch, Family::V4, flow(), now),
            Ok(None)
        ));
        let b: Arc<[Backend]> = vec![Backend::ready("198.19.0.1:8080".parse().unwrap())].into();
        assert_eq!(
            w.select(&ch, Family::V4, flow(), &b, &[], now),
            Err(FailureKind::Disabled),
            "no selection link: the caller's default decides"
        );
        w.detach(&ch);
        w.detach(&ch);
        assert_eq!(w.instances(), 0);
    }
}
