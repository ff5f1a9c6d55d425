//! Helpers for plugins' native unit tests: endpoints, flows, and where a selection plugin
//! sends a run of flows. Every plugin's tests need the same fixtures.

use crate::{mix, Backend, Flow, Protocol, Selection, Service};

/// Endpoint number `i` (10.0.0.0 + i, port 8080).
pub fn backend(i: u32, ready: bool) -> Backend {
    Backend {
        addr: std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
        port: 8080,
        node_local: false,
        zone: String::new(),
        ready,
        serving: ready,
        terminating: false,
        weight: 1,
    }
}

/// A TCP flow of handle 1 whose host hash is `mix(n)`.
pub fn flow(n: u64) -> Flow {
    Flow {
        id: n,
        handle: 1,
        protocol: Protocol::Tcp,
        client: std::net::Ipv4Addr::new(192, 0, 2, 1).into(),
        client_port: 40000,
        node: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
        node_port: 30080,
        hash: mix(n),
    }
}

/// Service handle 1 of `test/svc` (TCP nodePort 30080), for `configure`.
pub fn service() -> Service {
    Service {
        handle: 1,
        namespace: "test".into(),
        name: "svc".into(),
        port_name: "http".into(),
        node_port: 30080,
        protocol: Protocol::Tcp,
        ipv6: false,
        local_traffic_policy: false,
    }
}

/// Checks the parts of the selection contract every selection plugin must keep: ready
/// endpoints first; retries (each passing the index that just failed) never repeat an
/// endpoint, reach every endpoint and leave the not-ready one last; no endpoints, an
/// unknown handle or a forgotten one give None.
pub fn check_selection_contract<S: Selection>() {
    let mut p = S::default();
    p.set_backends(
        1,
        vec![backend(1, false), backend(2, true), backend(3, false)],
    );
    for h in 0..100 {
        assert_eq!(p.select(&flow(h), None), Some(1));
    }
    // once the ready one failed, not-ready ones are still better than nothing
    assert!(matches!(p.select(&flow(7), Some(1)), Some(0 | 2)));

    let mut p = S::default();
    p.set_backends(1, (0..6).map(|i| backend(i, i != 2)).collect());
    for h in 0..200 {
        let f = flow(h);
        let mut tried = vec![];
        let mut excluded = None;
        while let Some(i) = p.select(&f, excluded) {
            assert!(
                !tried.contains(&i),
                "flow {h} got {i} again after {tried:?}"
            );
            tried.push(i);
            excluded = Some(i);
        }
        assert_eq!(tried.len(), 6, "flow {h}: {tried:?}");
        assert_eq!(tried[5], 2, "the not-ready endpoint comes last");
    }

    let mut p = S::default();
    assert_eq!(p.select(&flow(1), None), None);
    p.set_backends(1, vec![]);
    assert_eq!(p.select(&flow(1), None), None);
    p.set_backends(1, vec![backend(1, true)]);
    assert_eq!(p.select(&flow(1), None), Some(0));
    p.forget(1);
    assert_eq!(p.select(&flow(1), None), None);
}

/// The endpoint (its number in `ids`, not its index) a fresh `S` picks for each of `n`
/// flows, with endpoints `ids` (all ready) on handle 1.
pub fn assignment<S: Selection>(ids: &[u32], n: u64) -> Vec<u32> {
    let mut p = S::default();
    p.set_backends(1, ids.iter().map(|&i| backend(i, true)).collect());
    (0..n)
        .filter_map(|h| p.select(&flow(h), None))
        .map(|i| ids[i as usize])
        .collect()
}

/// A bounded fuzz pass over a plugin's config parsing: `cases` configs, built from the
/// characters and tokens configs are made of (and some arbitrary Unicode), each given to a
/// fresh `configure` and then to a reused one. Nothing may panic (a panic is a trap: the
/// Service loses its plugin on every worker), and a refusal must say something. Seeded, so
/// a failure names the config that caused it.
pub fn fuzz_configure<P: crate::Plugin>(cases: usize) {
    const TOKENS: &[&str] = &[
        "0",
        "1",
        "9",
        "255",
        "256",
        "65535",
        "4294967296",
        "-1",
        ".",
        ":",
        "::",
        "/",
        "/0",
        "/33",
        "/129",
        ",",
        ", ",
        "=",
        " ",
        "\t",
        "\n",
        "x",
        "k",
        "s",
        "ms",
        "per",
        "rate",
        "burst",
        "port",
        "mask",
        "v4",
        "v6",
        "198.18.0.0",
        "2001:db8::",
        "ffff",
        "é",
        "\u{0}",
        "\u{202e}",
        "🦀",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: deterministic, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut reused = P::default();
    for case in 0..cases {
        let len = (next() % 12) as usize;
        let config: String = (0..len)
            .map(|_| TOKENS[(next() % TOKENS.len() as u64) as usize])
            .collect();
        for p in [&mut P::default(), &mut reused] {
            if let Err(why) = p.configure(&service(), &config) {
                assert!(
                    !why.trim().is_empty(),
                    "case {case}: refusal of {config:?} says nothing"
                );
            }
        }
        reused.forget(1);
    }
}
