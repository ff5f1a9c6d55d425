//! The cost of a WASM decision per new flow, as a worker makes it (`WorkerInstances`: flow
//! record, deadline arming, the call, its latency histogram) against the same plugin code
//! compiled natively and the native default (kube-proxy's random choice), plus instantiation
//! from the pre-instantiated template. Needs `scripts/build-plugins.sh` first.
//!
//! select: consistent-hash over 16 endpoints; admit: source-ranges with 3 ranges.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use nodeport_plugin::{Admission, Plugin, Selection};
use nodeportd::metrics::Metrics;
use nodeportd::model::{Backend, Family};
use nodeportd::plugin::{Chain, Directory, Instance, Runtime, RuntimeConfig, WorkerInstances};
use nodeportd::policy::{FlowInfo, Random};
use nodeportd_e2e::rig;

const RANGES: &str = "10.0.0.0/8, 198.18.0.0/15, 2001:db8::/32";

fn plugin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(
        dir.join("consistent-hash.wasm").is_file(),
        "run scripts/build-plugins.sh first"
    );
    dir
}

fn chain(dir: &mut Directory, plugin: &str, config: &str, b: &Arc<[Backend]>) -> Arc<Chain> {
    dir.resolve_wait(
        &rig::frontend(plugin, config, b),
        None,
        Duration::from_secs(10),
    )
    .expect("resolve")
    .expect("a chain")
}

/// The same flow as the SDK's native types see it, on handle 1 (`testing::service()`'s).
fn sdk_flow(f: &FlowInfo) -> nodeport_plugin::Flow {
    nodeport_plugin::Flow {
        id: f.id,
        handle: 1,
        protocol: nodeport_plugin::Protocol::Tcp,
        client: f.client.ip(),
        client_port: f.client.port(),
        node: f.node.ip(),
        node_port: f.node.port(),
        hash: f.hash,
    }
}

fn bench(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let rt = Runtime::new(
        RuntimeConfig::default(),
        metrics.plugin_logs_dropped.clone(),
    )
    .expect("runtime");
    let mut dir =
        Directory::new(rt.clone(), plugin_dir(), metrics, Arc::new(|| {})).expect("probe threads");
    let b16 = rig::backends(16);
    let flows: Vec<FlowInfo> = (0..4096).map(rig::flow).collect();

    // select
    let ch = chain(&mut dir, "consistent-hash", "", &b16);
    let mut worker = WorkerInstances::new(Some(rt.clone()), 0);
    worker.attach(&ch);
    let now = Instant::now();
    let mut g = c.benchmark_group("select_16_endpoints");
    let mut i = 0usize;
    g.bench_function("wasm_consistent_hash", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let r = rig::record(&ch, &flows[i]);
            black_box(worker.select(&ch, Family::V4, r, &b16, &[], now))
        })
    });
    let mut native = nodeport_consistent_hash::ConsistentHash::default();
    native.set_backends(
        1,
        (0..b16.len() as u32)
            .map(|i| nodeport_plugin::testing::backend(i, true))
            .collect(),
    );
    let sdk_flows: Vec<nodeport_plugin::Flow> = flows.iter().map(sdk_flow).collect();
    g.bench_function("native_consistent_hash", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(native.select(&sdk_flows[i], None))
        })
    });
    let mut random = Random::new(1);
    g.bench_function("native_default_random", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(random.select(&flows[i], &b16, &[]))
        })
    });
    g.finish();

    // admit
    let ch = chain(&mut dir, "source-ranges", RANGES, &b16);
    worker.attach(&ch);
    let mut g = c.benchmark_group("admit_3_ranges");
    g.bench_function("wasm_source_ranges", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let r = rig::record(&ch, &flows[i]);
            black_box(worker.admit(&ch, 0, Family::V4, r, now))
        })
    });
    let mut native = nodeport_source_ranges::SourceRanges::default();
    native
        .configure(&nodeport_plugin::testing::service(), RANGES)
        .expect("config");
    g.bench_function("native_source_ranges", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(native.admit(&sdk_flows[i]))
        })
    });
    g.finish();

    // instantiation from the template (a pooling slot, no compilation)
    let plugin = dir.get("consistent-hash").expect("plugin");
    c.bench_function("instantiate_consistent_hash", |b| {
        b.iter(|| black_box(Instance::new(&rt, &plugin, 0, 1).map(drop).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
