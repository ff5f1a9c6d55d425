//! UDP through a nodePort: one flow per client address, replies come back from the nodePort.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nodeportd_e2e::*;

#[test]
fn udp_many_clients_in_parallel() {
    let u1 = UdpBackend::local("u1");
    let u2 = UdpBackend::local("u2");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "dns.yaml",
        &docs(&[
            Service::new("dns").udp("dns", np).yaml(),
            slices("dns", "dns", "UDP", &[u1.addr(), u2.addr()]),
        ]),
    );
    let d = Daemon::start(m.path(), &LO_ONLY);

    const CLIENTS: usize = 8;
    const DATAGRAMS: usize = 20;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let s = udp_client(lo(np), Duration::from_secs(3));
                let me = s.local_addr().unwrap();
                let mut ids = BTreeSet::new();
                for j in 0..DATAGRAMS {
                    let payload = format!("client{c}-msg{j}");
                    let reply = udp_ask(&s, &payload)
                        .unwrap_or_else(|e| panic!("client {c} datagram {j}: {e}"));
                    let (id, echoed) = reply
                        .split_once(':')
                        .unwrap_or_else(|| panic!("bad reply {reply:?}"));
                    assert_eq!(echoed, payload, "client {c} got someone else's reply");
                    ids.insert(id.to_string());
                }
                (me, ids)
            })
        })
        .collect();
    let mut per_client = BTreeMap::new();
    for t in threads {
        let (me, ids) = t.join().expect("client thread");
        assert_eq!(
            ids.len(),
            1,
            "client {me}'s datagrams went to several endpoints: {ids:?}"
        );
        per_client.insert(me, ids.into_iter().next().unwrap());
    }
    assert_eq!(u1.received() + u2.received(), CLIENTS * DATAGRAMS);
    // One upstream socket per client flow.
    let upstreams = u1.peers().len() + u2.peers().len();
    assert_eq!(
        upstreams,
        CLIENTS,
        "upstream sources: {:?} {:?}",
        u1.peers(),
        u2.peers()
    );

    let ct = d.conntrack();
    let udp = rows(&ct, "udp");
    assert_eq!(udp.len(), CLIENTS, "{ct:#}");
    for r in &udp {
        let client: std::net::SocketAddr = r["client"].as_str().unwrap().parse().unwrap();
        let id = &per_client[&client];
        let endpoint = if id == "u1" { u1.addr() } else { u2.addr() };
        assert_eq!(r["endpoint"], endpoint.to_string(), "{r:#}");
        assert_eq!(r["node"], lo(np).to_string());
        assert_eq!(r["state"], "REPLIED");
        assert_eq!(r["orig"]["packets"], DATAGRAMS);
        assert_eq!(r["reply"]["packets"], DATAGRAMS);
    }
    let series =
        format!("nodeportd_flows_total{{service=\"{NS}/dns\",port=\"dns\",protocol=\"udp\"");
    assert_eq!(d.metric(&series), CLIENTS as f64);
}

/// As kube-proxy clears stale UDP conntrack entries: when a flow's endpoint stops serving, the
/// flow is dropped and the client's next datagram (same source port) goes to a serving one.
#[test]
fn udp_flow_moves_when_its_endpoint_goes_away() {
    let u1 = UdpBackend::local("u1");
    let u2 = UdpBackend::local("u2");
    let np = node_port();
    let m = Manifests::new();
    m.write("svc.yaml", &Service::new("dns").udp("dns", np).yaml());
    m.write("slice.yaml", &slices("dns", "dns", "UDP", &[u1.addr()]));
    let d = Daemon::start(m.path(), &LO_ONLY);
    let c = udp_client(lo(np), Duration::from_secs(3));
    assert_eq!(udp_ask(&c, "1").unwrap(), "u1:1");

    m.write("slice.yaml", &slices("dns", "dns", "UDP", &[u2.addr()]));
    wait_for(SETTLE, "the stale UDP flow to be cleared", || {
        rows(&d.conntrack(), "udp").is_empty()
    });
    assert_eq!(
        udp_ask(&c, "2").unwrap(),
        "u2:2",
        "the client's flow still went to the old endpoint"
    );
    let r = &rows(&d.conntrack(), "udp")[0];
    assert_eq!(r["endpoint"], u2.addr().to_string());
    assert_eq!(u1.received(), 1);
}
