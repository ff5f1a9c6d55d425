//! nodePorts another process holds: nodeportd reports the bind error, keeps trying (every 5 s)
//! and serves once the port is free; a port it holds stays its own.

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use nodeportd_e2e::*;

/// The sync loop retries Services whose ports could not be bound every 5 s.
const RETRY: Duration = Duration::from_secs(12);

#[test]
fn busy_port_of_a_new_service_is_served_once_free() {
    let b = TcpBackend::local("b");
    let np = node_port();
    let squatter = TcpListener::bind(lo(np)).expect("take the port first");
    let m = one_tcp_service("late", np, &b);
    let d = Daemon::start(m.path(), &LO_ONLY);
    wait_for(SETTLE, "the bind error to be logged", || {
        let log = d.log();
        log.contains("Service e2e/late") && log.contains("Address already in use")
    });
    assert!(d.metric("nodeportd_config_errors_total") >= 1.0);
    drop(squatter);
    wait_for(RETRY, "the Service to serve once its port is free", || {
        who(lo(np)).is_ok_and(|id| id == "b")
    });
}

/// A UDP nodePort without endpoints is closed (so the kernel answers port unreachable); if
/// another socket takes it meanwhile, the bind fails when endpoints come back. nodeportd logs
/// that, but its retry compares the wanted frontend with the one it recorded as programmed,
/// finds them equal, skips the bind and logs "Service now fully programmed": the port is
/// never served again until the Service or its endpoints change.
#[test]
fn busy_port_of_an_existing_service_is_served_once_free() {
    let np = node_port();
    let m = Manifests::new();
    m.write("svc.yaml", &Service::new("dns").udp("dns", np).yaml());
    let d = Daemon::start(m.path(), &LO_ONLY);
    let squatter =
        UdpSocket::bind(lo(np)).expect("the UDP nodePort of a Service without endpoints is free");
    let u = UdpBackend::local("u");
    m.write("slice.yaml", &slices("dns", "dns", "UDP", &[u.addr()]));
    wait_for(SETTLE, "the bind error to be logged", || {
        d.log().contains("Address already in use")
    });
    drop(squatter);
    wait_for(RETRY, "the Service to serve once its port is free", || {
        let c = udp_client(lo(np), Duration::from_millis(200));
        udp_ask(&c, "x").is_ok_and(|r| r == "u:x")
    });
}

/// While a Service has no endpoint its TCP nodePort is held (bound, not listening) so that the
/// kernel refuses connections and the port stays reserved. The holding socket has
/// SO_REUSEADDR, so another process binding with SO_REUSEADDR (Rust std, Go, most servers) can
/// listen on the nodePort meanwhile, and nodeportd cannot listen once endpoints come back.
#[test]
fn held_node_port_stays_reserved() {
    let np = node_port();
    let m = Manifests::new();
    m.write("svc.yaml", &Service::new("empty").tcp("http", np).yaml());
    let d = Daemon::start(m.path(), &LO_ONLY);
    assert!(refused(&who(lo(np))));
    let squatter = TcpListener::bind(lo(np));
    assert!(
        squatter.is_err(),
        "another process could listen on the held nodePort {np}"
    );
    let _ = d;
}
