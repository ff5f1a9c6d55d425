//! sessionAffinity ClientIP: a client's new flows stick to one endpoint while it keeps coming
//! back within the timeout, and are balanced afresh once the timeout has passed.

use std::net::IpAddr;
use std::time::Duration;

use nodeportd_e2e::*;

#[test]
fn client_ip_affinity_holds_then_expires() {
    let backends: Vec<TcpBackend> = ["a", "b", "c"]
        .iter()
        .map(|id| TcpBackend::local(id))
        .collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "sticky.yaml",
        &docs(&[
            Service::new("sticky").tcp("http", np).affinity(2).yaml(),
            slices("sticky", "http", "TCP", &addrs),
        ]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);

    // 20 connections in a row from one client: one backend.
    let first = who(lo(np)).expect("first connection");
    for i in 1..20 {
        let id = who(lo(np)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(id, first, "connection {i} left the affine backend");
    }

    // Within the timeout (each flow refreshes it) the client keeps its backend.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        who(lo(np)).unwrap(),
        first,
        "affinity lost before its 2 s timeout"
    );

    // Several clients (loopback sources), each pinned to whatever it got.
    let clients: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let mut pinned: Vec<String> = clients
        .iter()
        .map(|c| who_from(*c, lo(np)).unwrap())
        .collect();
    for (c, p) in clients.iter().zip(&pinned) {
        for _ in 0..5 {
            assert_eq!(
                &who_from(*c, lo(np)).unwrap(),
                p,
                "client {c} left its backend"
            );
        }
    }

    // Past the timeout the choice is random again: with 3 backends and 4 clients, some client
    // lands elsewhere within a few rounds (all staying put 6 rounds running: (1/3)^24).
    let mut moved = false;
    for _round in 0..6 {
        std::thread::sleep(Duration::from_millis(2300));
        for (c, p) in clients.iter().zip(pinned.iter_mut()) {
            let now = who_from(*c, lo(np)).unwrap();
            // Whatever it got now is pinned again at once.
            assert_eq!(
                who_from(*c, lo(np)).unwrap(),
                now,
                "client {c} not pinned after expiry"
            );
            if now != *p {
                moved = true;
                *p = now;
            }
        }
        if moved {
            break;
        }
    }
    assert!(
        moved,
        "no client ever moved to another backend after the affinity timeout"
    );
}
