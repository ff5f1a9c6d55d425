//! Connecting to an endpoint that refuses is retried on another endpoint; when every attempt
//! fails the client is reset and the failure counted.

use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use nodeportd_e2e::*;

#[test]
fn connect_is_retried_on_another_endpoint() {
    let live = TcpBackend::local("live");
    let (_hold, dead) = dead_tcp_port(IpAddr::from([127, 0, 0, 1]));
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("retry").tcp("http", np).yaml(),
            slices("retry", "http", "TCP", &[live.addr(), dead]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    for i in 0..20 {
        assert_eq!(
            who(lo(np)).unwrap_or_else(|e| panic!("connection {i}: {e}")),
            "live"
        );
    }
    assert_eq!(live.accepted(), 20);
    let labels =
        format!("service=\"{NS}/retry\",port=\"http\",protocol=\"tcp\",node_port=\"{np}\"");
    assert_eq!(
        d.metric(&format!(
            "nodeportd_flows_refused_total{{{labels},reason=\"connect_failed\"}}"
        )),
        0.0
    );
    assert_eq!(
        d.metric(&format!("nodeportd_flows_total{{{labels}}}")),
        20.0
    );
}

#[test]
fn client_is_reset_when_no_endpoint_accepts() {
    let (_h1, dead1) = dead_tcp_port(IpAddr::from([127, 0, 0, 1]));
    let (_h2, dead2) = dead_tcp_port(IpAddr::from([127, 0, 0, 1]));
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("dead").tcp("http", np).yaml(),
            slices("dead", "http", "TCP", &[dead1, dead2]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    // The nodePort accepts (there are endpoints), then resets once every connect failed; on
    // loopback the reset may already be there when connect() returns.
    let r = connect(None, lo(np)).and_then(|mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 16];
        c.read(&mut buf)
    });
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
    let series = format!("nodeportd_flows_refused_total{{service=\"{NS}/dead\",port=\"http\",protocol=\"tcp\",node_port=\"{np}\",reason=\"connect_failed\"}}");
    wait_for(SETTLE, "connect_failed to be counted", || {
        d.metric(&series) == 1.0
    });
    assert!(rows(&d.conntrack(), "tcp").is_empty());
}
