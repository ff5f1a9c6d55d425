//! Scale run (not criterion): the whole default nodePort range in use, TCP and UDP, 100
//! endpoints each, programmed through the real store, sync loop and workers on loopback.
//! Reports memory, descriptors, initial sync time and the latency of one endpoint change
//! until every worker has applied it (p50/p99 over many changes).
//!
//! Memory is measured on the real daemon: the same objects are written as one manifest file
//! per Service and `target/release/nodeportd` is started on them (build it first).
//!
//! `cargo bench -p nodeportd-benches --bench scale -- [services] [endpoints] [changes] [workers]`

mod daemon;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodeportd::dataplane::listener::BindAddresses;
use nodeportd::dataplane::{Dataplane, DataplaneConfig};
use nodeportd::metrics::Metrics;
use nodeportd::model::store::{Object, Store};
use nodeportd::model::NodeInfo;
use nodeportd::source::SourceEvent;
use nodeportd::sync::Sync;

fn service(i: usize) -> Object {
    let port = 30000 + i;
    let v = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "scale"},
        "spec": {"type": "NodePort", "ports": [
            {"name": "tcp", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": port},
            {"name": "udp", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": port}
        ]}
    });
    Object::Service(Box::new(
        serde_json::from_value::<Service>(v).expect("service"),
    ))
}

fn slice(i: usize, endpoints: usize, generation: usize) -> Object {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            // Each change moves one endpoint to a new address.
            let e = if e == 0 {
                e + generation * endpoints
            } else {
                e
            };
            serde_json::json!({
                "addresses": [format!("198.19.{}.{}", (e / 250) % 250, e % 250 + 1)],
                "conditions": {"ready": true}, "nodeName": format!("node-{}", e % 10)
            })
        })
        .collect();
    let v = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-1"), "namespace": "scale",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}, {"name": "udp", "port": 5353, "protocol": "UDP"}],
        "endpoints": eps
    });
    Object::EndpointSlice(Box::new(
        serde_json::from_value::<EndpointSlice>(v).expect("slice"),
    ))
}

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Starts the release daemon on `services` manifest files and returns its VmRSS (KiB) and
/// descriptors once ready, or why it could not.
fn daemon_rss(services: usize, endpoints: usize, workers: usize) -> Result<(u64, usize), String> {
    let dir = std::env::temp_dir().join(format!("nodeportd-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for i in 0..services {
        let (Object::Service(svc), Object::EndpointSlice(sl)) =
            (service(i), slice(i, endpoints, 0))
        else {
            unreachable!("service() and slice() build these kinds")
        };
        let text = format!(
            "{}\n---\n{}\n",
            serde_json::to_string(&svc).map_err(|e| e.to_string())?,
            serde_json::to_string(&sl).map_err(|e| e.to_string())?
        );
        std::fs::write(dir.join(format!("svc-{i}.yaml")), text).map_err(|e| e.to_string())?;
    }
    let workers = workers.to_string();
    let result = daemon::Daemon::start(
        &dir,
        "127.0.0.1:10391",
        &["--workers", &workers],
        Duration::from_secs(60),
    )
    .map(|d| (d.rss_kib(), d.fds()));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let services = args.first().copied().unwrap_or(2768).min(2768);
    let endpoints = args.get(1).copied().unwrap_or(100);
    let changes = args.get(2).copied().unwrap_or(1000);
    let workers = args.get(3).copied().unwrap_or(2);
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    let daemon = daemon_rss(services, endpoints, workers);
    let objects: Vec<(String, Vec<Object>)> = (0..services)
        .map(|i| {
            (
                format!("svc-{i}.yaml"),
                vec![service(i), slice(i, endpoints, 0)],
            )
        })
        .collect();
    let rss_start = status("VmRSS:");
    let fds_start = fds();
    let cidr: ipnet::IpNet = "127.0.0.1/32".parse().expect("cidr");
    let bind = BindAddresses::resolve(&[cidr]).expect("addresses");
    let cfg = DataplaneConfig {
        workers,
        ..DataplaneConfig::new(bind)
    };
    let metrics = Arc::new(Metrics::new());
    let dataplane = Dataplane::start(cfg, metrics.clone()).expect("dataplane");
    let store = Store::new(
        30000..=32767,
        NodeInfo {
            name: "node-0".into(),
            zone: None,
        },
    );
    let mut sync = Sync::new(store, dataplane, metrics, Arc::new(AtomicBool::new(false)));
    let t0 = Instant::now();
    for (origin, objs) in objects {
        sync.on_source(SourceEvent::Objects {
            origin,
            objects: objs,
        });
    }
    sync.on_source(SourceEvent::Synced);
    sync.barrier();
    let initial = t0.elapsed();
    let rss_synced = status("VmRSS:");
    let fds_synced = fds();
    let mut lat = Vec::with_capacity(changes);
    for c in 0..changes {
        let i = (c * 7919) % services;
        let objs = vec![service(i), slice(i, endpoints, c + 1)];
        let t = Instant::now();
        sync.on_source(SourceEvent::Objects {
            origin: format!("svc-{i}.yaml"),
            objects: objs,
        });
        sync.barrier();
        lat.push(t.elapsed());
    }
    lat.sort();
    let rss_end = status("VmRSS:");
    let sockets = fds_synced - fds_start;
    println!("scale: {services} Services x (TCP + UDP) nodePorts, {endpoints} endpoints each, {workers} workers");
    match daemon {
        Ok((rss, fds)) => println!(
            "  nodeportd daemon on {services} manifest files: VmRSS {:.1} MiB once ready, {fds} descriptors",
            rss as f64 / 1024.0
        ),
        Err(e) => println!("  nodeportd daemon memory not measured: {e}"),
    }
    println!("  in-process initial sync programmed in {:.2?}", initial);
    println!(
        "  in-process VmRSS {:.1} MiB after sync (incl. {:.1} MiB of generated objects at start), {:.1} MiB after {changes} changes",
        rss_synced as f64 / 1024.0,
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!(
        "  descriptors: {} nodePort sockets + {} for {workers} workers' polls and wakers",
        services * 2,
        sockets.saturating_sub(services * 2)
    );
    println!(
        "  64-core node, same ports: {} descriptors with shared listeners; SO_REUSEPORT per worker: {}",
        services * 2 + 2 * 64,
        services * 2 * 64
    );
    println!(
        "  one endpoint change -> applied by every worker: p50 {:.2?}  p99 {:.2?}  max {:.2?} ({changes} changes)",
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
}
