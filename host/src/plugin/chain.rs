//! A Service port's resolved plugin chain: the loaded plugins its annotation names, in order,
//! with their configs, metric handles and the Service handle plugins know it by. Built by the
//! control plane ([`super::Directory::resolve`]), carried to workers inside the route.

use std::sync::Arc;

use super::contract::Plugin;
use super::failure::FailureKind;
use crate::metrics::PluginMetrics;
use crate::model::{FailurePolicy, Family, Frontend, Protocol, TrafficPolicy};

/// One plugin of a chain.
#[derive(Debug)]
pub struct Link {
    /// The loaded plugin (a changed file is a new one).
    pub plugin: Arc<Plugin>,
    /// The string `configure` receives.
    pub config: String,
    /// Its counters for this Service port.
    pub metrics: PluginMetrics<FailureKind>,
}

/// A Service port's chain, immutable once built.
#[derive(Debug)]
pub struct Chain {
    /// In annotation order.
    pub links: Vec<Link>,
    /// What a failed call means for the flow (stored here, applied by the caller of
    /// [`super::WorkerInstances`], never inside `plugin`).
    pub policy: FailurePolicy,
    /// Handle of the IPv4 side; the IPv6 side is `handle + 1`.
    pub handle: u32,
    /// Identity given to `configure`.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port name.
    pub port_name: String,
    /// nodePort.
    pub node_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// externalTrafficPolicy Local.
    pub local: bool,
    /// Index of the first link with an affinity role.
    pub affinity: Option<usize>,
    /// Index of the first link with a selection role.
    pub selection: Option<usize>,
    /// Whether any link admits.
    pub admission: bool,
}

impl Chain {
    /// A chain over `links` for frontend `fe`.
    pub fn new(fe: &Frontend, links: Vec<Link>, policy: FailurePolicy, handle: u32) -> Self {
        Self {
            affinity: links.iter().position(|l| l.plugin.roles.affinity),
            selection: links.iter().position(|l| l.plugin.roles.selection),
            admission: links.iter().any(|l| l.plugin.roles.admission),
            links,
            policy,
            handle,
            namespace: fe.service.namespace.clone(),
            name: fe.service.name.clone(),
            port_name: fe.port_name.clone(),
            node_port: fe.key.node_port,
            protocol: fe.key.protocol,
            local: fe.policy == TrafficPolicy::Local,
        }
    }

    /// Whether a rebuilt frontend can keep this chain (same plugins, configs, policy and
    /// identity): then plugins keep their per-Service state and only see new endpoints.
    pub fn serves(
        &self,
        fe: &Frontend,
        plugins: &[(Arc<Plugin>, &str)],
        policy: FailurePolicy,
    ) -> bool {
        self.policy == policy
            && self.namespace == fe.service.namespace
            && self.name == fe.service.name
            && self.port_name == fe.port_name
            && self.local == (fe.policy == TrafficPolicy::Local)
            && self.links.len() == plugins.len()
            && self
                .links
                .iter()
                .zip(plugins)
                .all(|(l, (p, c))| Arc::ptr_eq(&l.plugin, p) && l.config == *c)
    }

    /// Whether two routes run the very same chain (or both none): the test for "plugins
    /// changed" wherever a route is replaced.
    pub fn same(a: Option<&Arc<Chain>>, b: Option<&Arc<Chain>>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// The handle of one address family of this Service port.
    pub fn handle(&self, family: Family) -> u32 {
        match family {
            Family::V4 => self.handle,
            Family::V6 => self.handle + 1,
        }
    }

    /// Indices into `links` of the links with the admission role, in chain order.
    pub fn admission_links(&self) -> impl Iterator<Item = usize> + '_ {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.plugin.roles.admission)
            .map(|(i, _)| i)
    }

    /// "namespace/name", for logs.
    pub fn service_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
