//! externalTrafficPolicy Local keeps the client's address visible to the endpoint (with
//! --preserve-source on), as kube-proxy does; Cluster shows the node's address. A client
//! namespace and a "pod" namespace hang off the node (the root namespace) by veth pairs; the
//! pod's backends report the peer address they see.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use nodeportd_e2e::*;

/// Removes what --preserve-source installs in the root namespace, even if the daemon was
/// killed before it could (its own SIGTERM path removes it too).
struct RulesGuard;

impl Drop for RulesGuard {
    fn drop(&mut self) {
        for fam in ["-4", "-6"] {
            let _ = Command::new("ip")
                .args([fam, "rule", "del", "fwmark", "0x4e50", "lookup", "4950"])
                .output();
            let _ = Command::new("ip")
                .args([fam, "route", "flush", "table", "4950"])
                .output();
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", "nodeportd_tproxy"])
            .output();
    }
}

/// A TCP server in the pod that answers each connection with the peer address it saw.
fn peer_reporting_tcp(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).expect("bind pod TCP backend");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for c in l.incoming().take(16) {
            let Ok(mut c) = c else { continue };
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let mut b = [0u8; 64];
            let _ = c.read(&mut b);
            let _ = c.write_all(format!("{peer}\n").as_bytes());
        }
    });
    addr
}

#[test]
fn local_policy_endpoints_see_the_client_address() {
    if !is_root() || Command::new("nft").arg("--version").output().is_err() {
        eprintln!("SKIP: needs root and nft");
        return;
    }
    let _guard = RulesGuard;
    let client = Netns::new("npsrc").expect("client namespace");
    let pod = Netns::new("nppod").expect("pod namespace");
    let via = pod.root_ip().to_string();
    let out = pod.exec(&["ip", "route", "add", "default", "via", &via]);
    assert!(out.status.success(), "pod default route: {out:?}");
    let pod_ip = IpAddr::V4(pod.ns_ip());
    let tcp = pod.run(move || peer_reporting_tcp(pod_ip));
    let udp = pod.run(move || UdpBackend::start((pod_ip, 0), "pod"));

    let (local_np, cluster_np) = (node_port(), node_port());
    let m = Manifests::new();
    let eps = [Ep::ready(pod_ip).on(NODE)];
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("loc")
                .tcp("http", local_np)
                .udp("dns", local_np)
                .local()
                .yaml(),
            Service::new("clu").tcp("http", cluster_np).yaml(),
            slice("loc-http", "loc", "http", "TCP", tcp.port(), &eps),
            slice("loc-dns", "loc", "dns", "UDP", udp.addr().port(), &eps),
            slice("clu-http", "clu", "http", "TCP", tcp.port(), &eps),
        ]),
    );
    let node_ip = client.root_ip();
    let only = format!("{node_ip}/32");
    let mut d = Daemon::start(
        m.path(),
        &[
            "--node-name",
            NODE,
            "--nodeport-addresses",
            &only,
            "--preserve-source",
            "on",
        ],
    );

    let client_ip = client.ns_ip().to_string();
    let ask_tcp = |np: u16| {
        let target = SocketAddr::new(IpAddr::V4(node_ip), np);
        client.run(move || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.write_all(b"who\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r.trim().to_string())
        })
    };
    assert_eq!(
        ask_tcp(local_np).expect("Local TCP"),
        client_ip,
        "Local: the endpoint must see the client"
    );
    assert_eq!(
        ask_tcp(cluster_np).expect("Cluster TCP"),
        pod.root_ip().to_string(),
        "Cluster: the endpoint sees the node"
    );

    // UDP through the Local Service: the pod's backend records its peers.
    let target = SocketAddr::new(IpAddr::V4(node_ip), local_np);
    let answer = client.run(move || -> std::io::Result<String> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.connect(target)?;
        s.send(b"ping")?;
        let mut b = [0u8; 256];
        let n = s.recv(&mut b)?;
        Ok(String::from_utf8_lossy(&b[..n]).to_string())
    });
    assert_eq!(answer.expect("UDP reply"), "pod:ping");
    assert!(
        udp.peers().keys().any(|p| p.ip().to_string() == client_ip),
        "UDP endpoint saw {:?}, not the client {client_ip}",
        udp.peers()
    );

    d.sigterm();
    assert!(
        d.wait_exit(Duration::from_secs(15)).is_some(),
        "daemon did not exit"
    );
    let rules = Command::new("ip").args(["rule"]).output().expect("ip rule");
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("lookup 4950"),
        "the daemon left its policy rule behind"
    );
}
