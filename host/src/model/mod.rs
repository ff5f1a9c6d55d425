//! The model: what the node should serve, independent of where it came from (manifests or the
//! API server) and of how it is served (the dataplane). Sources fill it, the sync loop turns it
//! into [`Frontend`]s for the dataplane.

pub mod endpoints;
#[cfg(test)]
mod fixtures;
pub mod frontend;
pub mod plugins;
pub mod service;
pub mod store;
pub mod translate;

pub use endpoints::{Endpoint, EndpointSlice, NodeInfo, SlicePort};
pub use frontend::{Backend, Frontend, FrontendKey};
pub use plugins::{FailurePolicy, PluginRef, PluginSpec};
pub use service::{Family, Protocol, Service, ServiceKey, ServicePort, TrafficPolicy};
