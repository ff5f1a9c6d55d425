//! New flows spread over every ready endpoint; endpoints that are not ready get nothing.

use std::collections::BTreeMap;

use nodeportd_e2e::*;

#[test]
fn traffic_spreads_over_ready_endpoints_only() {
    let ready: Vec<TcpBackend> = ["a", "b", "c"]
        .iter()
        .map(|id| TcpBackend::local(id))
        .collect();
    let not_ready = TcpBackend::local("not-ready");
    let np = node_port();
    let m = Manifests::new();
    let mut parts = vec![Service::new("web").tcp("http", np).yaml()];
    for (i, b) in ready.iter().enumerate() {
        parts.push(slice(
            &format!("web-{i}"),
            "web",
            "http",
            "TCP",
            b.addr().port(),
            &[Ep::ready(b.addr().ip())],
        ));
    }
    // ready: false (serving, not terminating): never chosen while ready endpoints exist.
    parts.push(slice(
        "web-nr",
        "web",
        "http",
        "TCP",
        not_ready.addr().port(),
        &[Ep::with(not_ready.addr().ip(), false, true, false)],
    ));
    m.write("web.yaml", &docs(&parts));
    // More workers than cores: connections are handed between workers.
    let d = Daemon::start(
        m.path(),
        &["--nodeport-addresses", "127.0.0.0/8", "--workers", "3"],
    );

    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..60 {
        let id = who(lo(np)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        *hits.entry(id).or_default() += 1;
    }
    for b in &ready {
        assert!(
            hits.get(b.id()).copied().unwrap_or(0) > 0,
            "backend {} got no connection: {hits:?}",
            b.id()
        );
    }
    assert_eq!(hits.values().sum::<usize>(), 60);
    assert!(
        !hits.contains_key("not-ready"),
        "the not-ready endpoint answered: {hits:?}"
    );
    assert_eq!(
        not_ready.accepted(),
        0,
        "the not-ready endpoint was connected to"
    );
    let accepted: usize = ready.iter().map(|b| b.accepted()).sum();
    assert_eq!(
        accepted, 60,
        "backends accepted {accepted} connections for 60 clients"
    );

    let series = format!("nodeportd_flows_total{{service=\"{NS}/web\",port=\"http\",protocol=\"tcp\",node_port=\"{np}\"}}");
    wait_for(SETTLE, "flows_total to reach 60", || {
        d.metric(&series) == 60.0
    });
    assert_eq!(d.metric("nodeportd_flows_refused_total{"), 0.0);
}

#[test]
fn load_balancer_services_are_served_on_their_node_port() {
    let b = TcpBackend::local("lb");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "lb.yaml",
        &docs(&[
            Service::new("lb").load_balancer().tcp("http", np).yaml(),
            slices("lb", "http", "TCP", &[b.addr()]),
        ]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);
    assert_eq!(
        who(lo(np)).expect("connect through a LoadBalancer nodePort"),
        "lb"
    );
}
