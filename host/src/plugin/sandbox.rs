//! A worker's plugin instances: one instance per plugin (per content version) per worker,
//! serving every Service port of that worker that uses the plugin, each by its handle. The
//! worker owns them outright, so per-flow calls take no lock. Here failures are contained:
//! counted, logged (at most once a second per plugin), instances that trapped are replaced,
//! and a plugin that keeps failing is disabled with exponential backoff.
//!
//! Isolation trade-off: Services that use the same plugin share its instance (and so its
//! linear memory) on a worker. A plugin bug can mix their state, and a trap costs every such
//! Service its plugin state (re-configured on the next flow). Per-Service instances would
//! multiply memory by the number of Services (10,000 Services x 1.1 MiB each), which does not
//! fit a node; plugins are operator-chosen code, so the shared instance is the right default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::bindings::types;
use super::chain::{self, Chain};
use super::contract::Plugin;
use super::failure::{Failure, FailureKind};
use super::instance::Instance;
use super::runtime::Runtime;
use crate::admin::metrics::Role;
use crate::model::{Backend, Family};

/// One call in this many is timed for the latency histogram.
const SAMPLE: u32 = 8;
/// Failures in a row that disable a plugin on a worker.
const DISABLE_AFTER: u32 = 3;
/// First disable period; doubled on each failure after re-enabling, up to MAX_BACKOFF.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A live instance and the handles it was configured for (with the endpoint list it has).
struct Live {
    inst: Instance,
    handles: FxHashMap<u32, Option<Arc<[Backend]>>>,
}

/// One plugin version on one worker.
struct Slot {
    plugin: Arc<Plugin>,
    /// Routes of this worker whose chain uses it.
    routes: usize,
    live: Option<Live>,
    streak: u32,
    disabled_until: Option<Instant>,
    /// Re-enabled after a disable: the next failure disables again at once.
    probation: bool,
    backoff: Duration,
    logged: Option<Instant>,
    suppressed: u64,
}

/// What admission decided.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go on.
    Allow,
    /// Refused by the plugin.
    Deny,
    /// A plugin failed and the policy is closed.
    Failed,
}

/// The plugin side of one worker.
pub struct WorkerPlugins {
    rt: Option<Arc<Runtime>>,
    worker: usize,
    slots: FxHashMap<usize, Slot>,
    seed: u64,
    /// Counts calls, to sample latency.
    tick: u32,
}

fn key(p: &Arc<Plugin>) -> usize {
    Arc::as_ptr(p) as usize
}

impl WorkerPlugins {
    /// Worker `worker`'s plugins (none until routes with chains arrive).
    pub fn new(rt: Option<Arc<Runtime>>, worker: usize) -> Self {
        Self {
            rt,
            worker,
            slots: FxHashMap::default(),
            seed: 0x5851_f42d_4c95_7f2d ^ worker as u64,
            tick: u32::MAX,
        }
    }

    /// A route with `chain` arrived on this worker.
    pub fn attach(&mut self, chain: &Chain) {
        for link in &chain.links {
            self.slots
                .entry(key(&link.plugin))
                .or_insert_with(|| Slot {
                    plugin: link.plugin.clone(),
                    routes: 0,
                    live: None,
                    streak: 0,
                    disabled_until: None,
                    probation: false,
                    backoff: FIRST_BACKOFF,
                    logged: None,
                    suppressed: 0,
                })
                .routes += 1;
        }
    }

    /// A route with `chain` left this worker: its handles are forgotten, unused instances
    /// dropped (their pooling slots return to the pool).
    pub fn detach(&mut self, chain: &Chain) {
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
            if let Some(live) = &mut slot.live {
                for h in [chain.handle(Family::V4), chain.handle(Family::V6)] {
                    if live.handles.remove(&h).is_some() && live.inst.forget(h).is_err() {
                        slot.live = None;
                        break;
                    }
                }
            }
        }
    }

    /// Plugin instances alive on this worker.
    pub fn instances(&self) -> usize {
        self.slots.values().filter(|s| s.live.is_some()).count()
    }

    /// Runs every admission link. Deny and failures are counted here.
    pub fn admit(
        &mut self,
        chain: &Chain,
        family: Family,
        flow: types::Flow,
        now: Instant,
    ) -> Admit {
        if !chain.admission {
            return Admit::Allow;
        }
        for (i, link) in chain.links.iter().enumerate() {
            if !link.plugin.roles.admission {
                continue;
            }
            match self.call(chain, i, family, None, now, Role::Admission, |inst| {
                inst.admit(flow)
            }) {
                Ok(types::Verdict::Allow) => {}
                Ok(types::Verdict::Deny(reason)) => {
                    link.metrics.deny(reason as usize);
                    return Admit::Deny;
                }
                Err(_) if chain.policy == crate::model::FailurePolicy::Closed => {
                    return Admit::Failed
                }
                Err(_) => {}
            }
        }
        Admit::Allow
    }

    /// The affinity key of the first affinity link: Ok(None) for none, Err when it failed
    /// (counted; the caller applies the policy).
    pub fn affinity_key(
        &mut self,
        chain: &Chain,
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

    /// The index the first selection link picks in `backends`, never one in `tried`:
    /// Ok(None) when it picks nothing, Err when it failed or answered out of contract.
    pub fn select(
        &mut self,
        chain: &Chain,
        family: Family,
        flow: types::Flow,
        backends: &Arc<[Backend]>,
        tried: &[std::net::SocketAddr],
        now: Instant,
    ) -> Result<Option<usize>, FailureKind> {
        let Some(i) = chain.selection else {
            return Err(FailureKind::Disabled);
        };
        let excluded = tried
            .last()
            .and_then(|t| backends.iter().position(|b| b.addr == *t))
            .map(|p| p as u32);
        let n = backends.len();
        self.call(chain, i, family, Some(backends), now, Role::Selection, |inst| {
            match inst.select(flow, excluded)? {
                None => Ok(None),
                Some(idx) if (idx as usize) < n && !tried.contains(&backends[idx as usize].addr) => {
                    Ok(Some(idx as usize))
                }
                Some(idx) => Err(Failure::new(
                    FailureKind::BadAnswer,
                    if (idx as usize) < n {
                        format!("select returned {idx}, an endpoint that already failed for this flow")
                    } else {
                        format!("select returned {idx} but there are {n} endpoints")
                    },
                )),
            }
        })
    }

    /// Calls link `i` of `chain` on this worker's instance: makes the instance if needed,
    /// configures the handle and sends the endpoints if they changed, times and counts it.
    #[allow(clippy::too_many_arguments)]
    fn call<R>(
        &mut self,
        chain: &Chain,
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
        if let Some(until) = slot.disabled_until {
            if now < until {
                link.metrics.fail(FailureKind::Disabled);
                return Err(FailureKind::Disabled);
            }
            slot.disabled_until = None;
            slot.probation = true;
            tracing::info!(plugin = %slot.plugin.name, worker = self.worker, "plugin re-enabled after backoff");
        }
        let result = match Self::prepare(
            &self.rt,
            self.worker,
            &mut self.seed,
            slot,
            chain,
            family,
            backends,
        ) {
            Ok(live) => {
                // Two clock reads cost about a sixth of a call: time one call in SAMPLE.
                self.tick = self.tick.wrapping_add(1);
                if self.tick.is_multiple_of(SAMPLE) {
                    let t0 = Instant::now();
                    let r = f(&mut live.inst);
                    link.metrics
                        .timed_call(role, t0.elapsed().as_nanos() as u64);
                    r
                } else {
                    link.metrics.call(role);
                    f(&mut live.inst)
                }
            }
            Err(f) => Err(f),
        };
        match result {
            Ok(v) => {
                slot.streak = 0;
                if slot.probation {
                    slot.probation = false;
                    slot.backoff = FIRST_BACKOFF;
                }
                Ok(v)
            }
            Err(failure) => {
                let kind = failure.kind;
                link.metrics.fail(kind);
                Self::failed(slot, self.worker, chain, failure, now);
                Err(kind)
            }
        }
    }

    /// The live instance of `slot`, configured for the handle of `family` and (for select)
    /// holding the current endpoint list.
    fn prepare<'a>(
        rt: &Option<Arc<Runtime>>,
        worker: usize,
        seed: &mut u64,
        slot: &'a mut Slot,
        chain: &Chain,
        family: Family,
        backends: Option<&Arc<[Backend]>>,
    ) -> Result<&'a mut Live, Failure> {
        if slot.live.is_none() {
            let rt = rt
                .as_ref()
                .ok_or_else(|| Failure::new(FailureKind::Instantiate, "plugins are not enabled"))?;
            *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let inst = Instance::new(rt, &slot.plugin, worker, *seed)?;
            slot.live = Some(Live {
                inst,
                handles: FxHashMap::default(),
            });
        }
        let Some(live) = slot.live.as_mut() else {
            return Err(Failure::new(FailureKind::Instantiate, "no instance"));
        };
        let handle = chain.handle(family);
        // One lookup: None = handle never configured; Some(list) = the list last sent (the
        // map holds that Arc, so its address cannot be reused by another list).
        let sent = live
            .handles
            .get(&handle)
            .map(|s| s.as_ref().map(Arc::as_ptr));
        if sent.is_none() {
            let link = chain
                .links
                .iter()
                .find(|l| Arc::ptr_eq(&l.plugin, &slot.plugin));
            let config = link.map(|l| l.config.as_str()).unwrap_or("");
            match live.inst.configure(&chain.service(family), config) {
                Ok(Ok(())) => {
                    live.handles.insert(handle, None);
                }
                Ok(Err(msg)) => {
                    return Err(Failure::new(
                        FailureKind::Configure,
                        format!("configure refused {config:?}: {msg}"),
                    ))
                }
                Err(f) => return Err(f),
            }
        }
        if let Some(b) = backends.filter(|_| slot.plugin.roles.selection) {
            if sent.flatten() != Some(Arc::as_ptr(b)) {
                live.inst.set_backends(handle, &chain::backends(b))?;
                live.handles.insert(handle, Some(b.clone()));
            }
        }
        Ok(live)
    }

    /// Books a failure: a trapped instance is dropped, a streak disables the plugin.
    fn failed(slot: &mut Slot, worker: usize, chain: &Chain, failure: Failure, now: Instant) {
        if failure.kind.poisons() || failure.kind == FailureKind::Instantiate {
            slot.live = None;
        }
        slot.streak += 1;
        let disable = slot.probation || slot.streak >= DISABLE_AFTER;
        let plugin = &*slot.plugin.name;
        let service = chain.service_name();
        if disable {
            if slot.probation {
                slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
            }
            slot.disabled_until = Some(now + slot.backoff);
            tracing::error!(%service, plugin, worker, failure = %failure, backoff = ?slot.backoff,
                "plugin keeps failing; disabled on this worker, the failure policy ({}) decides meanwhile", chain.policy.as_str());
            slot.probation = false;
            slot.streak = 0;
            slot.live = None;
            slot.logged = Some(now);
            return;
        }
        if slot
            .logged
            .is_none_or(|t| now >= t + Duration::from_secs(1))
        {
            tracing::warn!(%service, plugin, worker, failure = %failure, suppressed = slot.suppressed,
                "plugin call failed; the failure policy ({}) decides this flow", chain.policy.as_str());
            slot.logged = Some(now);
            slot.suppressed = 0;
        } else {
            slot.suppressed += 1;
        }
    }
}
