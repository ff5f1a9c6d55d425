//! The conntrack dump (/conntrack and `nodeportd conntrack`) lists exactly the open flows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nodeportd_e2e::*;

#[test]
fn conntrack_dump_matches_open_flows() {
    let t1 = TcpBackend::local("t1");
    let t2 = TcpBackend::local("t2");
    let u = UdpBackend::local("u");
    let np_tcp = node_port();
    let np_udp = node_port();
    let m = Manifests::new();
    m.write(
        "ct.yaml",
        &docs(&[
            Service::new("ct")
                .tcp("web", np_tcp)
                .udp("dns", np_udp)
                .yaml(),
            named_slices("ct-web", "ct", "web", "TCP", &[t1.addr(), t2.addr()]),
            slice(
                "ct-dns",
                "ct",
                "dns",
                "UDP",
                u.addr().port(),
                &[Ep::ready(u.addr().ip())],
            ),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);
    let backend_addr: BTreeMap<&str, String> =
        [("t1", t1.addr().to_string()), ("t2", t2.addr().to_string())].into();

    let mut conns: Vec<Conn> = (0..3)
        .map(|i| Conn::open(lo(np_tcp)).unwrap_or_else(|e| panic!("conn {i}: {e}")))
        .collect();
    for c in &mut conns {
        assert_eq!(c.echo(b"some payload\n").unwrap(), b"some payload\n");
    }
    let udp = udp_client(lo(np_udp), Duration::from_secs(3));
    assert_eq!(udp_ask(&udp, "q").unwrap(), "u:q");
    let udp_port = udp.local_addr().unwrap().port();

    let ct = d.conntrack();
    let all = ct.as_array().unwrap();
    assert_eq!(all.len(), 4, "expected 3 TCP + 1 UDP flows: {ct:#}");

    let tcp = rows(&ct, "tcp");
    let got: BTreeSet<String> = tcp
        .iter()
        .map(|r| r["client"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = conns.iter().map(|c| c.local_addr().to_string()).collect();
    assert_eq!(got, want, "TCP client ports in conntrack");
    for c in &conns {
        let r = tcp
            .iter()
            .find(|r| r["client"] == c.local_addr().to_string())
            .unwrap();
        assert_eq!(r["endpoint"], backend_addr[c.backend.as_str()], "{r:#}");
        assert_eq!(r["service"], format!("{NS}/ct"));
        assert_eq!(r["port"], "web");
        assert_eq!(r["node"], lo(np_tcp).to_string());
        assert_eq!(r["state"], "ESTABLISHED");
        // "hello\n" + "some payload\n" in, "tN\n" + the echo out.
        assert_eq!(r["orig"]["bytes"], 6 + 13, "{r:#}");
        assert_eq!(r["reply"]["bytes"], 3 + 13, "{r:#}");
        assert!(r["orig"]["packets"].as_u64().unwrap() > 0, "{r:#}");
        assert!(r["reply"]["packets"].as_u64().unwrap() > 0, "{r:#}");
    }
    let u_rows = rows(&ct, "udp");
    assert_eq!(u_rows.len(), 1);
    let r = &u_rows[0];
    assert_eq!(r["client"], format!("127.0.0.1:{udp_port}"));
    assert_eq!(r["endpoint"], u.addr().to_string());
    assert_eq!(r["service"], format!("{NS}/ct"));
    assert_eq!(r["port"], "dns");
    assert_eq!(r["state"], "REPLIED");
    assert_eq!(r["orig"]["bytes"], 1);
    assert_eq!(r["orig"]["packets"], 1);
    assert_eq!(r["reply"]["bytes"], 3);
    assert_eq!(r["reply"]["packets"], 1);

    // The CLI shows the same flows, one line each.
    let out = d.conntrack_cli(&[]);
    assert!(out.status.success(), "nodeportd conntrack failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for c in &conns {
        let port = c.local_addr().port();
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("sport={port} ")))
            .unwrap_or_else(|| panic!("no line for client port {port}:\n{stdout}"));
        assert!(line.starts_with("tcp"), "{line}");
        assert!(
            line.contains(&format!("endpoint={}", backend_addr[c.backend.as_str()])),
            "{line}"
        );
        assert!(line.contains(&format!("service={NS}/ct:web")), "{line}");
        assert!(line.contains(&format!("dport={np_tcp}")), "{line}");
    }
    let line = lines
        .iter()
        .find(|l| l.contains(&format!("sport={udp_port} ")))
        .expect("UDP line");
    assert!(
        line.starts_with("udp") && line.contains("REPLIED"),
        "{line}"
    );
    assert!(stderr.contains("4 flow entries"), "{stderr}");
    let json = d.conntrack_cli(&["--json"]);
    let parsed: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("--json prints JSON");
    assert_eq!(parsed.as_array().unwrap().len(), 4);

    // Closed TCP flows leave the table.
    drop(conns);
    wait_for(SETTLE, "closed TCP flows to leave conntrack", || {
        rows(&d.conntrack(), "tcp").is_empty()
    });
    assert_eq!(rows(&d.conntrack(), "udp").len(), 1);
}

#[test]
fn udp_flows_expire_after_udp_timeout() {
    let u = UdpBackend::local("u");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "dns.yaml",
        &docs(&[
            Service::new("dns").udp("dns", np).yaml(),
            slices("dns", "dns", "UDP", &[u.addr()]),
        ]),
    );
    // Until the endpoint answers the short timeout applies; after, the stream one.
    let d = Daemon::start(
        m.path(),
        &[
            "--nodeport-addresses",
            "127.0.0.0/8",
            "--udp-timeout",
            "1s",
            "--udp-stream-timeout",
            "1s",
        ],
    );
    let c = udp_client(lo(np), Duration::from_secs(3));
    assert_eq!(udp_ask(&c, "a").unwrap(), "u:a");
    assert_eq!(rows(&d.conntrack(), "udp").len(), 1);
    wait_for(
        Duration::from_secs(5),
        "the idle UDP flow to expire",
        || rows(&d.conntrack(), "udp").is_empty(),
    );
    // A new datagram starts a new flow.
    assert_eq!(udp_ask(&c, "b").unwrap(), "u:b");
    assert_eq!(rows(&d.conntrack(), "udp").len(), 1);
    let series = format!("nodeportd_flows_total{{service=\"{NS}/dns\"");
    assert_eq!(d.metric(&series), 2.0);
}
