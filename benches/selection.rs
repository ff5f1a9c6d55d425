//! Native selection per new flow: uniform random over 100 endpoints, with exclusions after
//! failed connects, and a ClientIP affinity lookup.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use nodeportd::model::{Backend, FrontendKey, Protocol};
use nodeportd::policy::{AffinityKey, AffinityTable, FlowInfo, Random};

fn backends(n: u32) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend::ready(SocketAddr::from(([198, 19, (i >> 8) as u8, i as u8], 8080))))
        .collect()
}

fn bench(c: &mut Criterion) {
    let b100 = backends(100);
    let flow = FlowInfo::new(
        0,
        1,
        FrontendKey {
            protocol: Protocol::Tcp,
            node_port: 30080,
        },
        SocketAddr::from(([198, 18, 0, 2], 40000)),
        SocketAddr::from(([198, 18, 0, 1], 30080)),
    );
    let mut r = Random::new(1);
    c.bench_function("random_select_100", |b| {
        b.iter(|| black_box(r.select(&flow, &b100, &[])))
    });
    let exclude = [b100[3].addr, b100[50].addr];
    c.bench_function("random_select_100_excluding_2", |b| {
        b.iter(|| black_box(r.select(&flow, &b100, &exclude)))
    });
    let mut a = AffinityTable::default();
    let now = Instant::now();
    for i in 0..10_000u32 {
        let ip = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        let key = AffinityKey::Client(ip);
        let ttl = Duration::from_secs(10800);
        a.record(flow.frontend, key, b100[(i % 100) as usize].addr, ttl, now);
    }
    let ip = AffinityKey::Client(IpAddr::from([198, 18, 10, 10]));
    c.bench_function("affinity_lookup_10k_clients", |b| {
        b.iter(|| black_box(a.lookup(flow.frontend, ip, now)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
