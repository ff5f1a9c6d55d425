//! EndpointSlices: the Service a slice belongs to (label kubernetes.io/service-name), its
//! named ports, and each endpoint's first address with its conditions resolved as the API
//! documents them (ready nil = true, serving nil = true, terminating nil = false) and its
//! topology hints. Slices of other proxies, headless Services and FQDN slices are not read.

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{
    Endpoint as K8sEndpoint, EndpointPort, EndpointSlice as K8sSlice,
};

use super::{HEADLESS_LABEL, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};
use crate::model::endpoints::{Endpoint, EndpointSlice, SlicePort};
use crate::model::service::{Family, Protocol, ServiceKey};

/// Reads an EndpointSlice: Ok(None) for slices nodeportd does not use (FQDN, other proxies,
/// headless Services).
pub fn endpoint_slice(slice: &K8sSlice) -> Result<Option<EndpointSlice>, String> {
    let name = slice.metadata.name.clone().unwrap_or_default();
    let ns = slice.metadata.namespace.as_deref();
    let shown = ServiceKey::new(ns, &name);
    let labels = slice.metadata.labels.as_ref();
    if labels
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL) || l.contains_key(HEADLESS_LABEL))
    {
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
        Some(list) => Some(slice_ports(&shown, list)?),
    };
    let mut endpoints = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        if let Some(e) = endpoint(&shown, family, &slice.address_type, ep)? {
            endpoints.push(e);
        }
    }
    Ok(Some(EndpointSlice {
        service: ServiceKey::new(ns, svc_name),
        name,
        family,
        ports,
        endpoints,
    }))
}

/// The slice's ports; a port without a number is left out, a bad one rejects the slice.
fn slice_ports(shown: &ServiceKey, list: &[EndpointPort]) -> Result<Vec<SlicePort>, String> {
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
    Ok(out)
}

/// One endpoint (kube-proxy uses its first address only; none: Ok(None)).
fn endpoint(
    shown: &ServiceKey,
    family: Family,
    address_type: &str,
    ep: &K8sEndpoint,
) -> Result<Option<Endpoint>, String> {
    let Some(first) = ep.addresses.first() else {
        return Ok(None);
    };
    let addr: IpAddr = first.parse().map_err(|_| {
        format!("EndpointSlice {shown}: endpoint address {first:?} is not an IP address")
    })?;
    if Family::of(&addr) != family {
        return Err(format!(
            "EndpointSlice {shown}: endpoint address {addr} does not match addressType {address_type}"
        ));
    }
    let c = ep.conditions.as_ref();
    let hints = ep.hints.as_ref();
    Ok(Some(Endpoint {
        addr,
        ready: c.and_then(|c| c.ready).unwrap_or(true),
        serving: c.and_then(|c| c.serving).unwrap_or(true),
        terminating: c.and_then(|c| c.terminating).unwrap_or(false),
        node_name: ep.node_name.clone(),
        zone: ep.zone.clone(),
        hint_zones: hints
            .and_then(|h| h.for_zones.as_ref())
            .map(|z| z.iter().map(|z| z.name.clone()).collect()),
        hint_nodes: hints
            .and_then(|h| h.for_nodes.as_ref())
            .map(|n| n.iter().map(|n| n.name.clone()).collect()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{endpoint, slice};
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, ForNode, ForZone};

    fn read(s: &K8sSlice) -> EndpointSlice {
        endpoint_slice(s).expect("valid").expect("read")
    }

    fn labelled(label: &str) -> K8sSlice {
        let mut s = slice("x-1", "x", "IPv4", vec![endpoint("198.18.0.1")]);
        s.metadata
            .labels
            .get_or_insert_default()
            .insert(label.into(), "other".into());
        s
    }

    #[test]
    fn a_slice_is_read_for_its_service() {
        let s = read(&slice("x-1", "x", "IPv4", vec![endpoint("198.18.0.1")]));
        assert_eq!(s.service.to_string(), "ns/x");
        assert_eq!(s.name, "x-1");
        assert_eq!(s.family, Family::V4);
        let port = SlicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        };
        assert_eq!(s.ports, Some(vec![port]));
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].addr, IpAddr::from([198, 18, 0, 1]));
    }

    #[test]
    fn nil_conditions_mean_ready_serving_not_terminating() {
        let mut ep = endpoint("198.18.0.1");
        ep.conditions = None;
        let mut empty = endpoint("198.18.0.2");
        empty.conditions = Some(EndpointConditions::default());
        let s = read(&slice("x-1", "x", "IPv4", vec![ep, empty]));
        for e in &s.endpoints {
            assert!(e.ready && e.serving && !e.terminating, "{e:?}");
        }
    }

    #[test]
    fn explicit_conditions_are_kept() {
        let mut ep = endpoint("198.18.0.1");
        ep.conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(false),
            terminating: Some(true),
        });
        let e = &read(&slice("x-1", "x", "IPv4", vec![ep])).endpoints[0];
        assert!(!e.ready && !e.serving && e.terminating);
    }

    #[test]
    fn first_address_node_zone_and_hints_are_read() {
        let mut ep = endpoint("198.18.0.1");
        ep.addresses.push("198.18.0.9".into());
        ep.node_name = Some("n1".into());
        ep.zone = Some("z1".into());
        ep.hints = Some(EndpointHints {
            for_nodes: Some(vec![ForNode { name: "n1".into() }]),
            for_zones: Some(vec![
                ForZone { name: "z1".into() },
                ForZone { name: "z2".into() },
            ]),
        });
        let mut bare = endpoint("198.18.0.2");
        bare.addresses.clear();
        let s = read(&slice("x-1", "x", "IPv4", vec![ep, bare]));
        assert_eq!(
            s.endpoints.len(),
            1,
            "an endpoint without addresses is skipped"
        );
        let e = &s.endpoints[0];
        assert_eq!(e.addr, IpAddr::from([198, 18, 0, 1]));
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        assert_eq!(e.zone.as_deref(), Some("z1"));
        assert_eq!(e.hint_nodes, Some(vec!["n1".to_string()]));
        assert_eq!(e.hint_zones, Some(vec!["z1".to_string(), "z2".to_string()]));
    }

    #[test]
    fn slices_of_other_proxies_headless_services_and_fqdn_are_not_read() {
        assert_eq!(
            endpoint_slice(&labelled(SERVICE_PROXY_NAME_LABEL)),
            Ok(None)
        );
        assert_eq!(endpoint_slice(&labelled(HEADLESS_LABEL)), Ok(None));
        let fqdn = slice("x-1", "x", "FQDN", vec![]);
        assert_eq!(endpoint_slice(&fqdn), Ok(None));
    }

    #[test]
    fn ports_without_a_number_are_skipped_and_no_ports_is_unrestricted() {
        let mut s = slice("x-1", "x", "IPv4", vec![]);
        s.ports.get_or_insert_default()[0].port = None;
        assert_eq!(read(&s).ports, Some(vec![]));
        s.ports = None;
        assert_eq!(read(&s).ports, None);
    }

    #[test]
    fn ipv6_slices() {
        let s = read(&slice("x-1", "x", "IPv6", vec![endpoint("fd00::1")]));
        assert_eq!(s.family, Family::V6);
        assert_eq!(s.endpoints[0].addr, "fd00::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn errors_name_the_slice() {
        let mut s = slice("x-1", "x", "IPv4", vec![]);
        s.metadata.labels = None;
        assert_eq!(
            endpoint_slice(&s),
            Err("EndpointSlice ns/x-1 has no kubernetes.io/service-name label".into())
        );
        let s = slice("x-1", "x", "IPv4", vec![endpoint("not-an-ip")]);
        assert_eq!(
            endpoint_slice(&s),
            Err("EndpointSlice ns/x-1: endpoint address \"not-an-ip\" is not an IP address".into())
        );
        let s = slice("x-1", "x", "IPv4", vec![endpoint("fd00::1")]);
        assert_eq!(
            endpoint_slice(&s),
            Err(
                "EndpointSlice ns/x-1: endpoint address fd00::1 does not match addressType IPv4"
                    .into()
            )
        );
        let mut s = slice("x-1", "x", "IPv4", vec![]);
        s.ports.get_or_insert_default()[0].port = Some(0);
        assert_eq!(
            endpoint_slice(&s),
            Err("EndpointSlice ns/x-1 port \"http\": 0 is not a valid port".into())
        );
        s.ports.get_or_insert_default()[0].protocol = Some("SCTP".into());
        assert_eq!(
            endpoint_slice(&s),
            Err("EndpointSlice ns/x-1 port \"http\": protocol SCTP is not supported (TCP and UDP are)".into())
        );
    }
}
