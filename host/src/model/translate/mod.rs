//! Kubernetes objects (k8s-openapi types) to the model, with the checks kube-proxy and the API
//! server would make. Every message names the object so an operator can find it. One module
//! per Kubernetes rule; [`service`] composes them in the order the API server applies them.

mod affinity;
mod annotations;
mod families;
mod ports;
mod skip;
mod slice;
mod traffic;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::Service as K8sService;

use super::service::{Service, ServiceKey};

pub use slice::endpoint_slice;

/// Services with this label belong to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Headless Services are not proxied.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Default ClientIP affinity timeout (3 hours), as the API server defaults it.
pub const DEFAULT_AFFINITY_SECONDS: i32 = 10800;

/// Result of reading one Service: served (maybe with some ports dropped), or ignored.
#[derive(Debug)]
pub enum ServiceOutcome {
    /// Serve it; `errors` name the ports that were left out and why.
    Serve(Service, Vec<String>),
    /// Not for nodeportd (type, labels); the reason is logged at debug level.
    Ignore(&'static str),
    /// Unusable as a whole.
    Invalid(String),
}

/// Reads a Service; `range` is the allowed nodePort range (--nodeport-range).
pub fn service(svc: &K8sService, range: &RangeInclusive<u16>) -> ServiceOutcome {
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let key = ServiceKey::new(svc.metadata.namespace.as_deref(), name);
    if name.is_empty() {
        return ServiceOutcome::Invalid("a Service has no metadata.name".into());
    }
    if let Some(why) = skip::by_labels(svc.metadata.labels.as_ref()) {
        return ServiceOutcome::Ignore(why);
    }
    let Some(spec) = svc.spec.as_ref() else {
        return ServiceOutcome::Invalid(format!("Service {key} has no spec"));
    };
    if let Some(why) = skip::by_spec(spec) {
        return ServiceOutcome::Ignore(why);
    }
    let mut errors = Vec::new();
    let ports = ports::ports(&key, spec, range, &mut errors);
    let families = families::families(&key, spec, &mut errors);
    let traffic_policy = traffic::policy(spec);
    let affinity = match affinity::client_ip(&key, spec) {
        Ok(affinity) => affinity,
        Err(e) => return ServiceOutcome::Invalid(e),
    };
    let health_check_node_port = traffic::health_check_node_port(spec, traffic_policy);
    let annotations: BTreeMap<String, String> =
        svc.metadata.annotations.clone().unwrap_or_default();
    let plugins = match annotations::plugins(&key, &annotations) {
        Ok(plugins) => plugins,
        Err(e) => return ServiceOutcome::Invalid(e),
    };
    let proxy_protocol = match annotations::proxy_protocol(&key, &annotations) {
        Ok(on) => on,
        Err(e) => return ServiceOutcome::Invalid(e),
    };
    let spread_udp = match annotations::spread_udp(&key, &annotations) {
        Ok(on) => on,
        Err(e) => return ServiceOutcome::Invalid(e),
    };
    ServiceOutcome::Serve(
        Service {
            key,
            ports,
            families,
            traffic_policy,
            affinity,
            health_check_node_port,
            annotations,
            plugins,
            proxy_protocol,
            spread_udp,
        },
        errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{ignored, invalid, served, service, tcp};

    #[test]
    fn a_service_without_a_name_is_invalid() {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        svc.metadata.name = None;
        assert_eq!(invalid(&svc), "a Service has no metadata.name");
    }

    #[test]
    fn a_service_without_a_spec_is_invalid_and_named() {
        let mut svc = service("x", vec![]);
        svc.spec = None;
        assert_eq!(invalid(&svc), "Service ns/x has no spec");
    }

    #[test]
    fn labels_are_checked_before_the_spec() {
        let mut svc = service("x", vec![]);
        svc.spec = None;
        svc.metadata.labels = Some([(HEADLESS_LABEL.to_string(), String::new())].into());
        assert_eq!(ignored(&svc), "labelled service.kubernetes.io/headless");
    }

    #[test]
    fn an_empty_namespace_is_default() {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        svc.metadata.namespace = None;
        assert_eq!(served(&svc).key, ServiceKey::new(Some("default"), "x"));
    }

    #[test]
    fn defaults_of_a_plain_node_port_service() {
        let s = served(&service("x", vec![tcp("http", 30080)]));
        assert_eq!(s.key.to_string(), "ns/x");
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.families, vec![crate::model::Family::V4]);
        assert_eq!(s.traffic_policy, crate::model::TrafficPolicy::Cluster);
        assert_eq!(s.affinity, None);
        assert_eq!(s.health_check_node_port, None);
        assert!(s.annotations.is_empty());
        assert_eq!(s.plugins, None);
    }
}
