use super::*;
use nodeport_plugin::testing::{backend, flow};

fn assignment(ids: &[u32], n: u64) -> Vec<u32> {
    nodeport_plugin::testing::assignment::<ConsistentHash>(ids, n)
}

#[test]
fn removing_an_endpoint_moves_only_its_flows() {
    let before = assignment(&[1, 2, 3, 4, 5, 6, 7, 8], 4000);
    let after = assignment(&[1, 2, 3, 5, 6, 7, 8], 4000);
    for (b, a) in before.iter().zip(&after) {
        if *b != 4 {
            assert_eq!(a, b);
        }
    }
}

#[test]
fn adding_an_endpoint_takes_only_its_share() {
    let before = assignment(&[1, 2, 3, 4], 4000);
    let after = assignment(&[4, 3, 2, 1, 5], 4000); // order does not matter either
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(after.iter().zip(&before).all(|(a, b)| a == b || *a == 5));
    assert!(
        (600..1000).contains(&moved),
        "{moved} of 4000 moved, expected about 800"
    );
}

#[test]
fn spreads_flows_evenly() {
    let got = assignment(&[1, 2, 3, 4, 5], 10_000);
    for id in 1..=5 {
        let n = got.iter().filter(|&&x| x == id).count();
        assert!((1700..2300).contains(&n), "endpoint {id} got {n} of 10000");
    }
}

#[test]
fn prefers_ready_endpoints() {
    let mut p = ConsistentHash::default();
    p.set_backends(
        1,
        vec![backend(1, false), backend(2, true), backend(3, false)],
    );
    for h in 0..100 {
        assert_eq!(p.select(&flow(h), None), Some(1));
    }
    // once the ready one failed, not-ready ones are still better than nothing
    assert!(matches!(p.select(&flow(7), Some(1)), Some(0 | 2)));
}

#[test]
fn retries_walk_the_ranking_without_repeats() {
    let mut p = ConsistentHash::default();
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
        assert_eq!(tried.len(), 6);
        assert_eq!(tried[5], 2, "the not-ready endpoint comes last");
    }
}

#[test]
fn no_endpoints_or_unknown_handle_is_none() {
    let mut p = ConsistentHash::default();
    assert_eq!(p.select(&flow(1), None), None);
    p.set_backends(1, vec![]);
    assert_eq!(p.select(&flow(1), None), None);
    p.set_backends(1, vec![backend(1, true)]);
    assert_eq!(p.select(&flow(1), None), Some(0));
    p.forget(1);
    assert_eq!(p.select(&flow(1), None), None);
}
