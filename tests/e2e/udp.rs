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
/// flow is retired and the client's next datagram (same source port) goes to a serving one.
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
    wait_for(SETTLE, "the stale UDP flow to be retired", || {
        rows(&d.conntrack(), "udp")
            .iter()
            .all(|r| r["state"] == "RETIRED")
    });
    assert_eq!(
        udp_ask(&c, "2").unwrap(),
        "u2:2",
        "the client's flow still went to the old endpoint"
    );
    let live: Vec<_> = (rows(&d.conntrack(), "udp").into_iter())
        .filter(|r| r["state"] != "RETIRED")
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["endpoint"], u2.addr().to_string());
    assert_eq!(u1.received(), 1);
    wait_for(SETTLE, "the retired flow to end after its grace", || {
        rows(&d.conntrack(), "udp").len() == 1
    });
}

/// A request in flight when its endpoint is removed is still answered: the retired flow
/// relays the old endpoint's late reply (kube-proxy's conntrack flush loses it), while the
/// client's next request already goes to the new endpoint.
#[test]
fn a_reply_in_flight_when_its_endpoint_is_removed_still_arrives() {
    let slow = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let u2 = UdpBackend::local("u2");
    let np = node_port();
    let m = Manifests::new();
    m.write("svc.yaml", &Service::new("dns").udp("dns", np).yaml());
    let old = slow.local_addr().unwrap();
    m.write("slice.yaml", &slices("dns", "dns", "UDP", &[old]));
    let d = Daemon::start(m.path(), &LO_ONLY);
    let c = udp_client(lo(np), Duration::from_secs(3));
    c.send(b"question").unwrap();
    let mut buf = [0u8; 64];
    let (n, via) = slow
        .recv_from(&mut buf)
        .expect("the request reached the old endpoint");
    assert_eq!(&buf[..n], b"question");

    // The endpoint leaves the slice before it answers.
    m.write("slice.yaml", &slices("dns", "dns", "UDP", &[u2.addr()]));
    wait_for(SETTLE, "the flow to be retired", || {
        rows(&d.conntrack(), "udp")
            .iter()
            .any(|r| r["state"] == "RETIRED")
    });
    slow.send_to(b"late answer", via).unwrap();
    let n = c.recv(&mut buf).expect("the late reply reached the client");
    assert_eq!(&buf[..n], b"late answer");
    assert_eq!(udp_ask(&c, "next").unwrap(), "u2:next");
}

/// UDP flows from `clients` client addresses 127.0.0.2.. (two source ports each) through
/// nodePort `np`; the /conntrack rows of flows through `np`.
fn flows_from_many_addresses(d: &Daemon, np: u16, clients: u8) -> Vec<serde_json::Value> {
    for c in 0..clients {
        for port in 0..2 {
            let source = std::net::IpAddr::from([127, 0, 0, 2 + c]);
            let s = udp_client_from(source, lo(np), Duration::from_secs(3));
            let payload = format!("c{c}p{port}");
            let reply = udp_ask(&s, &payload).unwrap_or_else(|e| panic!("client {c}: {e}"));
            assert!(reply.ends_with(&payload), "{reply}");
        }
    }
    let at = format!(":{np}");
    rows(&d.conntrack(), "udp")
        .into_iter()
        .filter(|r| r["node"].as_str().is_some_and(|n| n.ends_with(&at)))
        .collect()
}

#[test]
fn a_spread_udp_node_port_is_served_by_every_worker_each_client_on_one() {
    let u = UdpBackend::local("u");
    let (np, plain) = (node_port(), node_port());
    let m = Manifests::new();
    let services = |spread: bool| {
        let hot = Service::new("hot").udp("dns", np);
        let hot = if spread {
            hot.annotate("nodeportd.dev/spread-udp", "true")
        } else {
            hot
        };
        docs(&[
            hot.yaml(),
            slices("hot", "dns", "UDP", &[u.addr()]),
            Service::new("quiet").udp("dns", plain).yaml(),
            slices("quiet", "dns", "UDP", &[u.addr()]),
        ])
    };
    m.write("svc.yaml", &services(true));
    let mut args = LO_ONLY.to_vec();
    args.extend(["--workers", "2"]);
    let d = Daemon::start(m.path(), &args);
    // One socket per worker for the spread port, one for the quiet one.
    assert_eq!(d.metric("nodeportd_listeners"), 3.0);

    let rows = flows_from_many_addresses(&d, np, 16);
    assert_eq!(rows.len(), 32, "one flow per client port: {rows:?}");
    let mut workers_of: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for r in &rows {
        let client: std::net::SocketAddr = r["client"].as_str().unwrap().parse().unwrap();
        let worker = r["worker"].as_u64().unwrap();
        let steered = nodeportd::dataplane::steer::member_of(client.ip(), 2);
        assert_eq!(
            worker,
            u64::from(steered),
            "client {client} on the worker its address hashes to"
        );
        workers_of
            .entry(client.ip().to_string())
            .or_default()
            .insert(worker);
    }
    assert!(
        workers_of.values().all(|w| w.len() == 1),
        "a client stays on one worker: {workers_of:?}"
    );
    let used: BTreeSet<u64> = workers_of.values().flatten().copied().collect();
    assert_eq!(
        used.len(),
        2,
        "both workers serve the spread port: {workers_of:?}"
    );

    // The quiet port stays on one socket and one worker.
    let quiet: BTreeSet<u64> = flows_from_many_addresses(&d, plain, 8)
        .iter()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(quiet.len(), 1, "{quiet:?}");

    // The annotation goes: the port is one socket again, and still answers.
    m.write("svc.yaml", &services(false));
    wait_for(Duration::from_secs(10), "one socket per port", || {
        d.metric("nodeportd_listeners") == 2.0
    });
    let s = udp_client(lo(np), Duration::from_secs(3));
    assert!(udp_ask(&s, "after").expect("reply").ends_with("after"));
}
