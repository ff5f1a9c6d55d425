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
fn with_no_ready_endpoint_all_serve() {
    let mut p = Maglev::default();
    p.set_backends(1, vec![backend(1, false), backend(2, false)]);
    let got: std::collections::BTreeSet<_> = (0..100).map(|h| p.select(&flow(h), None)).collect();
    assert_eq!(got.len(), 2);
}

#[test]
fn keeps_the_selection_contract() {
    nodeport_plugin::testing::check_selection_contract::<Maglev>();
}

#[test]
fn random_configs_never_panic() {
    nodeport_plugin::testing::fuzz_configure::<Maglev>(20_000);
}
