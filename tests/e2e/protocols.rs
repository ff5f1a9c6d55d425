//! The same nodePort number on TCP and UDP: two listeners, two Services, no conflict.

use std::time::Duration;

use nodeportd_e2e::*;

#[test]
fn same_port_number_on_tcp_and_udp_serves_different_backends() {
    let t = TcpBackend::local("tcp-backend");
    let u = UdpBackend::local("udp-backend");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "tcp.yaml",
        &docs(&[
            Service::new("over-tcp").tcp("p", np).yaml(),
            slices("over-tcp", "p", "TCP", &[t.addr()]),
        ]),
    );
    m.write(
        "udp.yaml",
        &docs(&[
            Service::new("over-udp").udp("p", np).yaml(),
            slices("over-udp", "p", "UDP", &[u.addr()]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    assert_eq!(
        d.metric("nodeportd_config_errors_total"),
        0.0,
        "{}",
        d.log()
    );
    for i in 0..5 {
        assert_eq!(who(lo(np)).unwrap(), "tcp-backend");
        let c = udp_client(lo(np), Duration::from_secs(3));
        assert_eq!(
            udp_ask(&c, &format!("m{i}")).unwrap(),
            format!("udp-backend:m{i}")
        );
    }
    assert_eq!(d.metric("nodeportd_listeners"), 2.0);
    // Removing the UDP Service leaves the TCP one alone.
    m.remove("udp.yaml");
    wait_for(SETTLE, "the UDP port to be closed", || {
        let c = udp_client(lo(np), Duration::from_millis(500));
        refused(&udp_ask(&c, "gone?"))
    });
    assert_eq!(who(lo(np)).unwrap(), "tcp-backend");
}
