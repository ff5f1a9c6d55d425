//! Clients from another network namespace reach nodePorts on the node address the daemon was
//! told to serve (--nodeport-addresses), and only there.

use std::net::{IpAddr, SocketAddr};

use nodeportd_e2e::*;

#[test]
fn client_in_another_namespace_reaches_the_node_address() {
    if !is_root() {
        eprintln!("SKIP: network namespaces need root");
        return;
    }
    let ns = Netns::new("npe2e").expect("create network namespace");
    let inside = ns.exec(&["ip", "-4", "-o", "addr", "show"]);
    assert!(
        String::from_utf8_lossy(&inside.stdout).contains(&format!("inet {}/30", ns.ns_ip())),
        "namespace address missing: {inside:?}"
    );
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = one_tcp_service("far", np, &b);
    let only = format!("{}/32", ns.root_ip());
    let d = Daemon::start(m.path(), &["--nodeport-addresses", &only]);

    let node = SocketAddr::new(IpAddr::V4(ns.root_ip()), np);
    let mut conns: Vec<Conn> = (0..3)
        .map(|_| {
            ns.run(move || Conn::open(node))
                .expect("connect from the namespace")
        })
        .collect();
    for c in &mut conns {
        assert_eq!(c.backend, "b");
        assert_eq!(c.echo(b"from afar\n").unwrap(), b"from afar\n");
        assert_eq!(c.local_addr().ip(), IpAddr::V4(ns.ns_ip()));
    }
    let ct = d.conntrack();
    let tcp = rows(&ct, "tcp");
    assert_eq!(tcp.len(), 3, "{ct:#}");
    for r in &tcp {
        let client: SocketAddr = r["client"].as_str().unwrap().parse().unwrap();
        assert_eq!(client.ip(), IpAddr::V4(ns.ns_ip()), "{r:#}");
        assert_eq!(r["node"], node.to_string(), "{r:#}");
    }
    // Loopback is not in --nodeport-addresses: nothing listens there.
    assert!(
        refused(&who(lo(np))),
        "the nodePort was served on 127.0.0.1"
    );
    drop(conns);
}
