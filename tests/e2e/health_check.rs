//! healthCheckNodePort of LoadBalancer Services with externalTrafficPolicy Local: 200 with the
//! number of this node's ready endpoints when there is one, 503 when there is none.

use nodeportd_e2e::*;

#[test]
fn health_check_node_port_reports_local_endpoints() {
    let local = TcpBackend::local("local");
    let remote = TcpBackend::local("remote");
    let (np, hc) = (node_port(), node_port());
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &Service::new("lb")
            .load_balancer()
            .local()
            .health_check(hc)
            .tcp("http", np)
            .yaml(),
    );
    let remote_slice = slice(
        "lb-remote",
        "lb",
        "http",
        "TCP",
        remote.addr().port(),
        &[Ep::ready(remote.addr().ip()).on("node-b")],
    );
    m.write("slices.yaml", &remote_slice);
    let _d = Daemon::start(m.path(), &LO_ONLY);

    let mut last = None;
    wait_for(SETTLE, "the health check to answer 503", || {
        last = http_get_full(lo(hc), "/healthz").ok();
        matches!(&last, Some((503, _, _)))
    });
    let (_, headers, body) = last.take().unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(json["localEndpoints"], 0, "{json}");
    assert_eq!(json["service"]["namespace"], NS);
    assert_eq!(json["service"]["name"], "lb");
    assert!(
        headers.contains("x-load-balancing-endpoint-weight: 0"),
        "{headers}"
    );

    let local_slice = slice(
        "lb-local",
        "lb",
        "http",
        "TCP",
        local.addr().port(),
        &[Ep::ready(local.addr().ip()).on(NODE)],
    );
    m.write("slices.yaml", &docs(&[remote_slice, local_slice]));
    wait_for(SETTLE, "the health check to answer 200", || {
        last = http_get_full(lo(hc), "/any/path").ok();
        matches!(&last, Some((200, _, _)))
    });
    let (_, headers, body) = last.take().unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 1, "{json}");
    assert!(
        headers.contains("x-load-balancing-endpoint-weight: 1"),
        "{headers}"
    );
    assert_eq!(who(lo(np)).unwrap(), "local");

    m.remove("svc.yaml");
    wait_for(
        SETTLE,
        "the health check port to close with its Service",
        || refused(&http_get(lo(hc), "/healthz")),
    );
}

#[test]
fn cluster_policy_services_get_no_health_check_server() {
    let b = TcpBackend::local("b");
    let (np, hc) = (node_port(), node_port());
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("lbc")
                .load_balancer()
                .health_check(hc)
                .tcp("http", np)
                .yaml(),
            slices("lbc", "http", "TCP", &[b.addr()]),
        ]),
    );
    let _d = Daemon::start(m.path(), &LO_ONLY);
    assert_eq!(who(lo(np)).unwrap(), "b");
    assert!(
        refused(&http_get(lo(hc), "/healthz")),
        "a Cluster-policy Service got a health check server"
    );
}
