//! Soak run (a benchmark, not a test): the release daemon under churn for a while (default
//! 10 minutes) on loopback, then idle, reporting whether it comes back to where it started.
//!
//! Churn, all through the manifests directory and the plugin directory:
//! - every 100 ms one of 20 churn Services gets a new endpoint set (TCP and UDP);
//! - every second one Service is added or removed (its file created or deleted);
//! - every 10 s the plugin file `policy.wasm` (named by one Service) is swapped between
//!   consistent-hash and maglev;
//! - every second the probe Service's endpoint moves between two backends, and the time until
//!   a new connection reaches the new one is the control-plane latency (p50/p99 reported).
//!
//! Steady load meanwhile, on a Service whose endpoints also change every 100 ms (always among
//! live backends): TCP connections (one request each, about 100/s) and UDP flows (a new
//! socket per flow, one datagram and its echo, about 100/s). Every failure is counted; the
//! target is none.
//!
//! Reported at the start, every minute and after the load stops (and the UDP timeouts pass):
//! RSS, open descriptors, flows in the conntrack table. They must come back to the baseline.
//!
//! `SOAK_SWAP=0` leaves the plugin file alone and `SOAK_STEADY=0` the steady Service's
//! endpoints, to tell what a growth or a failure comes from.
//!
//! `cargo build --release -p nodeportd && scripts/build-plugins.sh &&
//!  cargo bench -p nodeportd-benches --bench soak -- [seconds]`

#[allow(dead_code)] // shared by the benches
mod daemon;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeportd_e2e::*;

const CHURN: usize = 20;

fn service_file(name: &str, np: u16, tcp: &[SocketAddr], udp: &[SocketAddr]) -> String {
    docs(&[
        Service::new(name)
            .tcp("t", np)
            .port("u", "UDP", u32::from(np))
            .yaml(),
        named_slices(&format!("{name}-t"), name, "t", "TCP", tcp),
        named_slices(&format!("{name}-u"), name, "u", "UDP", udp),
    ])
}

/// Flows the daemon tracks now (its /conntrack rows).
fn flows(admin: &str) -> usize {
    daemon::http_get(admin, "/conntrack")
        .and_then(|r| r.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// A load thread: runs `one` every `every` until stopped or `until`, counting outcomes.
fn load(
    stop: Arc<AtomicBool>,
    until: Instant,
    every: Duration,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    one: impl Fn() -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            if one() {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(every);
        }
    })
}

fn main() {
    let knob = |name: &str| std::env::var(name).map_or(true, |v| v != "0");
    let (swap, steady_churn) = (knob("SOAK_SWAP"), knob("SOAK_STEADY"));
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(600);
    let tcp: Vec<TcpBackend> = (0..4)
        .map(|i| TcpBackend::local(&format!("t{i}")))
        .collect();
    let udp: Vec<UdpBackend> = (0..4)
        .map(|i| UdpBackend::local(&format!("u{i}")))
        .collect();
    let ta: Vec<SocketAddr> = tcp.iter().map(TcpBackend::addr).collect();
    let ua: Vec<SocketAddr> = udp.iter().map(UdpBackend::addr).collect();
    let m = Manifests::new();
    let steady = node_port();
    m.write(
        "steady.yaml",
        &service_file("steady", steady, &ta[..2], &ua[..2]),
    );
    let churn: Vec<u16> = (0..CHURN).map(|_| node_port()).collect();
    for (i, np) in churn.iter().enumerate() {
        m.write(
            &format!("churn-{i}.yaml"),
            &service_file(&format!("churn-{i}"), *np, &ta, &ua),
        );
    }
    let probe = node_port();
    let (p1, p2) = (TcpBackend::local("p1"), TcpBackend::local("p2"));
    let probe_file = |to: &TcpBackend| {
        docs(&[
            Service::new("probe").tcp("http", probe).yaml(),
            slices("probe", "http", "TCP", &[to.addr()]),
        ])
    };
    m.write("probe.yaml", &probe_file(&p1));
    let plugged = node_port();
    m.write(
        "plugged.yaml",
        &docs(&[
            Service::new("plugged")
                .tcp("http", plugged)
                .plugins("policy")
                .yaml(),
            slices("plugged", "http", "TCP", &ta),
        ]),
    );
    let plugins = PluginDir::with(&[]);
    plugins.install("consistent-hash", "policy");
    let extra_ports: Vec<u16> = (0..8).map(|_| node_port()).collect();

    let admin = format!("127.0.0.1:{}", free_tcp_port());
    let dir = plugins.path().display().to_string();
    let d = daemon::Daemon::start(
        m.path(),
        &admin,
        &[
            "--plugin-dir",
            &dir,
            "--udp-timeout",
            "5s",
            "--udp-stream-timeout",
            "10s",
        ],
        Duration::from_secs(60),
    )
    .expect("daemon");
    let report = |when: &str| {
        println!(
            "{when:>10}: RSS {:>6} KiB, {:>4} descriptors, {:>4} flows in conntrack",
            d.rss_kib(),
            d.fds(),
            flows(&admin)
        );
    };
    report("start");
    let base = (d.rss_kib(), d.fds(), flows(&admin));

    let stop = Arc::new(AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(seconds + 60);
    let counts: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let tcp_load = load(
        stop.clone(),
        until,
        Duration::from_millis(10),
        counts[0].clone(),
        counts[1].clone(),
        move || who(lo(steady)).is_ok(),
    );
    let udp_load = load(
        stop.clone(),
        until,
        Duration::from_millis(10),
        counts[2].clone(),
        counts[3].clone(),
        move || {
            let s = udp_client(lo(steady), Duration::from_secs(1));
            udp_ask(&s, "soak").is_ok()
        },
    );

    let t0 = Instant::now();
    let mut latency = Vec::new();
    let mut next_minute = 60;
    let mut tick = 0u64;
    let mut added: Vec<usize> = Vec::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        tick += 1;
        // Every 100 ms: a churn Service and the steady one get other endpoints.
        let i = (tick as usize) % CHURN;
        let k = (tick as usize) % 3 + 1;
        m.write(
            &format!("churn-{i}.yaml"),
            &service_file(&format!("churn-{i}"), churn[i], &ta[..k], &ua[..k]),
        );
        let s = if steady_churn { (tick as usize) % 2 } else { 0 };
        m.write(
            "steady.yaml",
            &service_file("steady", steady, &ta[s..s + 2], &ua[s..s + 2]),
        );
        if tick.is_multiple_of(10) {
            // Every second: a Service added or removed, and a probe of the latency.
            let slot = (tick / 10) as usize % extra_ports.len();
            if let Some(pos) = added.iter().position(|x| *x == slot) {
                added.remove(pos);
                m.remove(&format!("extra-{slot}.yaml"));
            } else {
                added.push(slot);
                let name = format!("extra-{slot}");
                m.write(
                    &format!("{name}.yaml"),
                    &service_file(&name, extra_ports[slot], &ta[..1], &ua[..1]),
                );
            }
            let (to, id) = if (tick / 10) % 2 == 1 {
                (&p2, "p2")
            } else {
                (&p1, "p1")
            };
            let t = Instant::now();
            m.write("probe.yaml", &probe_file(to));
            let deadline = t + Duration::from_secs(5);
            while who(lo(probe)).ok().as_deref() != Some(id) && Instant::now() < deadline {}
            latency.push(t.elapsed());
        }
        if swap && tick.is_multiple_of(100) {
            let built = if (tick / 100) % 2 == 1 {
                "maglev"
            } else {
                "consistent-hash"
            };
            plugins.install(built, "policy");
        }
        if t0.elapsed() >= Duration::from_secs(next_minute) {
            report(&format!("{} min", next_minute / 60));
            next_minute += 60;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tcp_load.join();
    let _ = udp_load.join();
    let load_ended = Instant::now();
    // Back to baseline: UDP flows expire after 5 s (10 s once answered), closed TCP at once.
    while flows(&admin) > base.2 && load_ended.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
    }
    report("after");
    latency.sort();
    let n = |i: usize| counts[i].load(Ordering::Relaxed);
    println!(
        "steady load: TCP {} ok, {} failed; UDP {} ok, {} failed",
        n(0),
        n(1),
        n(2),
        n(3)
    );
    println!(
        "endpoint change -> new flow on the new endpoint during the churn ({} samples): p50 {:.1} ms, p99 {:.1} ms",
        latency.len(),
        percentile(&latency, 0.5).as_secs_f64() * 1e3,
        percentile(&latency, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "baseline: RSS {} KiB, {} descriptors, {} flows; back to it after {:.1} s without load",
        base.0,
        base.1,
        base.2,
        load_ended.elapsed().as_secs_f64()
    );
}
