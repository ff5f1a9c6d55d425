//! The store: every object the sources gave, by origin (a manifest file, or the API server),
//! translated to the model. An object that fails its checks is rejected whole, as the API
//! server would reject it, and the last good version of it stays; other objects are untouched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;

use super::endpoints::{EndpointSlice, NodeInfo};
use super::frontend::{self, Frontend};
use super::service::{Service, ServiceKey};
use super::translate::{self, ServiceOutcome};

/// A Kubernetes object a source delivers.
#[derive(Clone, Debug)]
pub enum Object {
    /// core/v1 Service.
    Service(Box<K8sService>),
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(Box<K8sSlice>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum ObjectId {
    Service(ServiceKey),
    Slice(String, String),
}

/// What one source update changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Services whose frontends must be rebuilt.
    pub affected: BTreeSet<ServiceKey>,
    /// Rejected objects, each message naming the origin and the object.
    pub errors: Vec<String>,
}

/// Every object known, translated.
pub struct Store {
    range: RangeInclusive<u16>,
    node: NodeInfo,
    origins: HashMap<String, BTreeSet<ObjectId>>,
    services: BTreeMap<ServiceKey, (String, Service)>,
    slices: HashMap<(String, String), (String, EndpointSlice)>,
    slices_by_service: HashMap<ServiceKey, BTreeSet<(String, String)>>,
}

impl Store {
    /// An empty store for a node, with the allowed nodePort range.
    pub fn new(range: RangeInclusive<u16>, node: NodeInfo) -> Self {
        Self {
            range,
            node,
            origins: HashMap::new(),
            services: BTreeMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
        }
    }

    /// Replaces what `origin` holds with `objects`.
    pub fn apply(&mut self, origin: &str, objects: Vec<Object>) -> Applied {
        let mut out = Applied::default();
        let mut now: BTreeSet<ObjectId> = BTreeSet::new();
        for obj in objects {
            match obj {
                Object::Service(svc) => self.put_service(origin, &svc, &mut now, &mut out),
                Object::EndpointSlice(slice) => self.put_slice(origin, &slice, &mut now, &mut out),
            }
        }
        let before = self
            .origins
            .insert(origin.to_string(), now.clone())
            .unwrap_or_default();
        for gone in before.difference(&now) {
            self.drop_object(origin, gone, &mut out.affected);
        }
        out
    }

    /// Forgets everything `origin` held (its file was deleted).
    pub fn remove_origin(&mut self, origin: &str) -> BTreeSet<ServiceKey> {
        let mut affected = BTreeSet::new();
        for id in self.origins.remove(origin).unwrap_or_default() {
            self.drop_object(origin, &id, &mut affected);
        }
        affected
    }

    fn put_service(
        &mut self,
        origin: &str,
        svc: &K8sService,
        now: &mut BTreeSet<ObjectId>,
        out: &mut Applied,
    ) {
        let key = ServiceKey::new(
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref().unwrap_or(""),
        );
        if let Some((owner, _)) = self.services.get(&key) {
            if owner != origin {
                out.errors.push(format!(
                    "{origin}: Service {key} is already defined in {owner}; ignored here"
                ));
                return;
            }
        }
        match translate::service(svc, &self.range) {
            ServiceOutcome::Serve(s, errors) if errors.is_empty() => {
                now.insert(ObjectId::Service(key.clone()));
                let changed = self.services.get(&key).is_none_or(|(_, old)| *old != s);
                if changed {
                    self.services.insert(key.clone(), (origin.to_string(), s));
                    out.affected.insert(key);
                }
            }
            ServiceOutcome::Serve(_, errors) => {
                self.keep_last_good(ObjectId::Service(key), origin, now);
                out.errors
                    .extend(errors.into_iter().map(|e| format!("{origin}: {e}")));
            }
            ServiceOutcome::Invalid(e) => {
                self.keep_last_good(ObjectId::Service(key), origin, now);
                out.errors.push(format!("{origin}: {e}"));
            }
            ServiceOutcome::Ignore(why) => {
                tracing::debug!(%origin, service = %key, why, "Service not served by nodeportd");
            }
        }
    }

    fn put_slice(
        &mut self,
        origin: &str,
        slice: &K8sSlice,
        now: &mut BTreeSet<ObjectId>,
        out: &mut Applied,
    ) {
        let ns = slice
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let name = slice.metadata.name.clone().unwrap_or_default();
        let id = (ns.clone(), name.clone());
        if let Some((owner, _)) = self.slices.get(&id) {
            if owner != origin {
                out.errors.push(format!("{origin}: EndpointSlice {ns}/{name} is already defined in {owner}; ignored here"));
                return;
            }
        }
        match translate::endpoint_slice(slice) {
            Ok(Some(s)) => {
                now.insert(ObjectId::Slice(ns.clone(), name.clone()));
                let prev = self.slices.get(&id).map(|(_, old)| old.clone());
                if prev.as_ref() == Some(&s) {
                    return;
                }
                if let Some(prev) = prev.filter(|p| p.service != s.service) {
                    self.unindex_slice(&prev.service, &id);
                    out.affected.insert(prev.service);
                }
                out.affected.insert(s.service.clone());
                self.slices_by_service
                    .entry(s.service.clone())
                    .or_default()
                    .insert(id.clone());
                self.slices.insert(id, (origin.to_string(), s));
            }
            Ok(None) => {}
            Err(e) => {
                self.keep_last_good(ObjectId::Slice(ns, name), origin, now);
                out.errors.push(format!("{origin}: {e}"));
            }
        }
    }

    /// A rejected object keeps its previous version from the same origin, if any.
    fn keep_last_good(&self, id: ObjectId, origin: &str, now: &mut BTreeSet<ObjectId>) {
        if self
            .origins
            .get(origin)
            .is_some_and(|ids| ids.contains(&id))
        {
            now.insert(id);
        }
    }

    fn unindex_slice(&mut self, service: &ServiceKey, id: &(String, String)) {
        if let Some(set) = self.slices_by_service.get_mut(service) {
            set.remove(id);
            if set.is_empty() {
                self.slices_by_service.remove(service);
            }
        }
    }

    fn drop_object(&mut self, origin: &str, id: &ObjectId, affected: &mut BTreeSet<ServiceKey>) {
        match id {
            ObjectId::Service(key) => {
                if self.services.get(key).is_some_and(|(o, _)| o == origin) {
                    self.services.remove(key);
                    affected.insert(key.clone());
                }
            }
            ObjectId::Slice(ns, name) => {
                let sid = (ns.clone(), name.clone());
                if self.slices.get(&sid).is_some_and(|(o, _)| o == origin) {
                    if let Some((_, s)) = self.slices.remove(&sid) {
                        self.unindex_slice(&s.service, &sid);
                        affected.insert(s.service);
                    }
                }
            }
        }
    }

    /// This node's topology zone changed (its Node object's label): every Service may pick
    /// other endpoints by topology hints, so all are affected (none when it did not change).
    pub fn set_zone(&mut self, zone: Option<String>) -> BTreeSet<ServiceKey> {
        if self.node.zone == zone {
            return BTreeSet::new();
        }
        self.node.zone = zone;
        self.services.keys().cloned().collect()
    }

    /// The frontends a Service should have now (None: no such Service), plus warnings.
    pub fn frontends(&self, key: &ServiceKey) -> Option<(Vec<Frontend>, Vec<String>)> {
        let (_, svc) = self.services.get(key)?;
        let slices: Vec<&EndpointSlice> = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slices.get(id).map(|(_, s)| s))
            .collect();
        Some(frontend::build(svc, &slices, &self.node))
    }

    /// This node's ready endpoints of a Service (distinct addresses), for healthCheckNodePort.
    pub fn local_ready_endpoints(&self, key: &ServiceKey) -> usize {
        let mut addrs: Vec<std::net::IpAddr> = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slices.get(id).map(|(_, s)| s))
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.ready && e.node_name.as_deref() == Some(self.node.name.as_str()))
            .map(|e| e.addr)
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs.len()
    }

    /// Where a Service was defined (its file), for messages.
    pub fn origin(&self, key: &ServiceKey) -> Option<&str> {
        self.services.get(key).map(|(o, _)| o.as_str())
    }

    /// The Service, if known.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key).map(|(_, s)| s)
    }

    /// Every Service key, in order.
    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }
}

#[cfg(test)]
mod tests;
