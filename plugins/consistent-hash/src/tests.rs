use super::*;

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
fn keeps_the_selection_contract() {
    nodeport_plugin::testing::check_selection_contract::<ConsistentHash>();
}

#[test]
fn random_configs_never_panic() {
    nodeport_plugin::testing::fuzz_configure::<ConsistentHash>(20_000);
}
