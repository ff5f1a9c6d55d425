//! Which Services nodeportd leaves alone, as kube-proxy does: those another proxy owns
//! (`service.kubernetes.io/service-proxy-name`), headless ones (the label, or clusterIP None),
//! and every type other than NodePort and LoadBalancer.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceSpec;

use super::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};

/// Why the labels put a Service out of scope, if they do.
pub(super) fn by_labels(labels: Option<&BTreeMap<String, String>>) -> Option<&'static str> {
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return Some("labelled service.kubernetes.io/service-proxy-name");
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Some("labelled service.kubernetes.io/headless");
    }
    None
}

/// Why the spec puts a Service out of scope (its type, or headless), if it does.
pub(super) fn by_spec(spec: &ServiceSpec) -> Option<&'static str> {
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty != "NodePort" && ty != "LoadBalancer" {
        return Some("type is neither NodePort nor LoadBalancer");
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Some("headless (clusterIP None)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{ignored, served, service, spec_mut, tcp};

    fn labelled(label: &str) -> k8s_openapi::api::core::v1::Service {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        svc.metadata.labels = Some([(label.to_string(), "other".to_string())].into());
        svc
    }

    #[test]
    fn another_proxys_service_is_ignored() {
        assert_eq!(
            ignored(&labelled(SERVICE_PROXY_NAME_LABEL)),
            "labelled service.kubernetes.io/service-proxy-name"
        );
    }

    #[test]
    fn a_service_labelled_headless_is_ignored() {
        assert_eq!(
            ignored(&labelled(HEADLESS_LABEL)),
            "labelled service.kubernetes.io/headless"
        );
    }

    #[test]
    fn other_labels_are_served() {
        served(&labelled("app"));
    }

    #[test]
    fn cluster_ip_none_is_headless() {
        let mut svc = service("x", vec![tcp("http", 30080)]);
        spec_mut(&mut svc).cluster_ip = Some("None".into());
        assert_eq!(ignored(&svc), "headless (clusterIP None)");
    }

    #[test]
    fn only_node_port_and_load_balancer_types_are_served() {
        for ty in [
            None,
            Some("ClusterIP"),
            Some("ExternalName"),
            Some("nodeport"),
        ] {
            let mut svc = service("x", vec![tcp("http", 30080)]);
            spec_mut(&mut svc).type_ = ty.map(String::from);
            assert_eq!(
                ignored(&svc),
                "type is neither NodePort nor LoadBalancer",
                "{ty:?}"
            );
        }
        for ty in ["NodePort", "LoadBalancer"] {
            let mut svc = service("x", vec![tcp("http", 30080)]);
            spec_mut(&mut svc).type_ = Some(ty.into());
            served(&svc);
        }
    }
}
