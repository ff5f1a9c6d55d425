//! Unit tests of the store: objects replaced per origin, the last good version kept when an
//! object is rejected, the Services each change affects, and origins removed.

use super::*;
use crate::model::fixtures::{endpoint, service, slice, spec_mut, tcp, RANGE};
use k8s_openapi::api::core::v1::{ClientIPConfig, SessionAffinityConfig};
use k8s_openapi::api::discovery::v1::EndpointConditions;

fn store() -> Store {
    Store::new(
        RANGE,
        NodeInfo {
            name: "n1".into(),
            zone: None,
        },
    )
}

/// A store where a.yaml holds (and reported) Service x (nodePort 30080) and its slice x-1 (198.18.0.1).
fn store_with_x() -> Store {
    let mut s = store();
    let out = s.apply(
        "a.yaml",
        vec![svc("x", 30080), eps("x-1", "x", "n1", &["198.18.0.1"])],
    );
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.affected, keys(&["x"]));
    s
}

fn key(name: &str) -> ServiceKey {
    ServiceKey::new(Some("ns"), name)
}

fn keys(names: &[&str]) -> BTreeSet<ServiceKey> {
    names.iter().map(|n| key(n)).collect()
}

fn svc(name: &str, node_port: i32) -> Object {
    Object::Service(Box::new(service(name, vec![tcp("http", node_port)])))
}

/// A slice of `service` whose endpoints sit on node `node`.
fn eps(name: &str, service: &str, node: &str, addrs: &[&str]) -> Object {
    let endpoints = addrs
        .iter()
        .map(|a| {
            let mut e = endpoint(a);
            e.node_name = Some(node.into());
            e
        })
        .collect();
    Object::EndpointSlice(Box::new(slice(name, service, "IPv4", endpoints)))
}

fn node_port(s: &Store, name: &str) -> u16 {
    s.service(&key(name)).expect("known").ports[0].node_port
}

fn backends(s: &Store, name: &str) -> Vec<String> {
    let (frontends, warnings) = s.frontends(&key(name)).expect("known");
    assert!(warnings.is_empty(), "{warnings:?}");
    frontends[0].v4.iter().map(|b| b.addr.to_string()).collect()
}

#[test]
fn an_origin_fills_the_store_and_reports_its_services() {
    let s = store_with_x();
    assert_eq!(s.origin(&key("x")), Some("a.yaml"));
    assert_eq!(backends(&s, "x"), vec!["198.18.0.1:8080"]);
    assert_eq!(s.service_keys().collect::<Vec<_>>(), vec![&key("x")]);
    assert!(s.frontends(&key("nope")).is_none());
}

#[test]
fn an_origin_is_replaced_whole_and_only_changes_are_reported() {
    let mut s = store();
    s.apply("a.yaml", vec![svc("x", 30080), svc("y", 30081)]);
    s.apply("b.yaml", vec![svc("z", 30082)]);
    assert!(s
        .apply("a.yaml", vec![svc("x", 30080), svc("y", 30081)])
        .affected
        .is_empty());
    let out = s.apply("a.yaml", vec![svc("x", 30090)]);
    assert_eq!(out.affected, keys(&["x", "y"]));
    assert_eq!(node_port(&s, "x"), 30090);
    assert!(s.service(&key("y")).is_none());
    assert_eq!(node_port(&s, "z"), 30082);
}

#[test]
fn an_object_another_origin_defines_is_refused_there() {
    let mut s = store_with_x();
    let out = s.apply(
        "b.yaml",
        vec![svc("x", 30090), eps("x-1", "x", "n1", &["198.18.0.2"])],
    );
    assert_eq!(
        out.errors,
        vec![
            "b.yaml: Service ns/x is already defined in a.yaml; ignored here",
            "b.yaml: EndpointSlice ns/x-1 is already defined in a.yaml; ignored here",
        ]
    );
    assert!(out.affected.is_empty());
    assert_eq!(node_port(&s, "x"), 30080);
    assert_eq!(backends(&s, "x"), vec!["198.18.0.1:8080"]);
}

#[test]
fn a_rejected_service_keeps_its_last_good_version() {
    let mut s = store();
    s.apply("a.yaml", vec![svc("x", 30080)]);
    let out = s.apply("a.yaml", vec![svc("x", 80)]);
    assert_eq!(
        out.errors,
        vec!["a.yaml: Service ns/x port \"http\": nodePort 80 is outside the nodePort range 30000-32767"]
    );
    assert!(out.affected.is_empty());
    assert_eq!(node_port(&s, "x"), 30080);
    let mut bad = service("x", vec![tcp("http", 30081)]);
    let spec = spec_mut(&mut bad);
    spec.session_affinity = Some("ClientIP".into());
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIPConfig {
            timeout_seconds: Some(0),
        }),
    });
    let out = s.apply("a.yaml", vec![Object::Service(Box::new(bad))]);
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert!(out.errors[0].starts_with("a.yaml: Service ns/x: sessionAffinityConfig"));
    assert_eq!(node_port(&s, "x"), 30080);
}

#[test]
fn a_new_object_that_is_rejected_is_not_stored() {
    let mut s = store();
    let out = s.apply(
        "a.yaml",
        vec![svc("x", 80), eps("x-1", "x", "n1", &["bogus"])],
    );
    assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
    assert!(out.affected.is_empty());
    assert!(s.service(&key("x")).is_none());
    assert!(s.remove_origin("a.yaml").is_empty());
}

#[test]
fn a_rejected_slice_keeps_its_last_good_version() {
    let mut s = store_with_x();
    let out = s.apply(
        "a.yaml",
        vec![svc("x", 30080), eps("x-1", "x", "n1", &["bogus"])],
    );
    assert_eq!(
        out.errors,
        vec!["a.yaml: EndpointSlice ns/x-1: endpoint address \"bogus\" is not an IP address"]
    );
    assert!(out.affected.is_empty());
    assert_eq!(backends(&s, "x"), vec!["198.18.0.1:8080"]);
}

#[test]
fn slice_changes_affect_their_services_also_when_a_slice_moves() {
    let mut s = store();
    s.apply("svc.yaml", vec![svc("x", 30080), svc("y", 30081)]);
    let out = s.apply("eps.yaml", vec![eps("e", "x", "n1", &["198.18.0.1"])]);
    assert_eq!(out.affected, keys(&["x"]));
    let out = s.apply("eps.yaml", vec![eps("e", "y", "n1", &["198.18.0.1"])]);
    assert_eq!(out.affected, keys(&["x", "y"]));
    assert!(backends(&s, "x").is_empty());
    assert_eq!(backends(&s, "y"), vec!["198.18.0.1:8080"]);
    assert_eq!(s.apply("eps.yaml", vec![]).affected, keys(&["y"]));
    assert!(backends(&s, "y").is_empty());
}

#[test]
fn remove_origin_forgets_its_objects_and_reports_their_services() {
    let mut s = store();
    s.apply("svc.yaml", vec![svc("x", 30080)]);
    s.apply(
        "a.yaml",
        vec![svc("y", 30081), eps("x-1", "x", "n1", &["198.18.0.1"])],
    );
    assert_eq!(s.remove_origin("a.yaml"), keys(&["x", "y"]));
    assert!(s.service(&key("y")).is_none());
    assert!(backends(&s, "x").is_empty());
    assert!(s.remove_origin("a.yaml").is_empty());
    assert_eq!(
        s.apply("a.yaml", vec![svc("y", 30081)]).affected,
        keys(&["y"])
    );
}

#[test]
fn ignored_services_are_neither_stored_nor_errors() {
    let mut s = store();
    let mut cluster_ip = service("x", vec![tcp("http", 30080)]);
    spec_mut(&mut cluster_ip).type_ = Some("ClusterIP".into());
    let out = s.apply("a.yaml", vec![Object::Service(Box::new(cluster_ip))]);
    assert!(out.errors.is_empty() && out.affected.is_empty());
    assert!(s.service(&key("x")).is_none());
}

#[test]
fn local_ready_endpoints_counts_distinct_addresses_on_this_node() {
    let mut s = store();
    let mut not_ready = endpoint("198.18.0.3");
    not_ready.node_name = Some("n1".into());
    not_ready.conditions = Some(EndpointConditions {
        ready: Some(false),
        ..Default::default()
    });
    s.apply(
        "a.yaml",
        vec![
            svc("x", 30080),
            eps("x-1", "x", "n1", &["198.18.0.1", "198.18.0.2"]),
            eps("x-2", "x", "n1", &["198.18.0.1"]),
            eps("x-3", "x", "n2", &["198.18.0.9"]),
            Object::EndpointSlice(Box::new(slice("x-4", "x", "IPv4", vec![not_ready]))),
        ],
    );
    assert_eq!(s.local_ready_endpoints(&key("x")), 2);
    assert_eq!(s.local_ready_endpoints(&key("nope")), 0);
}
