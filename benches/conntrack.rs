//! Conntrack shard operations at 100k flows: insert, lookup by tuple, expiry.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nodeportd::dataplane::conntrack::{Entry, State, Table, Tuple};
use nodeportd::model::{FrontendKey, Protocol};

const FLOWS: u32 = 100_000;

fn entry(i: u32, now: Instant) -> Entry {
    let client = SocketAddr::from((
        [198, 18, (i >> 16) as u8, (i >> 8) as u8],
        (i & 0xff) as u16 + 1024,
    ));
    let tuple = Tuple {
        protocol: Protocol::Udp,
        client,
        node: SocketAddr::from(([198, 18, 255, 1], 30053)),
    };
    let frontend = FrontendKey {
        protocol: Protocol::Udp,
        node_port: 30053,
    };
    let endpoint = SocketAddr::from(([198, 19, 0, (i % 100) as u8], 53));
    let timeout = Duration::from_secs(30);
    Entry::new(tuple, frontend, endpoint, State::Unreplied, now, timeout)
}

fn full(now: Instant) -> Table<()> {
    let mut t = Table::new(FLOWS as usize + 1);
    for i in 0..FLOWS {
        t.insert(entry(i, now), (), true);
    }
    t
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("conntrack_100k");
    g.bench_function("insert_one_into_100k", |b| {
        b.iter_batched_ref(
            || full(now),
            |t| black_box(t.insert(entry(FLOWS, now), (), true)),
            BatchSize::LargeInput,
        )
    });
    let table = full(now);
    let probes: Vec<Tuple> = (0..1024)
        .map(|i| entry(i * 97 % FLOWS, now).tuple)
        .collect();
    let mut k = 0;
    g.bench_function("lookup_hit", |b| {
        b.iter(|| {
            k = (k + 1) & 1023;
            black_box(table.lookup(&probes[k]))
        })
    });
    let miss = entry(FLOWS + 7, now).tuple;
    g.bench_function("lookup_miss", |b| b.iter(|| black_box(table.lookup(&miss))));
    g.sample_size(10);
    g.bench_function("expire_all_100k", |b| {
        b.iter_batched_ref(
            || full(now),
            |t| {
                let later = now + Duration::from_secs(31);
                let mut n = 0;
                while let Some(id) = t.pop_expired(later) {
                    t.remove(id);
                    n += 1;
                }
                assert_eq!(n, FLOWS);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
