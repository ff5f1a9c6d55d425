//! WASM plugins in the path of real flows: a selection plugin decides the endpoint, an
//! admission plugin refuses (TCP reset, UDP dropped), an affinity plugin keeps a key on one
//! endpoint across workers, and annotation or file changes swap plugins under load without a
//! failed connection. The plugins are the shipped ones, built by scripts/build-plugins.sh,
//! plus the test fixture `pin` (selects the endpoint whose port its config names).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeportd_e2e::*;

fn pin(port: u16) -> String {
    format!("port={port}")
}

/// Backends a, b, c and a manifests directory with `svc` (on its own nodePort, returned
/// first) and a Service "plain" without plugins (second), both over those backends.
struct WithPlain {
    backends: Vec<TcpBackend>,
    m: Manifests,
    np: u16,
    plain: u16,
}

fn with_plain(svc: impl FnOnce(&[SocketAddr]) -> Service) -> WithPlain {
    let backends: Vec<TcpBackend> = ["a", "b", "c"]
        .iter()
        .map(|id| TcpBackend::local(id))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    let (np, plain) = (node_port(), node_port());
    let svc = svc(&addrs);
    let name = svc.name().to_string();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            svc.tcp("http", np).yaml(),
            slices(&name, "http", "TCP", &addrs),
            Service::new("plain").tcp("http", plain).yaml(),
            slices("plain", "http", "TCP", &addrs),
        ]),
    );
    WithPlain {
        backends,
        m,
        np,
        plain,
    }
}

#[test]
fn selection_plugin_routes_where_it_says() {
    let w = with_plain(|addrs| {
        Service::new("pinned")
            .plugins("pin")
            .plugin_config("pin", &pin(addrs[1].port()))
    });
    let (np, plain) = (w.np, w.plain);
    assert_eq!(w.backends[1].id(), "b");
    let pd = PluginDir::with(&["fixtures/pin"]);
    let d = pd.start(&w.m, &["--workers", "2"]);
    for i in 0..30 {
        let id = who(lo(np)).unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", d.log()));
        assert_eq!(
            id, "b",
            "connection {i} went to {id}, not where the plugin said"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(who(lo(plain)).expect("plain Service"));
    }
    assert!(
        seen.len() >= 2,
        "the Service without plugins must balance: {seen:?}"
    );
    let calls = d.metric_with(
        "nodeportd_plugin_calls_total",
        &[
            "service=\"e2e/pinned\"",
            "plugin=\"pin\"",
            "role=\"selection\"",
        ],
    );
    assert!(calls >= 30.0, "select calls counted: {calls}");
    let hist = d.metric_with(
        "nodeportd_plugin_call_duration_seconds_count",
        &["plugin=\"pin\"", "role=\"selection\""],
    );
    assert!(
        hist >= 3.0,
        "latency histogram (one call in 8 sampled) count: {hist}"
    );
}

#[test]
fn hashing_selection_plugins_spread_flows() {
    for plugin in ["maglev", "consistent-hash"] {
        let w = with_plain(|_| Service::new("hashed").plugins(plugin));
        let pd = PluginDir::with(&[plugin]);
        let d = pd.start(&w.m, &["--workers", "2"]);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..40 {
            seen.insert(who(lo(w.np)).unwrap_or_else(|e| panic!("{plugin}, connection {i}: {e}")));
        }
        assert_eq!(
            seen.len(),
            3,
            "{plugin}: 40 flows hashed over 3 endpoints: {seen:?}"
        );
        let calls = d.metric_with(
            "nodeportd_plugin_calls_total",
            &[&format!("plugin=\"{plugin}\""), "role=\"selection\""],
        );
        assert!(calls >= 40.0, "{plugin}: select calls {calls}");
    }
}

#[test]
fn admission_plugin_resets_tcp_and_drops_udp() {
    let tcp = TcpBackend::local("t");
    let udp = UdpBackend::local("u");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("gated")
                .tcp("http", np)
                .udp("dns", np)
                .plugins("source-ranges")
                .plugin_config("source-ranges", "127.0.0.2/32, 2001:db8::/32")
                .yaml(),
            named_slices("gated-t", "gated", "http", "TCP", &[tcp.addr()]),
            named_slices("gated-u", "gated", "dns", "UDP", &[udp.addr()]),
        ]),
    );
    let pd = PluginDir::with(&["source-ranges"]);
    let d = pd.start(&m, &[]);
    let allowed = IpAddr::from([127, 0, 0, 2]);
    let other = IpAddr::from([127, 0, 0, 1]);
    assert_eq!(who_from(allowed, lo(np)).expect("allowed client"), "t");
    match who_from(other, lo(np)) {
        Ok(id) => panic!("client outside the ranges reached backend {id}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            ),
            "refused TCP flow should be reset, got {e}"
        ),
    }
    assert_eq!(tcp.accepted(), 1, "the backend saw only the allowed client");

    let ask = |src: IpAddr| -> io::Result<String> {
        let s = UdpSocket::bind(SocketAddr::new(src, 0))?;
        s.connect(lo(np))?;
        s.set_read_timeout(Some(Duration::from_millis(400)))?;
        let mut last = Err(io::Error::from(io::ErrorKind::TimedOut));
        for _ in 0..3 {
            last = udp_ask(&s, "q");
            if last.is_ok() {
                break;
            }
        }
        last
    };
    assert_eq!(ask(allowed).expect("allowed UDP client"), "u:q");
    let received = udp.received();
    assert!(ask(other).is_err(), "a denied UDP datagram got an answer");
    assert_eq!(
        udp.received(),
        received,
        "denied datagrams reached the endpoint"
    );
    wait_for(Duration::from_secs(5), "denials counted", || {
        d.metric_with(
            "nodeportd_plugin_denials_total",
            &[
                "service=\"e2e/gated\"",
                "reason=\"source_not_allowed\"",
                "protocol=\"tcp\"",
            ],
        ) == 1.0
            && d.metric_with(
                "nodeportd_flows_refused_total",
                &[
                    "service=\"e2e/gated\"",
                    "reason=\"denied\"",
                    "protocol=\"udp\"",
                ],
            ) == 3.0
    });
    // Three datagrams of one refused UDP flow: the plugin was asked once, not per datagram.
    let udp_denials = d.metric_with(
        "nodeportd_plugin_denials_total",
        &[
            "service=\"e2e/gated\"",
            "protocol=\"udp\"",
            "reason=\"source_not_allowed\"",
        ],
    );
    assert_eq!(udp_denials, 1.0, "admission asked once per UDP flow");
}

#[test]
fn affinity_plugin_keeps_a_key_on_one_endpoint_across_workers() {
    let w = with_plain(|_| Service::new("subnet").plugins("client-subnet-affinity"));
    let (np, plain) = (w.np, w.plain);
    let pd = PluginDir::with(&["client-subnet-affinity"]);
    let d = pd.start(&w.m, &["--workers", "2"]);
    // Eight client addresses of one /24, five connections each: one endpoint for all.
    let mut seen = std::collections::BTreeSet::new();
    let mut plain_seen = std::collections::BTreeSet::new();
    for host in 1..=8u8 {
        let src = IpAddr::from([127, 0, 0, host]);
        for _ in 0..5 {
            seen.insert(
                who_from(src, lo(np)).unwrap_or_else(|e| panic!("{src}: {e}\n{}", d.log())),
            );
            plain_seen.insert(who_from(src, lo(plain)).expect("plain Service"));
        }
    }
    assert_eq!(
        seen.len(),
        1,
        "one /24 key must stay on one endpoint: {seen:?}"
    );
    assert!(
        plain_seen.len() >= 2,
        "without the plugin the clients spread: {plain_seen:?}"
    );
    let keys = d.metric_with(
        "nodeportd_plugin_calls_total",
        &["plugin=\"client-subnet-affinity\"", "role=\"affinity\""],
    );
    assert!(keys >= 40.0, "affinity-key calls: {keys}");
}

#[test]
fn swapping_plugins_under_load_fails_no_connection() {
    let a = TcpBackend::local("a");
    let b = TcpBackend::local("b");
    let addrs = [a.addr(), b.addr()];
    let np = node_port();
    let m = Manifests::new();
    let write = |svc: Service| {
        m.write(
            "svc.yaml",
            &docs(&[
                svc.tcp("http", np).yaml(),
                slices("swap", "http", "TCP", &addrs),
            ]),
        )
    };
    write(
        Service::new("swap")
            .plugins("pin")
            .plugin_config("pin", &pin(a.addr().port())),
    );
    let pd = PluginDir::with(&["fixtures/pin", "consistent-hash"]);
    let d = pd.start(&m, &["--workers", "2"]);
    assert_eq!(who(lo(np)).unwrap(), "a");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 20_000 {
                    match Conn::open(lo(np)).and_then(|mut c| c.echo(b"ping").map(|_| c.backend)) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let progress = |more: usize| {
        let target = done.load(Ordering::SeqCst) + more;
        wait_for(Duration::from_secs(20), "load makes progress", || {
            done.load(Ordering::SeqCst) >= target
        });
    };
    progress(50);
    // Config change: the pin moves to b.
    write(
        Service::new("swap")
            .plugins("pin")
            .plugin_config("pin", &pin(b.addr().port())),
    );
    wait_for(Duration::from_secs(10), "new flows pinned to b", || {
        who(lo(np)).is_ok_and(|id| id == "b")
    });
    for _ in 0..10 {
        assert_eq!(
            who(lo(np)).unwrap(),
            "b",
            "after the swap every new flow goes to b"
        );
    }
    progress(50);
    // Chain change: another plugin, then none (native), then back.
    write(Service::new("swap").plugins("consistent-hash"));
    wait_for(
        Duration::from_secs(10),
        "consistent-hash in the path",
        || {
            d.metric_with(
                "nodeportd_plugin_calls_total",
                &["plugin=\"consistent-hash\"", "role=\"selection\""],
            ) > 0.0
        },
    );
    progress(50);
    write(Service::new("swap"));
    progress(50);
    write(
        Service::new("swap")
            .plugins("pin")
            .plugin_config("pin", &pin(a.addr().port())),
    );
    wait_for(Duration::from_secs(10), "pinned to a again", || {
        who(lo(np)).is_ok_and(|id| id == "a")
    });
    progress(50);
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed during plugin swaps: {:?}",
        failures.len(),
        done.load(Ordering::SeqCst) + failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn plugin_file_changes_swap_it_and_a_bad_file_keeps_the_old_one() {
    let a = TcpBackend::local("a");
    let b = TcpBackend::local("b");
    let np = node_port();
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("filed")
                .tcp("http", np)
                .plugins("policy")
                .plugin_config("policy", &pin(a.addr().port()))
                .yaml(),
            slices("filed", "http", "TCP", &[a.addr(), b.addr()]),
        ]),
    );
    let pd = PluginDir::with(&[]);
    pd.install("fixtures/pin", "policy");
    let d = pd.start(&m, &[]);
    for _ in 0..10 {
        assert_eq!(who(lo(np)).unwrap(), "a");
    }
    // A broken file: logged, and the Service keeps the version it had.
    pd.write("policy", b"\0asm not really");
    wait_for(Duration::from_secs(10), "reload error logged", || {
        d.log().contains("plugin not reloaded")
    });
    for _ in 0..10 {
        assert_eq!(
            who(lo(np)).unwrap(),
            "a",
            "a bad file must not change the plugin in force"
        );
    }
    // A different plugin under the same name: it traps on every select, so the failure
    // policy (open) decides: flows are served by the native default.
    pd.install("hostile/trap", "policy");
    wait_for(
        Duration::from_secs(10),
        "new plugin version in force",
        || {
            who(lo(np)).is_ok()
                && d.metric_with(
                    "nodeportd_plugin_failures_total",
                    &["service=\"e2e/filed\"", "kind=\"trap\""],
                ) > 0.0
        },
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(who(lo(np)).expect("policy open: native default serves"));
    }
    assert_eq!(
        seen.len(),
        2,
        "native default balances over both endpoints: {seen:?}"
    );
    // And back: the pin takes effect again for new flows.
    pd.install("fixtures/pin", "policy");
    wait_for(Duration::from_secs(10), "pin again", || {
        (0..5).all(|_| who(lo(np)).is_ok_and(|id| id == "a"))
    });
}

#[test]
fn configure_refusal_and_missing_plugin_leave_the_native_default_and_say_why() {
    let a = TcpBackend::local("a");
    let (np1, np2) = (node_port(), node_port());
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new("badcfg")
                .tcp("http", np1)
                .plugins("source-ranges")
                .plugin_config("source-ranges", "198.18.0.0/33")
                .yaml(),
            slices("badcfg", "http", "TCP", &[a.addr()]),
            Service::new("missing")
                .tcp("http", np2)
                .plugins("nosuch")
                .plugin_config("nosuch", &pin(a.addr().port()))
                .yaml(),
            slices("missing", "http", "TCP", &[a.addr()]),
        ]),
    );
    let pd = PluginDir::with(&["source-ranges"]);
    let d = pd.start(&m, &[]);
    assert_eq!(who(lo(np1)).expect("native default serves badcfg"), "a");
    assert_eq!(who(lo(np2)).expect("native default serves missing"), "a");
    let log = d.log();
    assert!(
        log.contains("e2e/badcfg")
            && log.contains("refused its config")
            && log.contains("198.18.0.0/33"),
        "the refusal names Service, plugin and config:\n{log}"
    );
    assert!(
        log.contains("e2e/missing") && log.contains("nosuch.wasm"),
        "missing plugin named:\n{log}"
    );
    // The missing plugin appears: the Service picks it up without a restart.
    pd.install("fixtures/pin", "nosuch");
    wait_for(
        Duration::from_secs(10),
        "plugin picked up once its file exists",
        || d.log().contains("Service now runs the plugins it names"),
    );
    assert_eq!(who(lo(np2)).unwrap(), "a");
    let calls = d.metric_with(
        "nodeportd_plugin_calls_total",
        &[
            "service=\"e2e/missing\"",
            "plugin=\"nosuch\"",
            "role=\"selection\"",
        ],
    );
    assert!(calls >= 1.0, "the new plugin is in the path: {calls}");
}

#[test]
fn plugin_series_go_when_the_service_stops_running_the_plugin() {
    let a = TcpBackend::local("a");
    let np = node_port();
    let m = Manifests::new();
    let pinned = |plugins: bool| {
        let svc = Service::new("counted").tcp("http", np);
        let svc = if plugins {
            svc.plugins("pin")
                .plugin_config("pin", &pin(a.addr().port()))
        } else {
            svc
        };
        docs(&[svc.yaml(), slices("counted", "http", "TCP", &[a.addr()])])
    };
    m.write("svc.yaml", &pinned(true));
    let pd = PluginDir::with(&["fixtures/pin"]);
    let d = pd.start(&m, &[]);
    let of_pin = |d: &Daemon| {
        d.metrics()
            .lines()
            .filter(|l| l.contains("service=\"e2e/counted\"") && l.contains("plugin=\"pin\""))
            .count()
    };
    assert_eq!(who(lo(np)).expect("pinned flow"), "a");
    assert!(
        of_pin(&d) > 0,
        "the plugin's series exist once it is called"
    );
    // The annotation goes: the Service runs the native default, the plugin's series go, the
    // Service's own stay.
    m.write("svc.yaml", &pinned(false));
    wait_for(Duration::from_secs(10), "plugin series forgotten", || {
        of_pin(&d) == 0
    });
    assert_eq!(who(lo(np)).expect("native flow"), "a");
    let flows = "nodeportd_flows_total{service=\"e2e/counted\"";
    assert_eq!(d.metric(flows), 2.0, "the frontend's series carry on");
    // The Service goes: every series of it goes.
    m.write("svc.yaml", "");
    wait_for(Duration::from_secs(10), "frontend series forgotten", || {
        d.metric_opt(flows).is_none()
    });
}
