//! Service ports: which ones get a listener and why the others are left out. A port needs a
//! nodePort inside the range (LoadBalancer ports without one are skipped when
//! allocateLoadBalancerNodePorts is false), TCP or UDP, a valid port, and a targetPort that is
//! a number or a container port name; (protocol, nodePort) must be unique in the Service.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::{ServicePort as K8sPort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::service::{Protocol, ServiceKey, ServicePort, TargetPort};

/// The ports to serve; every port left out adds a message naming the Service and the port.
pub(super) fn ports(
    key: &ServiceKey,
    spec: &ServiceSpec,
    range: &RangeInclusive<u16>,
    errors: &mut Vec<String>,
) -> Vec<ServicePort> {
    let skip_unallocated = spec.type_.as_deref() == Some("LoadBalancer")
        && spec.allocate_load_balancer_node_ports == Some(false);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in spec.ports.as_deref().unwrap_or_default() {
        let what = describe(p);
        match port(p, range, skip_unallocated, &mut seen) {
            Ok(Some(sp)) => out.push(sp),
            Ok(None) => {}
            Err(e) => errors.push(format!("Service {key} {what}: {e}")),
        }
    }
    out
}

/// How messages name a port: by name, or by number when it has none.
fn describe(p: &K8sPort) -> String {
    match p.name.as_deref().unwrap_or_default() {
        "" => format!("port {}", p.port),
        name => format!("port {name:?}"),
    }
}

/// One port: Ok(None) when it is skipped silently, Err with the reason it is left out.
/// `seen` holds the (protocol, nodePort) pairs of the ports before it.
fn port(
    p: &K8sPort,
    range: &RangeInclusive<u16>,
    skip_unallocated: bool,
    seen: &mut HashSet<(Protocol, u16)>,
) -> Result<Option<ServicePort>, String> {
    let protocol = Protocol::parse(p.protocol.as_deref())?;
    let Some(node_port) = p.node_port else {
        if skip_unallocated {
            return Ok(None);
        }
        return Err(
            "no nodePort given (nodeportd does not allocate nodePorts; set spec.ports[].nodePort)"
                .into(),
        );
    };
    let node_port = match u16::try_from(node_port) {
        Ok(n) if range.contains(&n) => n,
        _ => {
            return Err(format!(
                "nodePort {node_port} is outside the nodePort range {}-{}",
                range.start(),
                range.end()
            ))
        }
    };
    if !seen.insert((protocol, node_port)) {
        return Err(format!(
            "nodePort {node_port}/{protocol} is used twice in this Service"
        ));
    }
    let port = u16::try_from(p.port)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("port {} is not a valid port", p.port))?;
    Ok(Some(ServicePort {
        name: p.name.clone().unwrap_or_default(),
        protocol,
        port,
        node_port,
        target_port: target_port(p.target_port.as_ref(), port)?,
    }))
}

/// targetPort as the API server defaults it (absent, 0 or "" means the Service port): a
/// number, or a name resolved later through EndpointSlice port names.
fn target_port(written: Option<&IntOrString>, port: u16) -> Result<TargetPort, String> {
    match written {
        None | Some(IntOrString::Int(0)) => Ok(TargetPort::Number(port)),
        Some(IntOrString::String(s)) if s.is_empty() => Ok(TargetPort::Number(port)),
        Some(IntOrString::Int(n)) => match u16::try_from(*n) {
            Ok(n) => Ok(TargetPort::Number(n)),
            Err(_) => Err(format!("targetPort {n} is not a valid port")),
        },
        Some(IntOrString::String(s)) => match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(TargetPort::Number(n)),
            _ => Ok(TargetPort::Name(s.clone())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{errors, port as k8s_port, served, service, spec_mut, tcp};

    fn one(p: K8sPort) -> ServicePort {
        let mut ports = served(&service("x", vec![p])).ports;
        assert_eq!(ports.len(), 1);
        ports.remove(0)
    }

    fn with_target(target: IntOrString) -> K8sPort {
        let mut p = tcp("http", 30080);
        p.target_port = Some(target);
        p
    }

    #[test]
    fn a_port_is_read_whole() {
        let p = one(with_target(IntOrString::Int(8080)));
        assert_eq!(
            p,
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: 30080,
                target_port: TargetPort::Number(8080),
            }
        );
    }

    #[test]
    fn node_ports_outside_the_range_are_rejected_naming_the_object() {
        for np in [29999, 32768, 0, -1, 70000] {
            let svc = service("x", vec![tcp("http", np)]);
            assert_eq!(
                errors(&svc),
                vec![format!(
                    "Service ns/x port \"http\": nodePort {np} is outside the nodePort range 30000-32767"
                )]
            );
        }
        for np in [30000, 32767] {
            assert_eq!(one(tcp("http", np)).node_port, np as u16);
        }
    }

    #[test]
    fn an_unnamed_port_is_named_by_number() {
        let svc = service("x", vec![k8s_port("", "TCP", 80, Some(80))]);
        assert_eq!(
            errors(&svc),
            vec!["Service ns/x port 80: nodePort 80 is outside the nodePort range 30000-32767"]
        );
    }

    #[test]
    fn protocols_tcp_udp_default_and_unknown() {
        assert_eq!(
            one(k8s_port("d", "UDP", 53, Some(30053))).protocol,
            Protocol::Udp
        );
        assert_eq!(
            one(k8s_port("t", "TCP", 80, Some(30080))).protocol,
            Protocol::Tcp
        );
        let mut p = tcp("http", 30080);
        p.protocol = None;
        assert_eq!(one(p).protocol, Protocol::Tcp);
        let svc = service("x", vec![k8s_port("s", "SCTP", 80, Some(30080))]);
        assert_eq!(
            errors(&svc),
            vec!["Service ns/x port \"s\": protocol SCTP is not supported (TCP and UDP are)"]
        );
    }

    #[test]
    fn the_same_number_on_tcp_and_udp_is_two_ports_but_twice_on_one_is_an_error() {
        let svc = service(
            "x",
            vec![
                k8s_port("t", "TCP", 53, Some(30053)),
                k8s_port("u", "UDP", 53, Some(30053)),
            ],
        );
        assert_eq!(served(&svc).ports.len(), 2);
        let svc = service("x", vec![tcp("a", 30080), tcp("b", 30080)]);
        assert_eq!(
            errors(&svc),
            vec!["Service ns/x port \"b\": nodePort 30080/tcp is used twice in this Service"]
        );
    }

    #[test]
    fn an_invalid_service_port_is_rejected() {
        for n in [0, 65536] {
            let svc = service("x", vec![k8s_port("http", "TCP", n, Some(30080))]);
            assert_eq!(
                errors(&svc),
                vec![format!(
                    "Service ns/x port \"http\": port {n} is not a valid port"
                )]
            );
        }
    }

    #[test]
    fn numeric_and_named_target_ports() {
        let named = one(with_target(IntOrString::String("web".into())));
        assert_eq!(named.target_port, TargetPort::Name("web".into()));
        let quoted = one(with_target(IntOrString::String("8080".into())));
        assert_eq!(quoted.target_port, TargetPort::Number(8080));
        let svc = service("x", vec![with_target(IntOrString::Int(70000))]);
        assert_eq!(
            errors(&svc),
            vec!["Service ns/x port \"http\": targetPort 70000 is not a valid port"]
        );
    }

    #[test]
    fn an_absent_zero_or_empty_target_port_is_the_service_port() {
        let mut absent = tcp("http", 30080);
        absent.target_port = None;
        for p in [
            absent,
            with_target(IntOrString::Int(0)),
            with_target(IntOrString::String(String::new())),
        ] {
            assert_eq!(one(p).target_port, TargetPort::Number(80));
        }
    }

    #[test]
    fn a_missing_node_port_is_an_error_unless_the_load_balancer_allocates_none() {
        let no_np = || k8s_port("http", "TCP", 80, None);
        let msg = "Service ns/x port \"http\": no nodePort given (nodeportd does not allocate nodePorts; set spec.ports[].nodePort)";
        assert_eq!(errors(&service("x", vec![no_np()])), vec![msg]);
        let mut lb = service("x", vec![no_np()]);
        spec_mut(&mut lb).type_ = Some("LoadBalancer".into());
        assert_eq!(errors(&lb), vec![msg]);
        spec_mut(&mut lb).allocate_load_balancer_node_ports = Some(false);
        assert!(served(&lb).ports.is_empty());
        spec_mut(&mut lb).ports = Some(vec![no_np(), tcp("given", 30081)]);
        let ports = served(&lb).ports;
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name, "given");
        let mut np = service("x", vec![no_np()]);
        spec_mut(&mut np).allocate_load_balancer_node_ports = Some(false);
        assert_eq!(errors(&np), vec![msg]);
    }

    #[test]
    fn bad_ports_are_left_out_and_the_rest_kept() {
        let svc = service("x", vec![tcp("bad", 80), tcp("good", 30080)]);
        let crate::model::translate::ServiceOutcome::Serve(s, errs) =
            crate::model::translate::service(&svc, &crate::model::fixtures::RANGE)
        else {
            panic!("not served");
        };
        assert_eq!(errs.len(), 1);
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.ports[0].name, "good");
    }
}
