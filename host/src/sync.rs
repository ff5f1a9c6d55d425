//! The sync loop: source events -> store -> per-Service frontends -> dataplane. It owns the
//! nodePort claims (first Service to claim a port keeps it) and retries Services whose ports
//! could not be programmed. Work is per affected Service, never a rebuild of everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::admin::health::{HealthHandle, HealthUpdate};
use crate::dataplane::Dataplane;
use crate::metrics::{Metrics, ServiceLabels};
use crate::model::store::Store;
use crate::model::{Frontend, FrontendKey, ServiceKey};
use crate::plugin::{Chain, Directory};
use crate::source::SourceEvent;

/// How often Services whose ports could not be bound are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// What the sync loop receives.
pub enum Event {
    /// From a source.
    Source(SourceEvent),
    /// Stop: let flows finish for this long, then return.
    Shutdown(Duration),
    /// Something changed in the plugin directory.
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
    /// Loaded plugins (None: started without --plugin-dir).
    plugins: Option<Directory>,
    /// The chain each frontend runs now.
    chains: HashMap<FrontendKey, Arc<Chain>>,
    /// Why a frontend does not run the chain its annotations ask for (logged once).
    plugin_errors: HashMap<FrontendKey, String>,
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
            plugins: None,
            chains: HashMap::new(),
            plugin_errors: HashMap::new(),
        }
    }

    /// Resolves plugin annotations against `dir`.
    pub fn with_plugins(mut self, dir: Directory) -> Self {
        self.plugins = Some(dir);
        self
    }

    /// Re-reads changed plugins and re-resolves the Services that name them (or wait for one).
    fn plugins_changed(&mut self) {
        let Some(dir) = &mut self.plugins else { return };
        let changed = dir.refresh();
        let keys: BTreeSet<ServiceKey> = self
            .programmed
            .iter()
            .filter(|(_, fes)| {
                fes.iter().any(|fe| {
                    self.plugin_errors.contains_key(&fe.key)
                        || fe.plugins.as_ref().is_some_and(|spec| {
                            spec.chain.iter().any(|r| changed.contains(&r.name))
                        })
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            self.reconcile_all(keys);
        }
    }

    /// The chain `fe` should run: what its annotations ask for, or, when that cannot be
    /// loaded or configured, what it runs now (the native default if nothing).
    fn chain_for(&mut self, key: &ServiceKey, fe: &Frontend) -> Option<Arc<Chain>> {
        let previous = self.chains.get(&fe.key).cloned();
        let wanted = match (&fe.plugins, &mut self.plugins) {
            (None, _) => Ok(None),
            (Some(_), None) => {
                Err("it names plugins but nodeportd runs without --plugin-dir".to_string())
            }
            (Some(_), Some(dir)) => dir.resolve(fe, previous.as_ref()),
        };
        match wanted {
            Ok(chain) => {
                if self.plugin_errors.remove(&fe.key).is_some() {
                    tracing::info!(service = %key, port = %fe.port_name, "Service now runs the plugins it names");
                }
                chain
            }
            Err(e) => {
                if self.plugin_errors.get(&fe.key) != Some(&e) {
                    self.metrics.plugin_load_errors.inc();
                    let keeps = match &previous {
                        Some(c) => format!(
                            "it keeps its previous plugins ({})",
                            c.links
                                .iter()
                                .map(|l| &*l.plugin.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        None => "the native default serves it".to_string(),
                    };
                    tracing::error!(service = %key, port = %fe.port_name, error = %e, "Service's plugins not applied; {keeps}");
                    self.plugin_errors.insert(fe.key, e);
                }
                previous
            }
        }
    }

    /// Removes the metric series of plugins a frontend no longer runs.
    fn forget_chain(&self, fe: &Frontend, old: Option<&Arc<Chain>>, new: Option<&Arc<Chain>>) {
        for link in old.into_iter().flat_map(|c| &c.links) {
            if !new.is_some_and(|n| n.links.iter().any(|l| l.plugin.name == link.plugin.name)) {
                (self.metrics)
                    .forget_plugin::<crate::plugin::FailureKind>(&fe.into(), &link.plugin.name);
            }
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
                Ok(Event::PluginsChanged) => self.plugins_changed(),
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
                self.plugin_errors.remove(&fe.key);
                let old_chain = self.chains.remove(&fe.key);
                self.forget_chain(fe, old_chain.as_ref(), None);
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
            let chain = self.chain_for(key, &fe);
            let old_chain = self.chains.get(&fe.key).cloned();
            let same_chain = Chain::same(chain.as_ref(), old_chain.as_ref());
            // A frontend whose last programming failed is programmed again even if unchanged.
            if before == Some(&fe) && same_chain && !self.incomplete.contains(&fe.key) {
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
            let upserted = self.dataplane.upsert(fe.clone(), chain.clone());
            if upserted.is_ok() || self.dataplane.programmed(&fe.key).is_some() {
                self.forget_chain(&fe, old_chain.as_ref(), chain.as_ref());
                match chain {
                    Some(c) => self.chains.insert(fe.key, c),
                    None => self.chains.remove(&fe.key),
                };
            }
            match upserted {
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
