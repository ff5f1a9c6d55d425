//! Endpoint conditions: with no ready endpoint, serving+terminating ones still take flows;
//! endpoints that are not serving never do.

use nodeportd_e2e::*;

#[test]
fn terminating_but_serving_endpoints_still_serve() {
    let term = TcpBackend::local("terminating");
    let dead = TcpBackend::local("not-serving");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("drain").tcp("http", np).yaml(),
            slice(
                "drain-1",
                "drain",
                "http",
                "TCP",
                term.addr().port(),
                &[Ep::with(term.addr().ip(), false, true, true)],
            ),
            slice(
                "drain-2",
                "drain",
                "http",
                "TCP",
                dead.addr().port(),
                &[Ep::with(dead.addr().ip(), false, false, true)],
            ),
        ]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);
    for i in 0..20 {
        assert_eq!(
            who(lo(np)).unwrap_or_else(|e| panic!("connection {i}: {e}")),
            "terminating"
        );
    }
    assert_eq!(dead.accepted(), 0, "a not-serving endpoint got traffic");
}

#[test]
fn endpoints_neither_ready_nor_serving_are_not_used() {
    let dead = TcpBackend::local("not-serving");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("down").tcp("http", np).yaml(),
            slice(
                "down-1",
                "down",
                "http",
                "TCP",
                dead.addr().port(),
                &[Ep::with(dead.addr().ip(), false, false, true)],
            ),
        ]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);
    for i in 0..5 {
        let r = who(lo(np));
        assert!(refused(&r), "connection {i}: {:?}", r.map(|_| ()));
    }
    assert_eq!(dead.accepted(), 0);
}
