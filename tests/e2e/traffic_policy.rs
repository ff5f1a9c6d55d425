//! externalTrafficPolicy Local: only endpoints on this node (--node-name) take flows; none
//! there means the nodePort refuses, even when other nodes have ready endpoints.

use nodeportd_e2e::*;

#[test]
fn local_policy_uses_only_this_nodes_endpoints() {
    let local = TcpBackend::local("local");
    let remote = TcpBackend::local("remote");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &Service::new("loc").tcp("http", np).local().yaml(),
    );
    let remote_slice = slice(
        "loc-remote",
        "loc",
        "http",
        "TCP",
        remote.addr().port(),
        &[Ep::ready(remote.addr().ip()).on("node-b")],
    );
    m.write("slices.yaml", &remote_slice);
    let d = Daemon::start(
        m.path(),
        &[
            "--node-name",
            "node-a",
            "--nodeport-addresses",
            "127.0.0.0/8",
        ],
    );

    for i in 0..5 {
        let r = who(lo(np));
        assert!(
            refused(&r),
            "connection {i} with no endpoint on node-a: {:?}",
            r.map(|_| ())
        );
    }
    assert_eq!(remote.accepted(), 0);

    let local_slice = slice(
        "loc-local",
        "loc",
        "http",
        "TCP",
        local.addr().port(),
        &[Ep::ready(local.addr().ip()).on("node-a")],
    );
    m.write("slices.yaml", &docs(&[remote_slice, local_slice]));
    wait_for(SETTLE, "the local endpoint to serve", || {
        who(lo(np)).is_ok()
    });
    for i in 0..20 {
        assert_eq!(
            who(lo(np)).unwrap(),
            "local",
            "connection {i} left the node"
        );
    }
    assert_eq!(
        remote.accepted(),
        0,
        "an endpoint on another node got traffic"
    );
    let _ = d;
}

#[test]
fn cluster_policy_uses_endpoints_of_every_node() {
    let local = TcpBackend::local("local");
    let remote = TcpBackend::local("remote");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("clu").tcp("http", np).yaml(),
            slice(
                "clu-r",
                "clu",
                "http",
                "TCP",
                remote.addr().port(),
                &[Ep::ready(remote.addr().ip()).on("node-b")],
            ),
            slice(
                "clu-l",
                "clu",
                "http",
                "TCP",
                local.addr().port(),
                &[Ep::ready(local.addr().ip()).on("node-a")],
            ),
        ]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(who(lo(np)).unwrap());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "Cluster policy did not use both nodes' endpoints: {seen:?}"
    );
}
