//! kube-proxy's policy: every flow is admitted, endpoints are equally likely, and with
//! sessionAffinity ClientIP a client's new flows go where its last one went while the entry
//! lives (timeoutSeconds, refreshed by each new flow).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{AffinityKey, FlowInfo, FlowPolicy, PolicyState, Refused};
use crate::model::Backend;

/// The native default; also what a plugin chain falls back to under failure policy open.
#[derive(Clone, Debug)]
pub struct Native {
    /// sessionAffinity ClientIP timeout (None: no affinity).
    client_ip: Option<Duration>,
}

impl Native {
    /// The native policy of a Service with this ClientIP affinity timeout.
    pub fn new(client_ip: Option<Duration>) -> Self {
        Self { client_ip }
    }

    /// The ClientIP affinity timeout, if any.
    pub fn client_ip_timeout(&self) -> Option<Duration> {
        self.client_ip
    }

    /// The ClientIP affinity key of a flow, when the Service has ClientIP affinity.
    pub(super) fn key(&self, flow: &FlowInfo) -> Option<(AffinityKey, Duration)> {
        self.client_ip
            .map(|t| (AffinityKey::Client(flow.client.ip()), t))
    }

    /// The uniform choice, never an endpoint in `tried`.
    pub(super) fn choose(
        st: &mut PolicyState,
        flow: &FlowInfo,
        backends: &[Backend],
        tried: &[SocketAddr],
    ) -> Option<usize> {
        st.random.select(flow, backends, tried)
    }
}

impl FlowPolicy for Native {
    fn admit(
        &self,
        _st: &mut PolicyState,
        flow: FlowInfo,
        _picks: Option<&Arc<[Backend]>>,
    ) -> Result<FlowInfo, Refused> {
        Ok(flow)
    }

    fn placement(&self, flow: &FlowInfo) -> Option<u64> {
        use std::hash::BuildHasher;
        self.client_ip
            .map(|_| rustc_hash::FxBuildHasher.hash_one(flow.client.ip()))
    }

    fn pick(
        &self,
        st: &mut PolicyState,
        flow: &FlowInfo,
        backends: &Arc<[Backend]>,
        tried: &[SocketAddr],
    ) -> Result<SocketAddr, Refused> {
        st.sticky(flow.frontend, self.key(flow), backends, tried, |st| {
            Ok(Self::choose(st, flow, backends, tried))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{backends, flow, state};

    #[test]
    fn admits_everything_and_spreads() {
        let mut st = state();
        let p = Native::new(None);
        let b = backends(3);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let f = p.admit(&mut st, flow(i), None).expect("admitted");
            seen.insert(p.pick(&mut st, &f, &b, &[]).expect("picked"));
        }
        assert_eq!(seen.len(), 3, "uniform choice reaches every endpoint");
        assert_eq!(
            p.placement(&flow(1)),
            None,
            "no affinity: the dataplane places"
        );
    }

    #[test]
    fn two_nodes_workers_of_the_same_index_do_not_pick_in_lockstep() {
        // Two states for worker 0 stand for worker 0 of two nodes (or of one node before and
        // after a restart): the sequences of picks must differ.
        let p = Native::new(None);
        let b = backends(16);
        let picks = |mut st: PolicyState| -> Vec<SocketAddr> {
            (0..32)
                .map(|i| {
                    let f = p.admit(&mut st, flow(i), None).expect("admitted");
                    p.pick(&mut st, &f, &b, &[]).expect("picked")
                })
                .collect()
        };
        assert_ne!(picks(state()), picks(state()));
    }

    #[test]
    fn retries_never_repeat_an_endpoint() {
        let mut st = state();
        let p = Native::new(None);
        let b = backends(3);
        let f = flow(1);
        let mut tried = Vec::new();
        for _ in 0..3 {
            let a = p.pick(&mut st, &f, &b, &tried).expect("one left");
            assert!(!tried.contains(&a), "{a} was tried already");
            tried.push(a);
        }
        assert_eq!(p.pick(&mut st, &f, &b, &tried), Err(Refused::NoEndpoint));
        assert_eq!(
            p.pick(&mut st, &f, &backends(0), &[]),
            Err(Refused::NoEndpoint)
        );
    }

    #[test]
    fn client_ip_affinity_hits_then_expires() {
        let mut st = state();
        let p = Native::new(Some(Duration::from_secs(10)));
        let b = backends(8);
        let first = p.pick(&mut st, &flow(1), &b, &[]).expect("picked");
        // Another flow of the same client (other port) sticks.
        for port in 0..20 {
            let again = p.pick(&mut st, &flow(1).from_port(41000 + port), &b, &[]);
            assert_eq!(again, Ok(first));
        }
        // A failed sticky endpoint is not repeated on retry.
        let retry = p.pick(&mut st, &flow(1), &b, &[first]).expect("another");
        assert_ne!(retry, first);
        // The same client hashes to the same worker.
        assert_eq!(p.placement(&flow(1)), p.placement(&flow(1).from_port(9)));
        // After the timeout, the entry is gone: any endpoint may come (the retry recorded
        // `retry`, so a hit would return it; 40 fresh picks all equal to it is ~1/8^40).
        st.now += Duration::from_secs(11);
        let fresh: std::collections::HashSet<_> = (0..40)
            .map(|_| {
                st.now += Duration::from_secs(11);
                p.pick(&mut st, &flow(1), &b, &[]).expect("picked")
            })
            .collect();
        assert!(fresh.len() > 1, "expired entries must not stick");
    }
}
