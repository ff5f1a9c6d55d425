//! healthCheckNodePorts: tells the health servers which port serves which Service (LoadBalancer
//! Services with externalTrafficPolicy Local) and how many ready endpoints it has on this node,
//! and stops a port the Service no longer asks for.

use std::collections::HashMap;

use tokio::sync::mpsc::UnboundedSender;

use crate::model::store::Store;
use crate::model::{ServiceKey, TrafficPolicy};

/// What the sync loop tells the health servers.
#[derive(Debug)]
pub enum HealthUpdate {
    /// Serve (or update) `port` for `service` with this many local ready endpoints.
    Set {
        /// healthCheckNodePort.
        port: u16,
        /// The Service.
        service: ServiceKey,
        /// This node's ready endpoints.
        local_endpoints: usize,
    },
    /// Stop serving `port`.
    Remove {
        /// healthCheckNodePort.
        port: u16,
    },
}

/// Sender side, held by the sync loop (usable from any thread); the admin layer's health
/// servers (`admin::health`) read the other end.
pub type HealthHandle = UnboundedSender<HealthUpdate>;

/// The healthCheckNodePort each Service was given, and where updates go.
#[derive(Default)]
pub struct HealthPorts {
    /// The health servers (None: not served, e.g. in benchmarks).
    tx: Option<HealthHandle>,
    /// The port told for each Service, to stop it when it changes or goes.
    ports: HashMap<ServiceKey, u16>,
}

impl HealthPorts {
    /// Sends updates to `tx` from now on.
    pub fn serve_through(&mut self, tx: HealthHandle) {
        self.tx = Some(tx);
    }

    /// Brings `service`'s healthCheckNodePort to what the store says.
    pub fn update(&mut self, store: &Store, service: &ServiceKey) {
        let Some(tx) = &self.tx else { return };
        let wanted = store
            .service(service)
            .filter(|s| s.traffic_policy == TrafficPolicy::Local)
            .and_then(|s| s.health_check_node_port);
        let old = self.ports.get(service).copied();
        if let Some(port) = old.filter(|p| Some(*p) != wanted) {
            // The health servers are gone only at shutdown; nothing to tell then.
            let _ = tx.send(HealthUpdate::Remove { port });
            self.ports.remove(service);
        }
        if let Some(port) = wanted {
            let local_endpoints = store.local_ready_endpoints(service);
            let _ = tx.send(HealthUpdate::Set {
                port,
                service: service.clone(),
                local_endpoints,
            });
            self.ports.insert(service.clone(), port);
        }
    }
}
