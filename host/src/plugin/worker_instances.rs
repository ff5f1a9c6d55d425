//! A worker's plugin instances: one instance per plugin (per content version) per worker,
//! serving every Service port of that worker that uses the plugin, each by its handle. The
//! worker owns them outright, so per-flow calls take no lock. Each call reports its outcome:
//! an answer, or the [`FailureKind`] of a failure, which is counted, logged (at most once a
//! second per plugin), fed to the plugin's [`Backoff`] and, for a trap, costs the instance
//! (re-made on the next call). What a failure means for the flow (the Service's failure
//! policy) is the caller's decision, not made here.
//!
//! Isolation trade-off: Services that use the same plugin share its instance (and so its
//! linear memory) on a worker. A plugin bug can mix their state, and a trap costs every such
//! Service its plugin state (re-configured on the next flow). Per-Service instances would
//! multiply memory by the number of Services (10,000 Services x 1.1 MiB each), which does not
//! fit a node; plugins are operator-chosen code, so the shared instance is the right default.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::backoff::{Backoff, Cause, Outcome, Permit};
use super::bindings::types;
use super::chain::Chain;
use super::contract::Plugin;
use super::failure::{Failure, FailureKind};
use super::instance::Instance;
use super::runtime::Runtime;
use super::wire;
use crate::metrics::Role;
use crate::model::{Backend, Family};
use crate::notice::{Notice, Reason};

/// One call in this many is timed for the latency histogram.
const SAMPLE: u32 = 8;
/// Failure log lines per plugin and worker: at most one per this period.
const LOG_EVERY: Duration = Duration::from_secs(1);

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
    backoff: Backoff,
    logged: Option<Instant>,
    suppressed: u64,
}

/// The plugin instances of one worker, by plugin version.
pub struct WorkerInstances {
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

impl WorkerInstances {
    /// Worker `worker`'s instances (none until routes with chains arrive). Without a runtime
    /// (plugins not enabled) every call fails as [`FailureKind::Instantiate`].
    pub fn new(rt: Option<Arc<Runtime>>, worker: usize) -> Self {
        Self {
            rt,
            worker,
            slots: FxHashMap::default(),
            // Per process and worker: plugins' `random` differs between nodes and restarts.
            seed: fastrand::u64(..) ^ worker as u64,
            tick: u32::MAX,
        }
    }

    /// A route with `chain` arrived on this worker. Instances are made on the first call.
    pub fn attach(&mut self, chain: &Chain) {
        for link in &chain.links {
            self.slots
                .entry(key(&link.plugin))
                .or_insert_with(|| Slot {
                    plugin: link.plugin.clone(),
                    routes: 0,
                    live: None,
                    backoff: Backoff::new(),
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

    /// Link `link` (an index into `chain.links`, a link with the admission role) decides; a
    /// deny is counted in the link's metrics. A link without the admission role (or out of
    /// range) allows without a call. Err: the call failed (counted, logged); the caller
    /// applies the failure policy.
    pub fn admit(
        &mut self,
        chain: &Chain,
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
    /// gives none). Err: the call failed (counted, logged); the caller applies the policy.
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

    /// First selection link's index into `backends`, never one whose addr is in `tried`;
    /// Ok(None) when it picks nothing. Err(BadAnswer) for out-of-range or already-tried
    /// answers, Err(kind) for other failures (counted, logged; the caller applies the
    /// policy), Err(Disabled) without a count when the chain has no selection link.
    pub fn select(
        &mut self,
        chain: &Chain,
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

    /// Calls link `i` of `chain` on this worker's instance: makes the instance if needed,
    /// configures the handle and sends the endpoints if they changed, times and counts it,
    /// and books the outcome with the plugin's backoff.
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
        match slot.backoff.permit(now) {
            Permit::Call => {}
            Permit::Probation => {
                tracing::info!(plugin = %slot.plugin.name, worker = self.worker, "plugin re-enabled after backoff; one call on probation");
            }
            Permit::Disabled => {
                link.metrics.fail(FailureKind::Disabled);
                return Err(FailureKind::Disabled);
            }
        }
        let live = prepare(
            &self.rt,
            self.worker,
            &mut self.seed,
            slot,
            chain,
            family,
            backends,
        );
        let result = live.and_then(|live| {
            // Two clock reads cost about a sixth of a call: time one call in SAMPLE.
            self.tick = self.tick.wrapping_add(1);
            if !self.tick.is_multiple_of(SAMPLE) {
                link.metrics.call(role);
                return f(&mut live.inst);
            }
            let t0 = Instant::now();
            let r = f(&mut live.inst);
            link.metrics
                .timed_call(role, t0.elapsed().as_nanos() as u64);
            r
        });
        match result {
            Ok(v) => {
                slot.backoff.record_success();
                Ok(v)
            }
            Err(failure) => {
                let kind = failure.kind;
                link.metrics.fail(kind);
                if let Some(cause) =
                    failed(slot, self.rt.as_deref(), self.worker, chain, failure, now)
                {
                    link.metrics.disable(cause);
                }
                Err(kind)
            }
        }
    }
}

/// `answer` of `select` over `backends` if it keeps the contract: in range and not `tried`.
fn checked_index(
    answer: Option<u32>,
    backends: &[Backend],
    tried: &[SocketAddr],
) -> Result<Option<usize>, Failure> {
    let n = backends.len();
    match answer.map(|i| (i, i as usize)) {
        None => Ok(None),
        Some((_, i)) if i < n && !tried.contains(&backends[i].addr) => Ok(Some(i)),
        Some((idx, i)) => Err(Failure::new(
            FailureKind::BadAnswer,
            if i < n {
                format!("select returned {idx}, an endpoint that already failed for this flow")
            } else {
                format!("select returned {idx} but there are {n} endpoints")
            },
        )),
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
        if let Err(msg) = live.inst.configure(&wire::service(chain, family), config)? {
            return Err(Failure::new(
                FailureKind::Configure,
                format!("configure refused {config:?}: {msg}"),
            ));
        }
        live.handles.insert(handle, None);
    }
    if let Some(b) = backends.filter(|_| slot.plugin.roles.selection) {
        if sent.flatten() != Some(Arc::as_ptr(b)) {
            live.inst.set_backends(handle, &wire::backends(b))?;
            live.handles.insert(handle, Some(b.clone()));
        }
    }
    Ok(live)
}

/// Books a failure: a trapped instance is dropped, the backoff decides whether the plugin is
/// disabled, and the failure is logged (a disable always, others once a second per slot).
fn failed(
    slot: &mut Slot,
    rt: Option<&Runtime>,
    worker: usize,
    chain: &Chain,
    failure: Failure,
    now: Instant,
) -> Option<Cause> {
    if failure.kind.poisons() || failure.kind == FailureKind::Instantiate {
        slot.live = None;
    }
    let plugin = &*slot.plugin.name;
    let service = chain.service_name();
    match slot.backoff.record_failure(now) {
        Outcome::Disabled(backoff, cause) => {
            tracing::error!(%service, plugin, worker, failure = %failure, ?backoff, cause = cause.as_str(),
                "plugin keeps failing; disabled on this worker, the Service's failure policy decides meanwhile");
            if let Some(rt) = rt {
                rt.config().notices.send(Notice {
                    namespace: chain.namespace.clone(),
                    name: chain.name.clone(),
                    reason: Reason::PluginDisabled,
                    message: format!(
                        // No worker in the text: every worker's disable is one notice, so
                        // the Event rate limit folds them together.
                        "plugin {plugin} disabled for {backoff:?} on a worker after {}: {failure}; failure policy {:?} decides meanwhile",
                        cause.as_str(),
                        chain.policy
                    ),
                });
            }
            slot.live = None;
            slot.logged = Some(now);
            return Some(cause);
        }
        Outcome::Counted if slot.logged.is_none_or(|t| now >= t + LOG_EVERY) => {
            tracing::warn!(%service, plugin, worker, failure = %failure, suppressed = slot.suppressed,
                "plugin call failed; the Service's failure policy decides this flow");
            slot.logged = Some(now);
            slot.suppressed = 0;
        }
        Outcome::Counted => slot.suppressed += 1,
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailurePolicy, Protocol};

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
        let ch = empty_chain();
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

    #[test]
    fn select_answers_are_checked_against_the_contract() {
        let b: Vec<Backend> = (1..=3)
            .map(|i| Backend::ready(SocketAddr::from(([198, 19, 0, i], 8080))))
            .collect();
        assert!(matches!(checked_index(None, &b, &[]), Ok(None)));
        assert!(matches!(checked_index(Some(2), &b, &[]), Ok(Some(2))));
        let out = checked_index(Some(3), &b, &[]).unwrap_err();
        assert_eq!(out.kind, FailureKind::BadAnswer);
        assert!(
            out.detail.contains("there are 3 endpoints"),
            "{}",
            out.detail
        );
        let again = checked_index(Some(1), &b, &[b[1].addr]).unwrap_err();
        assert_eq!(again.kind, FailureKind::BadAnswer);
        assert!(again.detail.contains("already failed"), "{}", again.detail);
    }
}
