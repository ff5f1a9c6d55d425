//! The sync loop against a real dataplane (one worker, 127.0.0.1, ports the kernel hands out
//! and the test holds): conflicts, releases and endpoint changes as the daemon applies them.

use socket2::{Domain, Socket, Type};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::dataplane::listener::BindAddresses;
use crate::dataplane::DataplaneConfig;
use crate::model::{FrontendKey, NodeInfo, Protocol};
use crate::source::manifests;

fn sync() -> Sync {
    let cidr: ipnet::IpNet = "127.0.0.1/32".parse().expect("cidr");
    let bind = BindAddresses::resolve(&[cidr]).expect("addresses");
    let cfg = DataplaneConfig {
        connect_timeout: Duration::from_secs(1),
        connect_attempts: 1,
        tcp_idle_timeout: Duration::ZERO,
        max_flows_per_worker: 16,
        splice: false,
        ..DataplaneConfig::new(bind)
    };
    let metrics = Arc::new(Metrics::new());
    let dataplane = Dataplane::start(cfg, metrics.clone()).expect("dataplane");
    let node = NodeInfo {
        name: "node-0".into(),
        zone: None,
    };
    let store = Store::new(1..=u16::MAX, node);
    Sync::new(store, dataplane, metrics, Arc::new(AtomicBool::new(false)))
}

/// TCP ports on 127.0.0.1 held for the test: bound (never listening) with SO_REUSEPORT, as
/// the dataplane binds its TCP listeners, so the dataplane can still bind and listen on them
/// while nothing else can take them (other binds fail, and no outgoing connection picks a
/// bound port as its source port). Keep the holders alive as long as the ports are used.
fn held_ports<const N: usize>() -> ([u16; N], Vec<Socket>) {
    let held: Vec<Socket> = (0..N)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            s.set_reuse_port(true).expect("SO_REUSEPORT");
            let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
            s.bind(&any.into()).expect("bind");
            s
        })
        .collect();
    let port = |s: &Socket| {
        s.local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("bound address")
            .port()
    };
    (std::array::from_fn(|i| port(&held[i])), held)
}

fn tcp(node_port: u16) -> FrontendKey {
    FrontendKey {
        protocol: Protocol::Tcp,
        node_port,
    }
}

fn service(name: &str, node_port: u16, endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{addresses: [\"{a}\"]}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{type: NodePort, ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

fn file(sync: &mut Sync, origin: &str, text: &str) {
    let objects = manifests::parse(origin, text).expect("manifest");
    sync.on_source(SourceEvent::Objects {
        origin: origin.into(),
        objects,
    });
}

fn owner(sync: &Sync, key: FrontendKey) -> Option<String> {
    sync.dataplane
        .programmed(&key)
        .map(|fe| fe.service.name.clone())
}

#[test]
fn conflicts_go_by_name_at_start_and_a_released_port_to_the_first_waiting_by_name() {
    let ([port], _held) = held_ports();
    let mut s = sync();
    // Files in the opposite of name order: "c" is read first.
    file(&mut s, "1.yaml", &service("c", port, &["198.18.0.3"]));
    file(&mut s, "2.yaml", &service("b", port, &["198.18.0.2"]));
    file(&mut s, "3.yaml", &service("a", port, &["198.18.0.1"]));
    assert_eq!(
        owner(&s, tcp(port)),
        None,
        "nothing programmed before Synced"
    );
    s.on_source(SourceEvent::Synced);
    assert_eq!(owner(&s, tcp(port)).as_deref(), Some("a"));
    assert_eq!(s.claims.waiting().len(), 2);

    s.on_source(SourceEvent::Removed {
        origin: "3.yaml".into(),
    });
    assert_eq!(owner(&s, tcp(port)).as_deref(), Some("b"));
    let waiting: Vec<String> = s.claims.waiting().into_iter().map(|k| k.name).collect();
    assert_eq!(waiting, ["c"]);
    assert_eq!(s.claims.services(), 1);
    s.dataplane.shutdown(Duration::ZERO);
}

#[test]
fn endpoint_changes_are_applied_and_counted_and_an_unchanged_file_is_no_work() {
    let ([port, moved], _held) = held_ports();
    let mut s = sync();
    let labels = ServiceLabels {
        service: "shop/web".into(),
    };
    let changes = |s: &Sync| s.metrics.endpoint_changes.get_or_create(&labels).get();
    file(&mut s, "web.yaml", &service("web", port, &["198.18.0.1"]));
    s.on_source(SourceEvent::Synced);
    assert_eq!(changes(&s), 0);

    let two = service("web", port, &["198.18.0.1", "198.18.0.2"]);
    file(&mut s, "web.yaml", &two);
    assert_eq!(changes(&s), 1);
    let fe = s.dataplane.programmed(&tcp(port)).expect("programmed");
    assert_eq!(fe.v4.len(), 2);

    file(&mut s, "web.yaml", &two);
    assert_eq!(changes(&s), 1, "an identical file changes nothing");

    // A new nodePort: the old one is released, no endpoint change counted.
    file(&mut s, "web.yaml", &service("web", moved, &["198.18.0.1"]));
    assert!(s.dataplane.programmed(&tcp(port)).is_none());
    assert_eq!(owner(&s, tcp(moved)).as_deref(), Some("web"));
    assert_eq!(s.claims.held(&fe_service()), [tcp(moved)]);
    assert_eq!(changes(&s), 1);

    s.on_source(SourceEvent::Removed {
        origin: "web.yaml".into(),
    });
    assert!(s.dataplane.programmed(&tcp(moved)).is_none());
    assert_eq!(s.claims.services(), 0);
    s.dataplane.shutdown(Duration::ZERO);
}

fn fe_service() -> ServiceKey {
    ServiceKey::new(Some("shop"), "web")
}
