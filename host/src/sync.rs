//! The sync loop: source events -> store -> per-Service frontends -> dataplane. It owns the
//! nodePort claims (first Service to claim a port keeps it) and retries Services whose ports
//! could not be programmed. Work is per affected Service, never a rebuild of everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::admin::health::{HealthHandle, HealthUpdate};
use crate::admin::metrics::{Metrics, ServiceLabels};
use crate::dataplane::Dataplane;
use crate::model::store::Store;
use crate::model::{Frontend, FrontendKey, ServiceKey};
use crate::source::SourceEvent;

/// How often Services whose ports could not be bound are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// What the sync loop receives.
pub enum Event {
    /// From a source.
    Source(SourceEvent),
    /// Stop: let flows finish for this long, then return.
    Shutdown(Duration),
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
    claims: HashMap<FrontendKey, ServiceKey>,
    programmed: HashMap<ServiceKey, Vec<Frontend>>,
    pending: BTreeSet<ServiceKey>,
    last_error: HashMap<ServiceKey, String>,
    synced: bool,
    unsynced: BTreeSet<ServiceKey>,
    health: Option<HealthHandle>,
    health_ports: HashMap<ServiceKey, u16>,
    /// Frontends whose last programming failed (some socket could not be bound).
    incomplete: std::collections::HashSet<FrontendKey>,
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
            metrics,
            ready,
            claims: HashMap::new(),
            programmed: HashMap::new(),
            pending: BTreeSet::new(),
            last_error: HashMap::new(),
            synced: false,
            unsynced: BTreeSet::new(),
            health: None,
            health_ports: HashMap::new(),
            incomplete: Default::default(),
        }
    }

    /// Serves healthCheckNodePorts through `health` (LoadBalancer + Local Services).
    pub fn with_health(mut self, health: HealthHandle) -> Self {
        self.health = Some(health);
        self
    }

    fn update_health(&mut self, key: &ServiceKey) {
        let Some(tx) = &self.health else { return };
        let wanted = self
            .store
            .service(key)
            .filter(|s| s.traffic_policy == crate::model::TrafficPolicy::Local)
            .and_then(|s| s.health_check_node_port);
        let old = self.health_ports.get(key).copied();
        if let Some(port) = old.filter(|p| Some(*p) != wanted) {
            let _ = tx.send(HealthUpdate::Remove { port });
            self.health_ports.remove(key);
        }
        if let Some(port) = wanted {
            let local_endpoints = self.store.local_ready_endpoints(key);
            let _ = tx.send(HealthUpdate::Set {
                port,
                service: key.clone(),
                local_endpoints,
            });
            self.health_ports.insert(key.clone(), port);
        }
    }

    /// Runs until told to shut down (or every sender is gone), then drains the dataplane.
    pub fn run(mut self, events: Receiver<Event>) {
        let grace = loop {
            match events.recv_timeout(RETRY_EVERY) {
                Ok(Event::Source(ev)) => self.on_source(ev),
                Ok(Event::Shutdown(grace)) => break grace,
                Err(RecvTimeoutError::Timeout) => {
                    for e in self.dataplane.refresh_addresses() {
                        self.metrics.config_errors.inc();
                        tracing::error!(error = %e, "nodePort not bound on a new node address");
                    }
                    self.retry_pending();
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
            SourceEvent::Synced => {
                let all = std::mem::take(&mut self.unsynced);
                self.synced = true;
                self.reconcile_all(all);
                self.ready.store(true, Ordering::SeqCst);
                tracing::info!(services = self.programmed.len(), "initial sync programmed");
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

    fn retry_pending(&mut self) {
        if self.synced && !self.pending.is_empty() {
            let keys = self.pending.clone();
            self.reconcile_all(keys);
        }
    }

    fn reconcile_all(&mut self, keys: BTreeSet<ServiceKey>) {
        let mut freed = false;
        for key in &keys {
            freed |= self.reconcile(key);
        }
        // A released port may unblock a Service that lost a conflict.
        while freed && !self.pending.is_empty() {
            freed = false;
            let keys: Vec<ServiceKey> = self.pending.iter().cloned().collect();
            for key in &keys {
                freed |= self.reconcile(key);
            }
        }
    }

    /// Brings one Service's frontends in the dataplane to what the store says. Returns true
    /// when it released a nodePort.
    fn reconcile(&mut self, key: &ServiceKey) -> bool {
        self.update_health(key);
        let (desired, warnings) = self.store.frontends(key).unwrap_or_default();
        for w in warnings {
            tracing::warn!(service = %key, warning = %w);
        }
        let old = self.programmed.remove(key).unwrap_or_default();
        let mut freed = false;
        for fe in &old {
            if !desired.iter().any(|d| d.key == fe.key) {
                self.incomplete.remove(&fe.key);
                self.dataplane.remove(&fe.key);
                self.claims.remove(&fe.key);
                freed = true;
            }
        }
        let mut now = Vec::new();
        let mut errors = Vec::new();
        for fe in desired {
            let port = if fe.port_name.is_empty() {
                String::new()
            } else {
                format!(" port {:?}", fe.port_name)
            };
            if let Some(owner) = self.claims.get(&fe.key).filter(|o| *o != key) {
                let origin = |k: &ServiceKey| self.store.origin(k).unwrap_or("?").to_string();
                errors.push(format!(
                    "Service {key}{port} ({}): nodePort {} is already used by Service {owner} ({}); this port is not served",
                    origin(key),
                    fe.key,
                    origin(owner)
                ));
                continue;
            }
            let before = old.iter().find(|o| o.key == fe.key);
            // A frontend whose last programming failed is programmed again even if unchanged.
            if before == Some(&fe) && !self.incomplete.contains(&fe.key) {
                now.push(fe);
                continue;
            }
            if before.is_some_and(|b| b.v4 != fe.v4 || b.v6 != fe.v6) {
                self.metrics
                    .endpoint_changes
                    .get_or_create(&ServiceLabels {
                        service: key.to_string(),
                    })
                    .inc();
            }
            match self.dataplane.upsert(fe.clone()) {
                Ok(()) => {
                    self.incomplete.remove(&fe.key);
                    self.claims.insert(fe.key, key.clone());
                    now.push(fe);
                }
                Err(e) => {
                    let origin = self.store.origin(key).unwrap_or("?");
                    errors.push(format!("Service {key}{port} ({origin}): {e}"));
                    self.incomplete.insert(fe.key);
                    if self.dataplane.programmed(&fe.key).is_some() {
                        self.claims.insert(fe.key, key.clone());
                        now.push(fe);
                    }
                }
            }
        }
        if !now.is_empty() {
            self.programmed.insert(key.clone(), now);
        } else if self.store.service(key).is_none() {
            self.metrics.endpoint_changes.remove(&ServiceLabels {
                service: key.to_string(),
            });
        }
        if errors.is_empty() {
            self.pending.remove(key);
            if self.last_error.remove(key).is_some() {
                tracing::info!(service = %key, "Service now fully programmed");
            }
        } else {
            self.pending.insert(key.clone());
            let msg = errors.join("; ");
            if self.last_error.get(key) != Some(&msg) {
                self.metrics.config_errors.inc();
                tracing::error!(service = %key, error = %msg, "Service not fully programmed; other Services are unaffected");
                self.last_error.insert(key.clone(), msg);
            }
        }
        freed
    }
}
