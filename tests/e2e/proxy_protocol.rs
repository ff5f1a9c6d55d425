//! `nodeportd.dev/proxy-protocol: v2`: TCP connections to the Service's endpoints start with
//! a PROXY protocol v2 header naming the real client address and port and the node address
//! and nodePort it reached; the relay then carries the client's bytes unchanged. Services
//! without the annotation send no header; a wrong value rejects the Service, named.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use nodeportd_e2e::*;

#[test]
fn annotated_services_send_the_client_address_first_and_others_do_not() {
    let aware = TcpBackend::proxy_v2("pp");
    let (np, plain, bad) = (node_port(), node_port(), node_port());
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("pp")
                .tcp("http", np)
                .annotate("nodeportd.dev/proxy-protocol", "v2")
                .yaml(),
            slices("pp", "http", "TCP", &[aware.addr()]),
            // The same PROXY-aware endpoint behind a Service without the annotation.
            Service::new("plain").tcp("http", plain).yaml(),
            slices("plain", "http", "TCP", &[aware.addr()]),
            Service::new("bad")
                .tcp("http", bad)
                .annotate("nodeportd.dev/proxy-protocol", "v1")
                .yaml(),
            slices("bad", "http", "TCP", &[aware.addr()]),
        ]),
    );
    let d = Daemon::start(m.path(), &["--workers", "2"]);
    for source in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 7)] {
        let mut c = Conn::open_from(Some(IpAddr::V4(source)), lo(np))
            .unwrap_or_else(|e| panic!("from {source}: {e}\n{}", d.log()));
        let want = format!("pp client={} node={}", c.local_addr(), lo(np));
        assert_eq!(
            c.backend, want,
            "the header names the client and the nodePort"
        );
        assert_eq!(
            c.echo(b"after the header\n").expect("echo"),
            b"after the header\n",
            "the client's bytes follow the header unchanged"
        );
    }
    // Without the annotation the endpoint reads the client's own first bytes (at least the
    // 16 a header would take) where it looks for the header.
    let mut s = connect(None, lo(plain)).expect("plain Service");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.0 no header here\n")
        .expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("answer");
    assert!(
        line.starts_with("pp header-error=no PROXY v2 signature"),
        "no header without the annotation: {line}"
    );
    wait_for(
        Duration::from_secs(10),
        "the bad annotation reported",
        || {
            d.log()
                .contains("annotation nodeportd.dev/proxy-protocol: \"v1\" is not supported")
        },
    );
    assert!(refused(&who(lo(bad))), "a rejected Service is not served");
}
