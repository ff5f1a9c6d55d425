//! The API source at scale (not criterion): N Services (default 10,000, nodePorts from
//! 20000 up, TCP) with M endpoints each (default 10: 100,000 endpoints, addresses in
//! 198.18.0.0/15, never sent traffic) created in a real kube-apiserver (tests/harness/kube.rs;
//! built by scripts/kube-apiserver.sh), then the release daemon started on it. Reports the
//! time to create them, the time from the daemon's start to its first sync programmed
//! (/readyz), its memory and descriptors, and the latency of one endpoint change from the API
//! write until a new connection reaches the new endpoint (p50/p99 over K changes, alternating
//! a probe Service between two loopback backends), beside the latency of the same change to a
//! watch of the bench's own: the difference is what nodeportd adds to the API server's watch.
//!
//! `cargo build --release -p nodeportd && cargo bench -p nodeportd-benches --bench kube_scale -- [N] [M] [K]`

#[allow(dead_code)] // shared by the benches; this one starts it on an API server only
mod daemon;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use nodeportd_e2e::{lo, node_port, slice, who, ApiServer, Ep, TcpBackend, ADMIN_TOKEN, NS};

const FIRST_PORT: usize = 20000;

fn service(name: &str, port: usize) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "NodePort", "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": port}
        ]}
    }))
    .expect("service")
}

fn endpoints(i: usize, m: usize) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = (0..m)
        .map(|j| {
            let n = (i * m + j) as u32 % (1 << 17);
            let ip = std::net::Ipv4Addr::from(u32::from_be_bytes([198, 18, 0, 0]) + n);
            serde_json::json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": eps
    }))
    .expect("slice")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args
        .first()
        .copied()
        .unwrap_or(10_000)
        .min(32767 - FIRST_PORT);
    let m = args.get(1).copied().unwrap_or(10);
    let k = args.get(2).copied().unwrap_or(200).max(2);
    let api = ApiServer::start_with_range(&format!("{FIRST_PORT}-32767"));
    let kubeconfig = api.kubeconfig(ADMIN_TOKEN);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client: Client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    });
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);

    let t0 = Instant::now();
    rt.block_on(async {
        futures_util::stream::iter(0..n)
            .map(|i| {
                let (services, slices) = (services.clone(), slices.clone());
                async move {
                    let pp = PostParams::default();
                    services
                        .create(&pp, &service(&format!("svc-{i}"), FIRST_PORT + i))
                        .await?;
                    slices.create(&pp, &endpoints(i, m)).await.map(|_| ())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .expect("create objects")
    });
    let created = t0.elapsed();
    println!(
        "created {n} Services and {} endpoints ({n} EndpointSlices) in {:.1} s",
        n * m,
        created.as_secs_f64()
    );

    // The probe Service: its one endpoint alternates between two real backends.
    let (a, b) = (TcpBackend::local("a"), TcpBackend::local("b"));
    let np = node_port();
    let probe_slice = |to: &TcpBackend| {
        slice(
            "probe",
            "probe",
            "http",
            "TCP",
            to.addr().port(),
            &[Ep::ready(to.addr().ip())],
        )
    };
    api.apply(
        nodeportd_e2e::Kind::Service,
        "probe",
        &nodeportd_e2e::Service::new("probe").tcp("http", np).yaml(),
    );
    api.apply(
        nodeportd_e2e::Kind::EndpointSlice,
        "probe",
        &probe_slice(&a),
    );

    let admin = format!("127.0.0.1:{}", nodeportd_e2e::free_tcp_port());
    let d = daemon::Daemon::start_on(
        &["--kubeconfig".as_ref(), kubeconfig.as_os_str()],
        &admin,
        &["--nodeport-range", &format!("{FIRST_PORT}-32767")],
        Duration::from_secs(600),
    )
    .expect("daemon");
    println!(
        "daemon: first sync programmed {:.2} s after start; RSS {} MiB; {} descriptors",
        d.ready_after.as_secs_f64(),
        d.rss_kib() / 1024,
        d.fds()
    );
    assert_eq!(
        who(lo(np)).ok().as_deref(),
        Some("a"),
        "the probe Service is served"
    );

    // A watch of our own on the probe slice: when the API server delivers the change.
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let watch_api = slices.clone();
    rt.spawn(async move {
        let cfg = watcher::Config::default().fields("metadata.name=probe");
        let mut s = std::pin::pin!(watcher(watch_api, cfg));
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Apply(o)) = ev {
                let port = o.ports.and_then(|p| p.first().and_then(|p| p.port));
                let _ = seen_tx.send((Instant::now(), format!("{port:?}")));
            }
        }
    });
    let mut through = Vec::with_capacity(k);
    let mut watched = Vec::with_capacity(k);
    for i in 0..k {
        let (to, id) = if i % 2 == 0 { (&b, "b") } else { (&a, "a") };
        let want = format!("{:?}", Some(i32::from(to.addr().port())));
        let patch: serde_json::Value = serde_json::json!({
            "ports": [{"name": "http", "protocol": "TCP", "port": to.addr().port()}],
            "endpoints": [{"addresses": [to.addr().ip().to_string()], "conditions": {"ready": true}}]
        });
        while seen_rx.try_recv().is_ok() {}
        let t = Instant::now();
        rt.block_on(slices.patch("probe", &PatchParams::default(), &Patch::Merge(&patch)))
            .expect("patch");
        let deadline = t + Duration::from_secs(10);
        while who(lo(np)).ok().as_deref() != Some(id) {
            assert!(
                Instant::now() < deadline,
                "change {i} not applied within 10 s"
            );
        }
        through.push(t.elapsed());
        let seen = (0..100)
            .find_map(|_| {
                seen_rx
                    .recv_timeout(Duration::from_millis(100))
                    .ok()
                    .filter(|(_, p)| *p == want)
            })
            .map(|(at, _)| at.saturating_duration_since(t))
            .expect("the bench's own watch sees the change");
        watched.push(seen);
    }
    through.sort();
    watched.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "endpoint change, API write -> new flow on the new endpoint ({k} changes): p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&through, 0.5)),
        ms(percentile(&through, 0.99))
    );
    println!(
        "the same change to a plain watch of the API server: p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&watched, 0.5)),
        ms(percentile(&watched, 0.99))
    );
    println!(
        "nodeportd beyond the watch: p50 {:.1} ms, p99 {:.1} ms; RSS after the changes {} MiB",
        ms(percentile(&through, 0.5)) - ms(percentile(&watched, 0.5)),
        ms(percentile(&through, 0.99)) - ms(percentile(&watched, 0.99)),
        d.rss_kib() / 1024
    );
}
