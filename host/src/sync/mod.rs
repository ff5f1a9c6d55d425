//! The sync loop: source events -> store -> per-Service changes -> dataplane, as kube-proxy's
//! proxier applies what its change trackers recorded. Work is per affected Service, never a
//! rebuild of everything. Events arrive on one channel (sources send straight into it, see
//! `source::Sink`); a timer retries what could not be programmed.
//!
//! What the dataplane runs (frontends, chains) is asked of the dataplane; this loop keeps only
//! what it alone knows: nodePort claims (`claims`), why plugin chains were refused (`chains`),
//! healthCheckNodePorts told (`health_ports`).

pub mod chains;
pub mod changes;
pub mod claims;
pub mod health_ports;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::dataplane::Dataplane;
use crate::metrics::{Metrics, ServiceLabels};
use crate::model::store::Store;
use crate::model::{Frontend, ServiceKey};
use crate::plugin::{Chain, Directory};
use crate::source::SourceEvent;
use chains::Chains;
use changes::{FrontendChange, ServiceChange};
use claims::{Claims, Outcome};
use health_ports::{HealthHandle, HealthPorts};

/// How often Services whose ports could not be bound are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// How long the initial sync waits for plugin loads and config probes before it reports
/// ready.
const INITIAL_PLUGINS: Duration = Duration::from_secs(10);
/// Rounds of waiting and resolving again in that time: a load, a probe, one spare.
const INITIAL_ROUNDS: usize = 3;

/// What the sync loop receives.
pub enum Event {
    /// From a source.
    Source(SourceEvent),
    /// Stop: let flows finish for this long, then return.
    Shutdown(Duration),
    /// Something changed in the plugin directory, or a plugin config probe ended.
    PluginsChanged,
}

impl From<SourceEvent> for Event {
    fn from(e: SourceEvent) -> Self {
        Self::Source(e)
    }
}

/// The control loop state.
pub struct Sync {
    store: Store,
    dataplane: Dataplane,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    /// The first complete listing has been programmed.
    synced: bool,
    /// Services affected before that, programmed together in name order once it is.
    unsynced: BTreeSet<ServiceKey>,
    claims: Claims,
    chains: Chains,
    health: HealthPorts,
}

impl Sync {
    /// A sync loop over an empty store.
    pub fn new(
        store: Store,
        dataplane: Dataplane,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            dataplane,
            chains: Chains::new(metrics.clone()),
            metrics,
            ready,
            synced: false,
            unsynced: BTreeSet::new(),
            claims: Claims::default(),
            health: HealthPorts::default(),
        }
    }

    /// Resolves plugin annotations against `dir`.
    pub fn with_plugins(mut self, dir: Directory) -> Self {
        self.chains.set_directory(dir);
        self
    }

    /// Tells why Services' plugins are not applied to `notices`.
    pub fn with_notices(mut self, notices: crate::notice::Notices) -> Self {
        self.chains.set_notices(notices);
        self
    }

    /// Serves healthCheckNodePorts through `health` (LoadBalancer + Local Services).
    pub fn with_health(mut self, health: HealthHandle) -> Self {
        self.health.serve_through(health);
        self
    }

    /// Runs until told to shut down (or every sender is gone), then drains the dataplane.
    pub fn run(mut self, events: Receiver<Event>) {
        let grace = loop {
            match events.recv_timeout(RETRY_EVERY) {
                Ok(Event::Source(ev)) => self.on_source(ev),
                Ok(Event::Shutdown(grace)) => break grace,
                Ok(Event::PluginsChanged) => self.plugins_changed(),
                Err(RecvTimeoutError::Timeout) => {
                    for e in self.dataplane.refresh_addresses() {
                        self.metrics.config_errors.inc();
                        tracing::error!(error = %e, "nodePort not bound on a new node address");
                    }
                    self.retry_waiting();
                    if self.chains.retry_due() {
                        self.plugins_changed();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break Duration::ZERO,
            }
        };
        self.ready.store(false, Ordering::SeqCst);
        tracing::info!(grace = ?grace, "shutting down: listeners closed, letting flows finish");
        self.dataplane.shutdown(grace);
    }

    /// Applies one source event.
    pub fn on_source(&mut self, ev: SourceEvent) {
        let started = Instant::now();
        let affected = match ev {
            SourceEvent::Objects { origin, objects } => {
                let applied = self.store.apply(&origin, objects);
                for e in &applied.errors {
                    self.metrics.config_errors.inc();
                    tracing::error!(error = %e, "object rejected; its last good version (if any) stays in force");
                }
                applied.affected
            }
            SourceEvent::Failed { origin, error } => {
                self.metrics.config_errors.inc();
                tracing::error!(%origin, %error, "source rejected; its last good objects stay in force");
                return;
            }
            SourceEvent::Removed { origin } => self.store.remove_origin(&origin),
            SourceEvent::NodeAddresses(ips) => {
                self.dataplane.set_node_addresses(ips);
                return;
            }
            SourceEvent::NodeZone(zone) => {
                tracing::info!(zone = zone.as_deref().unwrap_or("<none>"), "node zone");
                self.store.set_zone(zone)
            }
            SourceEvent::Synced => {
                let all = std::mem::take(&mut self.unsynced);
                self.synced = true;
                self.reconcile_all(all);
                // A Service's plugin loads, then its configs are probed: a round each (and a
                // spare). Bounded, as a frontend left pending with nothing out would not end.
                let deadline = Instant::now() + INITIAL_PLUGINS;
                for _ in 0..INITIAL_ROUNDS {
                    if !self.chains.settle(deadline) {
                        break;
                    }
                    self.plugins_changed();
                }
                // Ready means the workers run what was programmed: a Service first programmed
                // natively while its plugin's probe ran must not take a flow natively after
                // /readyz said ok.
                self.dataplane.barrier();
                self.ready.store(true, Ordering::SeqCst);
                tracing::info!(services = self.claims.services(), "initial sync programmed");
                return;
            }
        };
        if !self.synced {
            // Until the first listing is complete, collect: ports are then claimed in Service
            // order, not file order, so restarts resolve conflicts the same way.
            self.unsynced.extend(affected);
            return;
        }
        if affected.is_empty() {
            return;
        }
        self.reconcile_all(affected);
        self.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Returns once the workers have applied every change made so far.
    pub fn barrier(&self) {
        self.dataplane.barrier();
    }

    /// Re-reads changed plugins and re-resolves the Services that name them (or wait for one).
    fn plugins_changed(&mut self) {
        let Some(changed) = self.chains.refresh() else {
            return;
        };
        let keys: BTreeSet<ServiceKey> = self
            .claims
            .holders()
            .filter(|(_, fks)| {
                fks.iter()
                    .filter_map(|k| self.dataplane.programmed(k))
                    .any(|fe| self.chains.needs_resolve(fe, &changed))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            self.reconcile_all(keys);
        }
    }

    /// The timer's retry of Services that could not be fully programmed.
    fn retry_waiting(&mut self) {
        if self.synced && self.claims.any_waiting() {
            let keys = self.claims.waiting().into_iter().collect();
            self.reconcile_all(keys);
        }
    }

    fn reconcile_all(&mut self, keys: BTreeSet<ServiceKey>) {
        let mut freed = false;
        for key in &keys {
            freed |= self.reconcile(key);
        }
        // A released port may unblock a Service that lost a conflict: retry the waiting
        // ones in name order, so the first of them by name gets it.
        while freed && self.claims.any_waiting() {
            freed = false;
            for key in &self.claims.waiting() {
                freed |= self.reconcile(key);
            }
        }
    }

    /// Brings one Service's frontends in the dataplane to what the store says. Returns true
    /// when it released a nodePort.
    fn reconcile(&mut self, key: &ServiceKey) -> bool {
        self.health.update(&self.store, key);
        let (desired, warnings) = self.store.frontends(key).unwrap_or_default();
        for w in warnings {
            tracing::warn!(service = %key, warning = %w);
        }
        let previous: Vec<Frontend> = self
            .claims
            .held(key)
            .iter()
            .filter_map(|k| self.dataplane.programmed(k).cloned())
            .collect();
        let change = ServiceChange::new(previous, desired);
        let freed = !change.removed.is_empty();
        for fe in &change.removed {
            self.remove_frontend(fe);
        }
        let mut errors = Vec::new();
        for (fe, how) in change.current {
            if let Err(e) = self.program(key, fe, how) {
                errors.push(e);
            }
        }
        if self.claims.held(key).is_empty() && self.store.service(key).is_none() {
            self.metrics.endpoint_changes.remove(&ServiceLabels {
                service: key.to_string(),
            });
        }
        self.report(key, errors);
        freed
    }

    /// Removes a frontend the Service no longer has; its port is released.
    fn remove_frontend(&mut self, fe: &Frontend) {
        self.dataplane.remove(&fe.key);
        self.claims.release(&fe.key);
        self.chains.removed(fe);
    }

    /// Programs one frontend of `key` unless another Service holds its port or nothing
    /// changed. Err says, for the Service's report, why it is not (fully) served.
    fn program(
        &mut self,
        key: &ServiceKey,
        fe: Frontend,
        how: FrontendChange,
    ) -> Result<(), String> {
        let port = if fe.port_name.is_empty() {
            String::new()
        } else {
            format!(" port {:?}", fe.port_name)
        };
        let origin = |k: &ServiceKey| self.store.origin(k).unwrap_or("?").to_string();
        if let Some(owner) = self.claims.conflict(key, &fe.key) {
            return Err(format!(
                "Service {key}{port} ({}): nodePort {} is already used by Service {owner} ({}); this port is not served",
                origin(key),
                fe.key,
                origin(owner)
            ));
        }
        let old_chain = self.dataplane.chain(&fe.key).cloned();
        let chain = self.chains.resolve(key, &fe, old_chain.as_ref());
        let same_chain = Chain::same(chain.as_ref(), old_chain.as_ref());
        // A frontend whose last programming failed is programmed again even if unchanged.
        if how == FrontendChange::Unchanged && same_chain && !self.claims.is_incomplete(&fe.key) {
            return Ok(());
        }
        if how == (FrontendChange::Changed { endpoints: true }) {
            self.metrics
                .endpoint_changes
                .get_or_create(&ServiceLabels {
                    service: key.to_string(),
                })
                .inc();
        }
        let upserted = self.dataplane.upsert(fe.clone(), chain.clone());
        // A failed upsert keeps a frontend that was programmed, now with the new route.
        let programmed = self.dataplane.programmed(&fe.key).is_some();
        if programmed {
            self.claims.claim(key, fe.key);
        }
        self.claims.set_incomplete(fe.key, upserted.is_err());
        upserted.map_err(|e| format!("Service {key}{port} ({}): {e}", origin(key)))
    }

    /// Reports a Service not fully programmed, once per distinct reason, and its recovery.
    fn report(&mut self, key: &ServiceKey, errors: Vec<String>) {
        match self.claims.settle(key, errors) {
            Outcome::Complete | Outcome::StillFailing => {}
            Outcome::Recovered => tracing::info!(service = %key, "Service now fully programmed"),
            Outcome::Failed(msg) => {
                self.metrics.config_errors.inc();
                tracing::error!(service = %key, error = %msg, "Service not fully programmed; other Services are unaffected");
            }
        }
    }
}
