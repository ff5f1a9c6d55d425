//! externalTrafficPolicy (Local keeps traffic on this node's endpoints, anything else is
//! Cluster) and the healthCheckNodePort that kube-proxy serves only for LoadBalancer Services
//! with policy Local.

use k8s_openapi::api::core::v1::ServiceSpec;

use crate::model::service::TrafficPolicy;

/// spec.externalTrafficPolicy.
pub(super) fn policy(spec: &ServiceSpec) -> TrafficPolicy {
    match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

/// spec.healthCheckNodePort, kept only where kube-proxy serves it (LoadBalancer + Local).
pub(super) fn health_check_node_port(spec: &ServiceSpec, policy: TrafficPolicy) -> Option<u16> {
    if spec.type_.as_deref() != Some("LoadBalancer") || policy != TrafficPolicy::Local {
        return None;
    }
    spec.health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{served, service, spec_mut, tcp};

    fn with(
        ty: &str,
        policy: Option<&str>,
        hc: Option<i32>,
    ) -> k8s_openapi::api::core::v1::Service {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        let spec = spec_mut(&mut svc);
        spec.type_ = Some(ty.into());
        spec.external_traffic_policy = policy.map(String::from);
        spec.health_check_node_port = hc;
        svc
    }

    #[test]
    fn traffic_policy_local_or_cluster() {
        let p = |v| served(&with("NodePort", v, None)).traffic_policy;
        assert_eq!(p(Some("Local")), TrafficPolicy::Local);
        assert_eq!(p(Some("Cluster")), TrafficPolicy::Cluster);
        assert_eq!(p(None), TrafficPolicy::Cluster);
    }

    #[test]
    fn health_check_node_port_only_for_load_balancer_local() {
        let hc = |ty, policy| served(&with(ty, policy, Some(31000))).health_check_node_port;
        assert_eq!(hc("LoadBalancer", Some("Local")), Some(31000));
        assert_eq!(hc("LoadBalancer", Some("Cluster")), None);
        assert_eq!(hc("NodePort", Some("Local")), None);
        let bad = served(&with("LoadBalancer", Some("Local"), Some(70000)));
        assert_eq!(bad.health_check_node_port, None);
    }
}
