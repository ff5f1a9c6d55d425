//! A dual-stack Service serves IPv4 clients from IPv4 endpoints and IPv6 clients from IPv6 ones;
//! a spread UDP nodePort steers IPv6 clients as it does IPv4 ones.

use std::time::Duration;

use nodeportd_e2e::*;

/// True (and says so) when `::1` cannot be bound here: the test is skipped.
fn skip_without_ipv6() -> bool {
    let skip = !has_ipv6();
    if skip {
        eprintln!("SKIP: ::1 cannot be bound on this machine");
    }
    skip
}

#[test]
fn dual_stack_service_serves_both_families() {
    if skip_without_ipv6() {
        return;
    }
    let v4 = TcpBackend::start("127.0.0.1:0", "v4");
    let v6 = TcpBackend::start("[::1]:0", "v6");
    let u4 = UdpBackend::start("127.0.0.1:0", "u4");
    let u6 = UdpBackend::start("[::1]:0", "u6");
    let np = node_port();
    let npu = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("dual")
                .tcp("http", np)
                .udp("dns", npu)
                .families(&["IPv4", "IPv6"])
                .yaml(),
            slice(
                "dual-v4",
                "dual",
                "http",
                "TCP",
                v4.addr().port(),
                &[Ep::ready(v4.addr().ip())],
            ),
            slice(
                "dual-v6",
                "dual",
                "http",
                "TCP",
                v6.addr().port(),
                &[Ep::ready(v6.addr().ip())],
            ),
            slice(
                "dual-u4",
                "dual",
                "dns",
                "UDP",
                u4.addr().port(),
                &[Ep::ready(u4.addr().ip())],
            ),
            slice(
                "dual-u6",
                "dual",
                "dns",
                "UDP",
                u6.addr().port(),
                &[Ep::ready(u6.addr().ip())],
            ),
        ]),
    );
    let d = Daemon::start(m.path(), &["--nodeport-addresses", "127.0.0.0/8,::1/128"]);
    let six = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, np));
    for _ in 0..10 {
        assert_eq!(who(lo(np)).unwrap(), "v4");
        assert_eq!(who(six).unwrap(), "v6");
    }
    let c4 = udp_client(lo(npu), Duration::from_secs(3));
    let c6 = udp_client(
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, npu)),
        Duration::from_secs(3),
    );
    assert_eq!(udp_ask(&c4, "a").unwrap(), "u4:a");
    assert_eq!(udp_ask(&c6, "b").unwrap(), "u6:b");
    let ct = d.conntrack();
    let udp = rows(&ct, "udp");
    assert!(
        udp.iter()
            .any(|r| r["node"] == format!("[::1]:{npu}") && r["endpoint"] == u6.addr().to_string()),
        "{ct:#}"
    );
}

#[test]
fn ipv4_only_service_is_not_served_on_ipv6() {
    if skip_without_ipv6() {
        return;
    }
    let v4 = TcpBackend::local("v4");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("four").tcp("http", np).yaml(),
            slices("four", "http", "TCP", &[v4.addr()]),
        ]),
    );
    let _d = Daemon::start(m.path(), &["--nodeport-addresses", "127.0.0.0/8,::1/128"]);
    assert_eq!(who(lo(np)).unwrap(), "v4");
    let r = who(std::net::SocketAddr::from((
        std::net::Ipv6Addr::LOCALHOST,
        np,
    )));
    assert!(
        refused(&r),
        "an IPv4-only Service answered on ::1: {:?}",
        r.map(|_| ())
    );
}

#[test]
fn a_spread_udp_node_port_steers_ipv6_clients_by_address() {
    if skip_without_ipv6() {
        return;
    }
    // IPv6 has one loopback address to send from, so this checks the IPv6 steering program
    // in the kernel: every port of ::1 on the worker its address hashes to. A program the
    // kernel could not run would leave the group to its own 4-tuple hash, which puts 16
    // ports on one worker once in 2^15.
    let u6 = UdpBackend::start("[::1]:0", "u6");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("six")
                .udp("dns", np)
                .families(&["IPv6"])
                .annotate("nodeportd.dev/spread-udp", "true")
                .yaml(),
            slice(
                "six-u6",
                "six",
                "dns",
                "UDP",
                u6.addr().port(),
                &[Ep::ready(u6.addr().ip())],
            ),
        ]),
    );
    let d = Daemon::start(
        m.path(),
        &["--nodeport-addresses", "::1/128", "--workers", "2"],
    );
    assert_eq!(d.metric("nodeportd_listeners"), 2.0, "a socket per worker");
    let target = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, np));
    let clients: Vec<_> = (0..16)
        .map(|_| udp_client(target, Duration::from_secs(3)))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let payload = format!("p{i}");
        assert_eq!(udp_ask(c, &payload).unwrap(), format!("u6:{payload}"));
    }
    let steered = nodeportd::dataplane::steer::member_of(std::net::Ipv6Addr::LOCALHOST.into(), 2);
    let workers: Vec<u64> = rows(&d.conntrack(), "udp")
        .iter()
        .filter(|r| r["node"] == format!("[::1]:{np}"))
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers.len(), 16, "a flow per client port: {workers:?}");
    assert!(
        workers.iter().all(|w| *w == u64::from(steered)),
        "every port of ::1 on worker {steered}: {workers:?}"
    );
}
