//! Scale of the plugin runtime (not criterion): N Services (default 10,000), each a TCP
//! nodePort with one endpoint, all annotated with the chain "source-ranges, consistent-hash",
//! on the release daemon with 2 workers. Reports memory against the same Services without
//! plugins, before and after every Service has had a flow on every worker (so every plugin
//! instance holds per-Service state for all N), the time to ready, and the plugin instances.
//!
//! `cargo bench -p nodeportd-benches --bench plugin_scale -- [services]` (build the release
//! daemon and scripts/build-plugins.sh first). Traffic stays on 127.0.0.1.

mod daemon;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn manifests(dir: &Path, services: usize, backend: u16, plugins: bool) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("manifests dir");
    let annotations = if plugins {
        "  annotations:\n    nodeportd.dev/plugins: \"source-ranges, consistent-hash\"\n    nodeportd.dev/config.source-ranges: \"127.0.0.0/8\"\n"
    } else {
        ""
    };
    // 100 Services per file keeps the directory small.
    for chunk in 0..services.div_ceil(100) {
        let mut text = String::new();
        for i in chunk * 100..((chunk + 1) * 100).min(services) {
            text.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: scale\n{annotations}spec:\n  type: NodePort\n  ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: {backend}, nodePort: {np}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  namespace: scale\n  labels: {{kubernetes.io/service-name: svc-{i}}}\naddressType: IPv4\nports:\n- {{name: http, protocol: TCP, port: {backend}}}\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n---\n",
                np = 30000 + i
            ));
        }
        std::fs::write(dir.join(format!("svc-{chunk}.yaml")), text).expect("write manifests");
    }
}

/// Opens `per` connections to every nodePort, each answered by the backend; returns failures.
fn touch_all(services: usize, per: usize) -> usize {
    let mut failed = 0;
    for i in 0..services {
        for _ in 0..per {
            let ok = TcpStream::connect(("127.0.0.1", (30000 + i) as u16))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut b = [0u8; 2];
                    s.read_exact(&mut b)
                })
                .is_ok();
            failed += usize::from(!ok);
        }
    }
    failed
}

fn metric(admin: &str, name: &str) -> f64 {
    daemon::http_get(admin, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn main() {
    let services: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000)
        .min(10_000);
    let plugin_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        plugin_dir.join("consistent-hash.wasm").is_file(),
        "run scripts/build-plugins.sh first"
    );
    // One backend for every Service: answers "ok" and closes.
    let backend = TcpListener::bind("127.0.0.1:0").expect("backend");
    let port = backend.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in backend.incoming().flatten() {
            let _ = s.write_all(b"ok");
        }
    });
    let dir = std::env::temp_dir().join(format!("nodeportd-plugin-scale-{}", std::process::id()));
    let cache = dir.with_extension("cache");
    let admin = "127.0.0.1:10392";
    let range = format!("30000-{}", 30000 + services.max(2768) - 1);
    let plugin_dir_s = plugin_dir.display().to_string();
    let cache_s = cache.display().to_string();
    let common = ["--workers", "2", "--nodeport-range", &range];

    manifests(&dir, services, port, false);
    let base = daemon::Daemon::start(&dir, admin, &common, Duration::from_secs(300))
        .expect("baseline daemon");
    let base_ready = base.rss_kib();
    let base_failed = touch_all(services, 2);
    let base_after = base.rss_kib();
    let base_time = base.ready_after;
    drop(base);

    manifests(&dir, services, port, true);
    let mut args = common.to_vec();
    args.extend([
        "--plugin-dir",
        &plugin_dir_s,
        "--plugin-cache-dir",
        &cache_s,
    ]);
    let d =
        daemon::Daemon::start(&dir, admin, &args, Duration::from_secs(600)).expect("plugin daemon");
    let ready = d.rss_kib();
    let t = Instant::now();
    let failed = touch_all(services, 2);
    let touched = t.elapsed();
    let after = d.rss_kib();
    let fds = d.fds();
    let selects = metric(admin, "nodeportd_plugin_calls_total");
    let failures = metric(admin, "nodeportd_plugin_failures_total");
    println!("plugin scale: {services} Services, chain source-ranges + consistent-hash, 2 workers (release daemon)");
    println!(
        "  without plugins: ready in {:.1?}, VmRSS {:.1} MiB, {:.1} MiB after {} connections ({base_failed} failed)",
        base_time,
        base_ready as f64 / 1024.0,
        base_after as f64 / 1024.0,
        services * 2
    );
    println!(
        "  with plugins:    ready in {:.1?}, VmRSS {:.1} MiB, {:.1} MiB after {} connections in {:.1?} ({failed} failed)",
        d.ready_after,
        ready as f64 / 1024.0,
        after as f64 / 1024.0,
        services * 2,
        touched
    );
    println!(
        "  plugin runtime cost: {:.1} MiB with every Service configured in every instance; {selects} plugin calls, {} failures, {fds} descriptors",
        (after as f64 - base_after as f64) / 1024.0,
        failures.abs()
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cache);
}
