//! Builders of Kubernetes objects (k8s-openapi types) and of translate outcomes, shared by the
//! model's unit tests.

use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::{Service as K8sService, ServicePort as K8sPort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as K8sEndpoint, EndpointConditions, EndpointPort, EndpointSlice as K8sSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::service::Service;
use super::translate::{self, ServiceOutcome, SERVICE_NAME_LABEL};

/// The default nodePort range.
pub(crate) const RANGE: RangeInclusive<u16> = 30000..=32767;

/// Namespace of every object built here.
pub(crate) const NS: &str = "ns";

/// A NodePort Service `ns/<name>` with these ports.
pub(crate) fn service(name: &str, ports: Vec<K8sPort>) -> K8sService {
    K8sService {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("NodePort".into()),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// A Service port (`name` empty: unnamed), targetPort unset.
pub(crate) fn port(name: &str, protocol: &str, port: i32, node_port: Option<i32>) -> K8sPort {
    K8sPort {
        name: (!name.is_empty()).then(|| name.into()),
        protocol: Some(protocol.into()),
        port,
        node_port,
        ..Default::default()
    }
}

/// A TCP port 80 with this nodePort.
pub(crate) fn tcp(name: &str, node_port: i32) -> K8sPort {
    port(name, "TCP", 80, Some(node_port))
}

/// The spec of a Service built by [`service`].
pub(crate) fn spec_mut(svc: &mut K8sService) -> &mut ServiceSpec {
    svc.spec.get_or_insert_default()
}

fn outcome(svc: &K8sService) -> ServiceOutcome {
    translate::service(svc, &RANGE)
}

/// The Service as served, asserting that no port was left out.
pub(crate) fn served(svc: &K8sService) -> Service {
    match outcome(svc) {
        ServiceOutcome::Serve(s, errors) if errors.is_empty() => s,
        other => panic!("expected the Service to be served whole, got {other:?}"),
    }
}

/// The messages of the ports that were left out of a served Service.
pub(crate) fn errors(svc: &K8sService) -> Vec<String> {
    match outcome(svc) {
        ServiceOutcome::Serve(_, errors) => errors,
        other => panic!("expected the Service to be served, got {other:?}"),
    }
}

/// Why the Service is rejected whole.
pub(crate) fn invalid(svc: &K8sService) -> String {
    match outcome(svc) {
        ServiceOutcome::Invalid(e) => e,
        other => panic!("expected the Service to be invalid, got {other:?}"),
    }
}

/// Why the Service is ignored.
pub(crate) fn ignored(svc: &K8sService) -> &'static str {
    match outcome(svc) {
        ServiceOutcome::Ignore(why) => why,
        other => panic!("expected the Service to be ignored, got {other:?}"),
    }
}

/// A ready endpoint with one address and explicit conditions.
pub(crate) fn endpoint(addr: &str) -> K8sEndpoint {
    K8sEndpoint {
        addresses: vec![addr.into()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Default::default()
    }
}

/// An EndpointSlice `ns/<name>` of Service `ns/<service>` with one port "http" TCP 8080.
pub(crate) fn slice(
    name: &str,
    service: &str,
    address_type: &str,
    endpoints: Vec<K8sEndpoint>,
) -> K8sSlice {
    K8sSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Some(endpoints),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(8080),
            ..Default::default()
        }]),
    }
}
