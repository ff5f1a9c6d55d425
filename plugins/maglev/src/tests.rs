use super::*;
use nodeport_plugin::testing::{backend, flow};

fn assignment(ids: &[u32], n: u64) -> Vec<u32> {
    nodeport_plugin::testing::assignment::<Maglev>(ids, n)
}

#[test]
fn spreads_flows_evenly() {
    let got = assignment(&[1, 2, 3, 4, 5], 20_000);
    for id in 1..=5 {
        let n = got.iter().filter(|&&x| x == id).count();
        assert!((3500..4500).contains(&n), "endpoint {id} got {n} of 20000");
    }
}

#[test]
fn removing_an_endpoint_moves_its_flows_and_few_others() {
    let ids: Vec<u32> = (1..=20).collect();
    let before = assignment(&ids, 20_000);
    let fewer: Vec<u32> = ids.iter().copied().filter(|&i| i != 7).collect();
    let after = assignment(&fewer, 20_000);
    let others_moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != 7 && b != a)
        .count();
    assert!(after.iter().all(|&a| a != 7));
    // Maglev's disruption beyond the removed endpoint's own flows is small (a few percent).
    assert!(
        others_moved < 20_000 / 20,
        "{others_moved} other flows moved"
    );
}

#[test]
fn order_of_the_list_does_not_matter() {
    assert_eq!(
        assignment(&[1, 2, 3, 4], 2000),
        assignment(&[4, 3, 2, 1], 2000)
    );
}

#[test]
fn prefers_ready_endpoints() {
    let mut p = Maglev::default();
    p.set_backends(
        1,
        vec![backend(1, false), backend(2, true), backend(3, false)],
    );
    for h in 0..100 {
        assert_eq!(p.select(&flow(h), None), Some(1));
    }
    assert!(matches!(p.select(&flow(7), Some(1)), Some(0 | 2)));
    // none ready: all of them serve
    p.set_backends(1, vec![backend(1, false), backend(2, false)]);
    let got: std::collections::BTreeSet<_> = (0..100).map(|h| p.select(&flow(h), None)).collect();
    assert_eq!(got.len(), 2);
}

#[test]
fn retries_never_repeat_and_cover_every_endpoint() {
    let mut p = Maglev::default();
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
}

#[test]
fn no_endpoints_or_unknown_handle_is_none() {
    let mut p = Maglev::default();
    assert_eq!(p.select(&flow(1), None), None);
    p.set_backends(1, vec![]);
    assert_eq!(p.select(&flow(1), None), None);
    p.set_backends(1, vec![backend(1, true)]);
    assert_eq!(p.select(&flow(1), None), Some(0));
    p.forget(1);
    assert_eq!(p.select(&flow(1), None), None);
}
