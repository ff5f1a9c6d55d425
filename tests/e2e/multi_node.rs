//! Two nodes, one API server, clients on a third host: what kube-proxy's semantics look like
//! across a cluster, with real connections between network namespaces.
//!
//! Topology (every namespace made here, every address in 198.18.0.0/15):
//!
//! ```text
//!                    root namespace: etcd + kube-apiserver (the control plane), bound on
//!                    the root side of a link of its own (npapi), never forwarding
//!                     |  control link            |  control link
//!                     |  (198.18.x.2/30)         |  (198.18.y.2/30)
//!   pod a1 --+     node-a                      node-b      +-- pod b1
//!   pod a2 --+-- 198.19.0.11 --+          +-- 198.19.0.12 -+-- pod b2
//!  198.19.1.0/24               |  switch  |            198.19.2.0/24
//!                              +- (br0) --+
//!                                   |
//!                         client 198.19.0.100
//! ```
//!
//! - The client host, node-a and node-b share a LAN, 198.19.0.0/24: a bridge in an isolated
//!   switch namespace (`Lan`). The client reaches both node addresses there directly.
//! - Each node is a namespace of its own running its own nodeportd
//!   (`--hostname-override node-a|node-b`, `--nodeport-addresses` its LAN address /32,
//!   `--preserve-source on`, so its nftables rule and policy route are programmed in that
//!   namespace). Its metrics and health servers are on its control link, where the test reads
//!   them; it reaches the API server over that link by a host route (root delivers to its own
//!   address, so nothing is forwarded in the root namespace).
//! - Pods are real hosts behind their node: isolated namespaces joined to it by a veth pair
//!   on a /30 of the node's pod network, default route via the node, as a ptp CNI plugin
//!   wires them. Nodes forward (in their own namespaces) and route the other node's pod
//!   network via its LAN address, so a Cluster flow that lands on node-a reaches a pod of
//!   node-b and back; a Local flow's reply (addressed to the client) passes the pod's own
//!   node, where nodeportd's transparent socket takes it. Pods in the node namespaces would
//!   not show that: their replies never pass prerouting (see dataplane/transparent.rs).
//! - No namespace but the nodes has a link to the root namespace; the data network
//!   (198.19.0.0/16) exists only inside this test's namespaces.
//!
//! Every pod runs three backends, one per Service, answering with the pod's name: `web`
//! (Cluster, NodePort), `loc` (LoadBalancer, externalTrafficPolicy Local, the API server
//! allocates its healthCheckNodePort) and `pp` (Cluster, `nodeportd.dev/proxy-protocol: v2`,
//! endpoints a1 and b1 only, which parse the header). EndpointSlices name each endpoint's
//! node (`nodeName`).
//!
//! Asserted, with connections from the client host: through either node the Cluster Service
//! reaches every endpoint of both nodes, which see a node's address; the Local Service
//! reaches only the node's own endpoints, which see the client's address, and the health
//! check port answers 200 with the count of local endpoints on both nodes; once node-b's
//! endpoints leave the slice, node-b's health check answers 503 and its nodePort refuses (its
//! endpoints get nothing more) while node-a's answers 200 and keeps serving; through either
//! node the PROXY v2 header tells the endpoint the client's address and port and the node
//! address and nodePort it reached, while the endpoint's TCP peer is a node.
//!
//! Everything is torn down by Drop, also on a panic: daemons first, then the pods' backends
//! (inside their namespaces), then the namespaces (with the daemons' nftables rules and
//! routes in them), the API server last.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use nodeportd_e2e::*;

/// The pods' ports of the three Services (the pods are namespaces of their own).
const WEB_PORT: u16 = 8080;
const LOC_PORT: u16 = 8081;
const PP_PORT: u16 = 8082;
/// The client host's address on the LAN.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 100);
/// Longest one bounded run of client connections may take.
const ASK_FOR: Duration = Duration::from_secs(30);

/// What a pod runs: one backend per Service, each answering with the pod's name.
struct Apps {
    web: TcpBackend,
    loc: TcpBackend,
    pp: TcpBackend,
}

/// A pod: a namespace behind its node. Fields drop in order: its backends, inside the
/// namespace, before the namespace.
struct Pod {
    name: String,
    node: String,
    ip: Ipv4Addr,
    /// The node's address on the pod's link (its default gateway).
    gateway: Ipv4Addr,
    apps: Resident<Apps>,
    _ns: Netns,
}

/// A node host. Fields drop in order: the daemon, the pods, the node's namespace.
struct Node {
    name: String,
    lan_ip: Ipv4Addr,
    daemon: Option<Daemon>,
    pods: Vec<Pod>,
    host: Netns,
}

/// The whole cluster; fields drop in order (nodes first, the API server last).
struct Cluster {
    nodes: Vec<Node>,
    client: Netns,
    _lan: Lan,
    api: ApiServer,
    _api_link: Netns,
}

fn ok(r: std::io::Result<()>) {
    r.unwrap_or_else(|e| panic!("topology: {e}"));
}

/// Node `i` (1, 2): `node-a`/`node-b` on the LAN at 198.19.0.1i, pod network 198.19.i.0/24
/// with two pods (`a1`, `a2` / `b1`, `b2`), forwarding, and a host route to the API server
/// over its control link.
fn node(lan: &Lan, i: u8, api: Ipv4Addr) -> Node {
    let letter = (b'a' + i - 1) as char;
    let name = format!("node-{letter}");
    let host = Netns::new("npnode").expect("node namespace");
    let lan_ip = Ipv4Addr::new(198, 19, 0, 10 + i);
    ok(lan.attach(&host, "lan0", &format!("{lan_ip}/24")));
    ok(host.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    ok(host.exec_ok(&[
        "ip",
        "route",
        "add",
        &format!("{api}/32"),
        "via",
        &host.root_ip().to_string(),
    ]));
    let pods = (1..=2u8)
        .map(|j| {
            let gateway = Ipv4Addr::new(198, 19, i, 4 * j - 3);
            let ip = Ipv4Addr::new(198, 19, i, 4 * j - 2);
            let ns = Netns::isolated("nppod").expect("pod namespace");
            ok(host.link(
                &format!("pod{j}"),
                &format!("{gateway}/30"),
                &ns,
                "eth0",
                &format!("{ip}/30"),
            ));
            ok(ns.exec_ok(&["ip", "route", "add", "default", "via", &gateway.to_string()]));
            let pod = format!("{letter}{j}");
            let id = pod.clone();
            let apps = ns.resident(move || Apps {
                web: TcpBackend::start((ip, WEB_PORT), &id),
                loc: TcpBackend::start((ip, LOC_PORT), &id),
                pp: TcpBackend::proxy_v2_at((ip, PP_PORT), &id),
            });
            Pod {
                name: pod,
                node: name.clone(),
                ip,
                gateway,
                apps,
                _ns: ns,
            }
        })
        .collect();
    Node {
        name,
        lan_ip,
        daemon: None,
        pods,
        host,
    }
}

/// Builds the topology and the API server; no daemon runs yet.
fn cluster() -> Cluster {
    let api_link = Netns::new("npapi").expect("the API server's link");
    let api = ApiServer::start_on(api_link.root_ip());
    let lan = Lan::new("nplan").expect("switch");
    let client = Netns::isolated("npcli").expect("client namespace");
    ok(lan.attach(&client, "lan0", &format!("{CLIENT}/24")));
    let nodes: Vec<Node> = (1..=2).map(|i| node(&lan, i, api_link.root_ip())).collect();
    // Each node routes the other's pod network via the other's LAN address.
    for (i, n) in nodes.iter().enumerate() {
        let other = &nodes[1 - i];
        ok(n.host.exec_ok(&[
            "ip",
            "route",
            "add",
            &format!("198.19.{}.0/24", 2 - i),
            "via",
            &other.lan_ip.to_string(),
        ]));
    }
    Cluster {
        nodes,
        client,
        _lan: lan,
        api,
        _api_link: api_link,
    }
}

impl Cluster {
    fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods().find(|p| p.name == name).expect("pod")
    }

    fn log(&self, node: &Node) -> String {
        node.daemon.as_ref().map(|d| d.log()).unwrap_or_default()
    }

    /// An EndpointSlice of `svc` on `port` with the named pods, each on its node.
    fn slice(&self, name: &str, svc: &str, port: u16, pods: &[&str]) -> String {
        let eps: Vec<Ep> = pods
            .iter()
            .map(|p| {
                let pod = self.pod(p);
                Ep::ready(IpAddr::V4(pod.ip)).on(&pod.node)
            })
            .collect();
        slice(name, svc, "http", "TCP", port, &eps)
    }

    /// Fresh connections from the client host to `target`, one after another, until
    /// `enough` holds for the answers so far (bounded: `max` connections, [`ASK_FOR`]): the
    /// ids that answered, or the first failure with the answers before it.
    fn ask(
        &self,
        target: SocketAddr,
        max: usize,
        enough: impl Fn(&[String]) -> bool + Send + 'static,
    ) -> Result<Vec<String>, String> {
        self.client.run(move || {
            let until = Instant::now() + ASK_FOR;
            let mut got = Vec::new();
            while got.len() < max && Instant::now() < until && !enough(&got) {
                match who(target) {
                    Ok(id) => got.push(id),
                    Err(e) => return Err(format!("{target}: {e} after {got:?}")),
                }
            }
            Ok(got)
        })
    }

    /// One connection from the client host to `target`.
    fn connect(&self, target: SocketAddr) -> std::io::Result<String> {
        self.client.run(move || who(target))
    }

    /// The health check port of `node` from the client host: status, headers, JSON.
    fn health(&self, node: &Node, port: u16) -> Option<(u16, String, serde_json::Value)> {
        let addr = SocketAddr::new(IpAddr::V4(node.lan_ip), port);
        let (status, headers, body) = self
            .client
            .run(move || http_get_full(addr, "/healthz"))
            .ok()?;
        Some((status, headers, serde_json::from_str(&body).ok()?))
    }
}

fn ids(answers: &[String]) -> BTreeSet<String> {
    answers.iter().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn at(node: &Node, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(node.lan_ip), port)
}

#[test]
fn two_nodes_on_one_api_server_serve_cluster_local_health_checks_and_proxy_v2() {
    if !is_root() || Command::new("nft").arg("--version").output().is_err() {
        eprintln!(
            "SKIP: multi_node needs root (network namespaces) and nft (--preserve-source on)"
        );
        return;
    }
    let started = Instant::now();
    let mut c = cluster();
    let all = ["a1", "a2", "b1", "b2"];
    let (web_np, loc_np, pp_np) = (node_port(), node_port(), node_port());
    let api = &c.api;
    api.apply(
        Kind::Service,
        "web",
        &Service::new("web").tcp("http", web_np).yaml(),
    );
    api.apply(
        Kind::EndpointSlice,
        "web-1",
        &c.slice("web-1", "web", WEB_PORT, &all),
    );
    api.apply(
        Kind::Service,
        "loc",
        &Service::new("loc")
            .load_balancer()
            .local()
            .tcp("http", loc_np)
            .yaml(),
    );
    api.apply(
        Kind::EndpointSlice,
        "loc-1",
        &c.slice("loc-1", "loc", LOC_PORT, &all),
    );
    api.apply(
        Kind::Service,
        "pp",
        &Service::new("pp")
            .tcp("http", pp_np)
            .annotate("nodeportd.dev/proxy-protocol", "v2")
            .yaml(),
    );
    api.apply(
        Kind::EndpointSlice,
        "pp-1",
        &c.slice("pp-1", "pp", PP_PORT, &["a1", "b1"]),
    );
    // LoadBalancer + Local: the API server allocated the healthCheckNodePort.
    let (code, body) = api.get(&format!("/api/v1/namespaces/{NS}/services/loc"));
    assert_eq!(code, 200, "{body}");
    let svc: serde_json::Value = serde_json::from_str(&body).expect("Service JSON");
    let hc = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no healthCheckNodePort allocated: {body}"));

    let kubeconfig = api.kubeconfig(ADMIN_TOKEN);
    for n in &mut c.nodes {
        let only = format!("{}/32", n.lan_ip);
        n.daemon = Some(Daemon::start_kube_in(
            &n.host,
            &kubeconfig,
            &[
                "--hostname-override",
                &n.name,
                "--nodeport-addresses",
                &only,
                "--preserve-source",
                "on",
                "--workers",
                "2",
            ],
        ));
    }
    let set_up = started.elapsed();
    let client_ip = IpAddr::V4(CLIENT);

    // Cluster: through either node, every endpoint of both nodes; they see a node's address.
    for n in &c.nodes {
        let want = set(&all);
        let w = want.clone();
        let got = c
            .ask(at(n, web_np), 200, move |a| ids(a) == w)
            .unwrap_or_else(|e| panic!("Cluster via {}: {e}\n{}", n.name, c.log(n)));
        assert_eq!(ids(&got), want, "Cluster via {}: {got:?}", n.name);
    }
    for n in &c.nodes {
        let other = c
            .nodes
            .iter()
            .find(|o| o.name != n.name)
            .expect("two nodes");
        for p in &n.pods {
            // Its own node from the pod link, the other across the LAN.
            let want: BTreeSet<IpAddr> = [p.gateway, other.lan_ip].map(IpAddr::V4).into();
            let seen: BTreeSet<IpAddr> = p.apps.web.peers().into_keys().collect();
            assert_eq!(seen, want, "Cluster: pod {} saw these peers", p.name);
        }
    }

    // Local, endpoints on both nodes: each node serves its own only, which see the client;
    // both health checks answer 200 with their count.
    for n in &c.nodes {
        wait_for(SETTLE, &format!("{}'s health check port", n.name), || {
            c.health(n, hc).is_some()
        });
        let (status, headers, json) = c.health(n, hc).expect("health check");
        assert_eq!(status, 200, "{} health check: {json}", n.name);
        assert_eq!(json["localEndpoints"], 2, "{}: {json}", n.name);
        assert_eq!(json["service"]["name"], "loc", "{json}");
        assert!(
            headers.contains("x-load-balancing-endpoint-weight: 2"),
            "{headers}"
        );
        let local: BTreeSet<String> = n.pods.iter().map(|p| p.name.clone()).collect();
        let l = local.clone();
        let got = c
            .ask(at(n, loc_np), 200, move |a| a.len() >= 20 && ids(a) == l)
            .unwrap_or_else(|e| panic!("Local via {}: {e}\n{}", n.name, c.log(n)));
        assert_eq!(ids(&got), local, "Local via {}: {got:?}", n.name);
    }
    for p in c.pods() {
        let peers = p.apps.loc.peers();
        assert_eq!(
            peers.keys().copied().collect::<Vec<_>>(),
            [client_ip],
            "Local: pod {} must see only the client: {peers:?}",
            p.name
        );
    }

    // PROXY v2 (Cluster): the header names the client and the node address and nodePort it
    // reached; the endpoint's TCP peer is a node, the client's bytes follow unchanged.
    for n in &c.nodes {
        let node_addr = at(n, pp_np);
        let answers = c.client.run(move || {
            (0..6)
                .map(|_| {
                    let mut conn = Conn::open(node_addr)?;
                    let echo = conn.echo(b"after the header\n")?;
                    Ok::<_, std::io::Error>((conn.local_addr(), conn.backend.clone(), echo))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let answers =
            answers.unwrap_or_else(|e| panic!("PROXY v2 via {}: {e}\n{}", n.name, c.log(n)));
        for (local, line, echo) in answers {
            let (id, rest) = line.split_once(' ').unwrap_or((&line, ""));
            assert!(["a1", "b1"].contains(&id), "PROXY v2 answered by {line}");
            assert_eq!(
                rest,
                format!("client={local} node={node_addr}"),
                "PROXY v2 via {}",
                n.name
            );
            assert_eq!(echo, b"after the header\n");
        }
    }
    for p in ["a1", "b1"].map(|p| c.pod(p)) {
        let peers = p.apps.pp.peers();
        assert!(
            !peers.is_empty() && !peers.contains_key(&client_ip),
            "PROXY v2: pod {}'s TCP peers are nodes, not the client: {peers:?}",
            p.name
        );
    }

    // node-b's endpoints leave the Local Service: its health check answers 503 and its
    // nodePort refuses; node-a's stays 200 and keeps serving its own.
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let b_accepted: BTreeMap<String, usize> = b
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.apps.loc.accepted()))
        .collect();
    c.api.apply(
        Kind::EndpointSlice,
        "loc-1",
        &c.slice("loc-1", "loc", LOC_PORT, &["a1", "a2"]),
    );
    wait_for(
        SETTLE,
        "node-b's health check to answer 503 and its nodePort to refuse",
        || c.health(b, hc).is_some_and(|h| h.0 == 503) && refused(&c.connect(at(b, loc_np))),
    );
    let (status, headers, json) = c.health(b, hc).expect("node-b health check");
    assert_eq!(
        (status, &json["localEndpoints"]),
        (503, &0.into()),
        "{json}"
    );
    assert!(
        headers.contains("x-load-balancing-endpoint-weight: 0"),
        "{headers}"
    );
    for i in 0..5 {
        let r = c.connect(at(b, loc_np));
        assert!(
            refused(&r),
            "Local via node-b without endpoints there, connection {i}: {r:?}"
        );
    }
    let (status, _, json) = c.health(a, hc).expect("node-a health check");
    assert_eq!(
        (status, &json["localEndpoints"]),
        (200, &2.into()),
        "{json}"
    );
    let got = c
        .ask(at(a, loc_np), 20, |_| false)
        .unwrap_or_else(|e| panic!("Local via node-a after the change: {e}\n{}", c.log(a)));
    assert_eq!(got.len(), 20);
    assert!(
        got.iter().all(|id| id == "a1" || id == "a2"),
        "Local via node-a: {got:?}"
    );
    for p in &b.pods {
        assert_eq!(
            p.apps.loc.accepted(),
            b_accepted[&p.name],
            "pod {} got Local flows after leaving the slice",
            p.name
        );
    }

    eprintln!(
        "multi_node: set up (API server, 9 namespaces, 2 daemons) in {set_up:?}, all in {:?}",
        started.elapsed()
    );
}
