//! A Service without usable endpoints: TCP is refused (RST), UDP gets ICMP port unreachable;
//! endpoints appearing or vanishing flip that live.

use std::time::Duration;

use nodeportd_e2e::*;

#[test]
fn tcp_without_endpoints_is_refused_until_one_appears() {
    let np = node_port();
    let m = Manifests::new();
    m.write("svc.yaml", &Service::new("empty").tcp("http", np).yaml());
    m.write(
        "slice.yaml",
        &slice("empty-1", "empty", "http", "TCP", 8080, &[]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);

    for i in 0..5 {
        let r = who(lo(np));
        assert!(
            refused(&r),
            "connection {i} without endpoints: {:?}",
            r.map_err(|e| e.kind())
        );
    }
    let b = TcpBackend::local("b");
    m.write("slice.yaml", &slices("empty", "http", "TCP", &[b.addr()]));
    wait_for(
        SETTLE,
        "the Service to serve once it has an endpoint",
        || who(lo(np)).is_ok_and(|id| id == "b"),
    );

    m.write(
        "slice.yaml",
        &slice("empty-0", "empty", "http", "TCP", b.addr().port(), &[]),
    );
    wait_for(SETTLE, "connections to be refused again", || {
        refused(&who(lo(np)))
    });
    let _ = d;
}

/// Real behaviour: the UDP nodePort socket is closed while there is no endpoint, so the kernel
/// answers ICMP port unreachable and a connected client's recv fails with ECONNREFUSED
/// (not a timeout).
#[test]
fn udp_without_endpoints_gets_port_unreachable() {
    let np = node_port();
    let m = Manifests::new();
    m.write("svc.yaml", &Service::new("dns").udp("dns", np).yaml());
    m.write(
        "slice.yaml",
        &slice("dns-1", "dns", "dns", "UDP", 5353, &[]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);

    let c = udp_client(lo(np), Duration::from_secs(2));
    let r = udp_ask(&c, "anyone?");
    assert!(
        refused(&r),
        "UDP without endpoints: expected ECONNREFUSED, got {r:?}"
    );

    let u = UdpBackend::local("u");
    m.write("slice.yaml", &slices("dns", "dns", "UDP", &[u.addr()]));
    wait_for(SETTLE, "UDP to be answered once an endpoint exists", || {
        let c = udp_client(lo(np), Duration::from_millis(200));
        udp_ask(&c, "x").is_ok_and(|r| r == "u:x")
    });
}
