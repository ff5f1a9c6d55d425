//! --nodeport-addresses follows the node's addresses: an address added after start inside
//! the given CIDR gets the nodePorts without a restart, as kube-proxy follows node IPs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use nodeportd_e2e::*;

/// An address on lo for the test's lifetime (removed on drop, also on panic).
struct LoAddress(String);

impl LoAddress {
    fn add(ip: Ipv4Addr) -> Self {
        let cidr = format!("{ip}/32");
        let out = Command::new("ip")
            .args(["addr", "add", &cidr, "dev", "lo"])
            .output()
            .expect("ip addr add");
        assert!(out.status.success(), "ip addr add {cidr}: {out:?}");
        Self(cidr)
    }
}

impl Drop for LoAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &self.0, "dev", "lo"])
            .output();
    }
}

#[test]
fn an_address_added_after_start_gets_the_node_ports() {
    if !is_root() {
        eprintln!("SKIP: adding an address needs root");
        return;
    }
    // The last /30 of 198.18.0.0/15, unlikely to be one the namespace helper hands out.
    let ip = Ipv4Addr::new(198, 19, 255, 254);
    let shown = Command::new("ip")
        .args(["-4", "addr", "show"])
        .output()
        .expect("ip addr show");
    if String::from_utf8_lossy(&shown.stdout).contains(&ip.to_string()) {
        eprintln!("SKIP: {ip} is already on an interface");
        return;
    }
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = one_tcp_service("late", np, &b);
    let d = Daemon::start(m.path(), &["--nodeport-addresses", &format!("{ip}/32")]);
    let target = SocketAddr::new(IpAddr::V4(ip), np);
    let _address = LoAddress::add(ip);
    wait_for(
        Duration::from_secs(20),
        "the nodePort on the new address",
        || who(target).is_ok_and(|id| id == "b"),
    );
    assert!(
        d.log().contains("node addresses changed"),
        "the change is logged"
    );
}
