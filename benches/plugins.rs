//! The cost of a WASM decision per new flow, as a worker makes it (`WorkerInstances`: flow
//! record, deadline arming, the call, its latency histogram) against the same plugin code
//! compiled natively, for every shipped plugin; the calibration plugin `fixtures/empty` (every
//! call answers at once) gives the boundary each role pays; the native default (kube-proxy's
//! random choice) and instantiation from the pre-instantiated template close it. Needs
//! `scripts/build-plugins.sh` first.
//!
//! select: consistent-hash and maglev over 16 endpoints; admit: source-ranges with 3 ranges,
//! rate-limit (a bucket that never empties); affinity-key: client-subnet-affinity (/24).
//!
//! For before/after comparisons: `BENCH_PLUGIN_DIR` (default `target/plugins`) takes
//! components built another way, `BENCH_EXPLICIT_BOUNDS=1` the engine with explicit bounds
//! checks (`--plugin-explicit-bounds-checks`).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use nodeport_plugin::{Admission, Affinity, Plugin, Selection};
use nodeportd::metrics::Metrics;
use nodeportd::model::{Backend, Family};
use nodeportd::plugin::{Chain, Directory, Instance, Runtime, RuntimeConfig, WorkerInstances};
use nodeportd::policy::{FlowInfo, Random};
use nodeportd_e2e::rig;

const RANGES: &str = "10.0.0.0/8, 198.18.0.0/15, 2001:db8::/32";
const RATE: &str = "rate=1000000000/s,burst=1000000000";

fn plugin_dir() -> PathBuf {
    let dir = std::env::var_os("BENCH_PLUGIN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"),
        PathBuf::from,
    );
    assert!(
        dir.join("consistent-hash.wasm").is_file() && dir.join("fixtures/empty.wasm").is_file(),
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

/// What every measurement of one run shares.
struct Rig {
    worker: WorkerInstances,
    flows: Vec<FlowInfo>,
    sdk_flows: Vec<nodeport_plugin::Flow>,
    backends: Arc<[Backend]>,
    now: Instant,
    i: usize,
}

impl Rig {
    /// The next of 4,096 flows, round and round.
    fn next(&mut self) -> usize {
        self.i = (self.i + 1) & 4095;
        self.i
    }

    /// A WASM call through the worker's instances, `call` being one of [`select`],
    /// [`admit`] or [`affinity`], on chain `ch`.
    fn wasm<R>(
        &mut self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        ch: &Arc<Chain>,
        call: impl Fn(&mut WorkerInstances, &Arc<Chain>, Flow, &Arc<[Backend]>, Instant) -> R,
    ) {
        self.worker.attach(ch);
        g.bench_function(format!("wasm_{name}"), |b| {
            b.iter(|| {
                let i = self.next();
                let r = rig::record(ch, &self.flows[i]);
                black_box(call(&mut self.worker, ch, r, &self.backends, self.now))
            })
        });
    }

    /// A native plugin's call on the SDK's flow `i`.
    fn native<R>(
        &mut self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        name: &str,
        mut call: impl FnMut(&nodeport_plugin::Flow) -> R,
    ) {
        g.bench_function(format!("native_{name}"), |b| {
            b.iter(|| {
                let i = self.next();
                black_box(call(&self.sdk_flows[i]))
            })
        });
    }
}

type Flow = nodeportd::plugin::wire::types::Flow;
type Answer<T> = Result<T, nodeportd::plugin::FailureKind>;

fn select(
    w: &mut WorkerInstances,
    ch: &Arc<Chain>,
    f: Flow,
    b: &Arc<[Backend]>,
    now: Instant,
) -> Answer<Option<usize>> {
    w.select(ch, Family::V4, f, b, &[], now)
}

fn admit(
    w: &mut WorkerInstances,
    ch: &Arc<Chain>,
    f: Flow,
    _: &Arc<[Backend]>,
    now: Instant,
) -> Answer<nodeportd::plugin::wire::types::Verdict> {
    w.admit(ch, 0, Family::V4, f, now)
}

fn affinity(
    w: &mut WorkerInstances,
    ch: &Arc<Chain>,
    f: Flow,
    _: &Arc<[Backend]>,
    now: Instant,
) -> Answer<Option<nodeportd::plugin::wire::types::Affinity>> {
    w.affinity_key(ch, Family::V4, f, now)
}

/// Endpoints as the SDK's native types see them.
fn sdk_backends(n: usize) -> Vec<nodeport_plugin::Backend> {
    (0..n as u32)
        .map(|i| nodeport_plugin::testing::backend(i, true))
        .collect()
}

fn bench(c: &mut Criterion) {
    let metrics = Arc::new(Metrics::new());
    let config = RuntimeConfig {
        explicit_bounds_checks: std::env::var_os("BENCH_EXPLICIT_BOUNDS").is_some_and(|v| v == "1"),
        ..Default::default()
    };
    let rt = Runtime::new(config, metrics.plugin_logs_dropped.clone()).expect("runtime");
    let root = plugin_dir();
    let mut dir = Directory::new(rt.clone(), root.clone(), metrics.clone(), Arc::new(|| {}))
        .expect("probe threads");
    let mut fixtures = Directory::new(rt.clone(), root.join("fixtures"), metrics, Arc::new(|| {}))
        .expect("probe threads");
    let backends = rig::backends(16);
    let flows: Vec<FlowInfo> = (0..4096).map(rig::flow).collect();
    let mut r = Rig {
        worker: WorkerInstances::new(Some(rt.clone()), 0),
        sdk_flows: flows.iter().map(sdk_flow).collect(),
        flows,
        backends: backends.clone(),
        now: Instant::now(),
        i: 0,
    };
    let empty = chain(&mut fixtures, "empty", "", &backends);
    let service = nodeport_plugin::testing::service();

    let mut g = c.benchmark_group("select_16_endpoints");
    r.wasm(&mut g, "boundary", &empty, select);
    r.wasm(
        &mut g,
        "consistent_hash",
        &chain(&mut dir, "consistent-hash", "", &backends),
        select,
    );
    let mut native = nodeport_consistent_hash::ConsistentHash::default();
    native.set_backends(1, sdk_backends(backends.len()));
    r.native(&mut g, "consistent_hash", |f| native.select(f, None));
    r.wasm(
        &mut g,
        "maglev",
        &chain(&mut dir, "maglev", "", &backends),
        select,
    );
    let mut native = nodeport_maglev::Maglev::default();
    native.set_backends(1, sdk_backends(backends.len()));
    r.native(&mut g, "maglev", |f| native.select(f, None));
    let mut random = Random::new(1);
    g.bench_function("native_default_random", |b| {
        b.iter(|| {
            let i = r.next();
            black_box(random.select(&r.flows[i], &backends, &[]))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("admit");
    r.wasm(&mut g, "boundary", &empty, admit);
    r.wasm(
        &mut g,
        "source_ranges",
        &chain(&mut dir, "source-ranges", RANGES, &backends),
        admit,
    );
    let mut native = nodeport_source_ranges::SourceRanges::default();
    native.configure(&service, RANGES).expect("config");
    r.native(&mut g, "source_ranges", |f| native.admit(f));
    r.wasm(
        &mut g,
        "rate_limit",
        &chain(&mut dir, "rate-limit", RATE, &backends),
        admit,
    );
    let mut native = nodeport_rate_limit::RateLimit::default();
    native.configure(&service, RATE).expect("config");
    r.native(&mut g, "rate_limit", |f| native.admit(f));
    g.finish();

    let mut g = c.benchmark_group("affinity_key");
    r.wasm(&mut g, "boundary", &empty, affinity);
    let ch = chain(&mut dir, "client-subnet-affinity", "", &backends);
    r.wasm(&mut g, "client_subnet_affinity", &ch, affinity);
    let mut native = nodeport_client_subnet_affinity::ClientSubnetAffinity::default();
    native.configure(&service, "").expect("config");
    r.native(&mut g, "client_subnet_affinity", |f| native.affinity_key(f));
    g.finish();

    // instantiation from the template (a pooling slot, no compilation)
    let plugin = dir
        .get("consistent-hash", Duration::from_secs(60))
        .expect("plugin");
    c.bench_function("instantiate_consistent_hash", |b| {
        b.iter(|| black_box(Instance::new(&rt, &plugin, 0, 1).map(drop).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
