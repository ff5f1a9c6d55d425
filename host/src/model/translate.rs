//! Kubernetes objects (k8s-openapi types) to the model, with the checks kube-proxy and the API
//! server would make. Every message names the object so an operator can find it.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::endpoints::{Endpoint, EndpointSlice, SlicePort};
use super::service::{
    Family, Protocol, Service, ServiceKey, ServicePort, TargetPort, TrafficPolicy,
};

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
    let key = ServiceKey::new(
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref().unwrap_or(""),
    );
    if svc.metadata.name.as_deref().unwrap_or("").is_empty() {
        return ServiceOutcome::Invalid("a Service has no metadata.name".into());
    }
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return ServiceOutcome::Ignore("labelled service.kubernetes.io/service-proxy-name");
    }
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return ServiceOutcome::Ignore("labelled service.kubernetes.io/headless");
    }
    let Some(spec) = svc.spec.as_ref() else {
        return ServiceOutcome::Invalid(format!("Service {key} has no spec"));
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty != "NodePort" && ty != "LoadBalancer" {
        return ServiceOutcome::Ignore("type is neither NodePort nor LoadBalancer");
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return ServiceOutcome::Ignore("headless (clusterIP None)");
    }
    let mut errors = Vec::new();
    let mut ports = Vec::new();
    let mut seen = HashSet::new();
    for p in spec.ports.as_deref().unwrap_or_default() {
        let name = p.name.clone().unwrap_or_default();
        let what = if name.is_empty() {
            format!("port {}", p.port)
        } else {
            format!("port {name:?}")
        };
        let protocol = match Protocol::parse(p.protocol.as_deref()) {
            Ok(proto) => proto,
            Err(e) => {
                errors.push(format!("Service {key} {what}: {e}"));
                continue;
            }
        };
        let Some(node_port) = p.node_port else {
            if ty == "LoadBalancer" && spec.allocate_load_balancer_node_ports == Some(false) {
                continue;
            }
            errors.push(format!(
                "Service {key} {what}: no nodePort given (nodeportd does not allocate nodePorts; set spec.ports[].nodePort)"
            ));
            continue;
        };
        let node_port = match u16::try_from(node_port) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                errors.push(format!(
                    "Service {key} {what}: nodePort {node_port} is outside the nodePort range {}-{}",
                    range.start(),
                    range.end()
                ));
                continue;
            }
        };
        if !seen.insert((protocol, node_port)) {
            errors.push(format!("Service {key} {what}: nodePort {node_port}/{protocol} is used twice in this Service"));
            continue;
        }
        let Ok(port) = u16::try_from(p.port) else {
            errors.push(format!(
                "Service {key} {what}: port {} is not a valid port",
                p.port
            ));
            continue;
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ => {
                    errors.push(format!(
                        "Service {key} {what}: targetPort {n} is not a valid port"
                    ));
                    continue;
                }
            },
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name,
            protocol,
            port,
            node_port,
            target_port,
        });
    }
    let mut families = Vec::new();
    for f in spec.ip_families.as_deref().unwrap_or_default() {
        match f.as_str() {
            "IPv4" => families.push(Family::V4),
            "IPv6" => families.push(Family::V6),
            other => errors.push(format!("Service {key}: unknown ipFamily {other:?}")),
        }
    }
    if families.is_empty() {
        // Without ipFamilies, infer from clusterIP as the API server would; IPv4 otherwise.
        let inferred = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| Family::of(&ip));
        families.push(inferred.unwrap_or(Family::V4));
    }
    let traffic_policy = match spec.external_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS);
            if !(1..=86400).contains(&secs) {
                return ServiceOutcome::Invalid(format!(
                    "Service {key}: sessionAffinityConfig.clientIP.timeoutSeconds {secs} must be within 1-86400"
                ));
            }
            Some(Duration::from_secs(secs as u64))
        }
        _ => None,
    };
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok());
    let annotations: BTreeMap<String, String> =
        svc.metadata.annotations.clone().unwrap_or_default();
    let plugins = match super::PluginSpec::from_annotations(&annotations) {
        Ok(spec) => spec.map(std::sync::Arc::new),
        Err(e) => return ServiceOutcome::Invalid(format!("Service {key}: {e}")),
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
        },
        errors,
    )
}

/// Reads an EndpointSlice: Ok(None) for slices nodeportd does not use (FQDN, other proxies).
pub fn endpoint_slice(slice: &K8sSlice) -> Result<Option<EndpointSlice>, String> {
    let name = slice.metadata.name.clone().unwrap_or_default();
    let ns = slice.metadata.namespace.as_deref();
    let shown = ServiceKey::new(ns, &name);
    let labels = slice.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return Ok(None);
    }
    let Some(svc_name) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        return Err(format!(
            "EndpointSlice {shown} has no {SERVICE_NAME_LABEL} label"
        ));
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        _ => return Ok(None),
    };
    let ports = match &slice.ports {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for p in list {
                let pname = p.name.clone().unwrap_or_default();
                let protocol = Protocol::parse(p.protocol.as_deref())
                    .map_err(|e| format!("EndpointSlice {shown} port {pname:?}: {e}"))?;
                let Some(port) = p.port else { continue };
                let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("EndpointSlice {shown} port {pname:?}: {port} is not a valid port")
                })?;
                out.push(SlicePort {
                    name: pname,
                    protocol,
                    port,
                });
            }
            Some(out)
        }
    };
    let mut endpoints = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let Some(first) = ep.addresses.first() else {
            continue;
        };
        let addr: IpAddr = first.parse().map_err(|_| {
            format!("EndpointSlice {shown}: endpoint address {first:?} is not an IP address")
        })?;
        if Family::of(&addr) != family {
            return Err(format!(
                "EndpointSlice {shown}: endpoint address {addr} does not match addressType {}",
                slice.address_type
            ));
        }
        let c = ep.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(true);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        let hints = ep.hints.as_ref();
        endpoints.push(Endpoint {
            addr,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.clone(),
            zone: ep.zone.clone(),
            hint_zones: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect()),
            hint_nodes: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.clone()).collect()),
        });
    }
    Ok(Some(EndpointSlice {
        service: ServiceKey::new(ns, svc_name),
        name,
        family,
        ports,
        endpoints,
    }))
}
