//! A Service's plugin chain as a flow policy: admission links in chain order, the first
//! affinity link's key, the first selection link's choice, each call made on the worker's
//! own instance. Like Quilkin's `FilterChain`, the chain is itself a policy, with the native
//! policy inside it as the fallback. This is the one place a failure policy is applied: a
//! failed call under `open` lets the native default decide, under `closed` refuses the flow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{AffinityKey, FlowInfo, FlowPolicy, Native, PolicyState, Refused};
use crate::model::{Backend, FailurePolicy, Family};
use crate::plugin::setup::Done;
use crate::plugin::wire::{self, types};
use crate::plugin::{Chain, FailureKind, WorkerInstances};

/// The calls a plugin policy makes on its worker's plugin instances. The plugin runtime
/// implements it ([`WorkerInstances`]); unit tests script it. Failures come back as the kind
/// of failure, already counted and logged: what they mean for the flow is decided here.
pub trait PluginCalls: Send {
    /// Pending while an instance a new flow's calls need on this worker is being set up
    /// (the setups it lacks start here), so the flow waits before any link decides on it;
    /// `picks`: the list it is picked from next, here (see [`WorkerInstances::prepare`]).
    fn prepare(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        picks: Option<&Arc<[Backend]>>,
        now: std::time::Instant,
    ) -> Result<(), FailureKind>;
    /// Link `link` of `chain` admits or denies the flow.
    fn admit(
        &mut self,
        chain: &Arc<Chain>,
        link: usize,
        family: Family,
        flow: types::Flow,
        now: std::time::Instant,
    ) -> Result<types::Verdict, FailureKind>;
    /// The first affinity link's key (Ok(None): no key).
    fn affinity_key(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        flow: types::Flow,
        now: std::time::Instant,
    ) -> Result<Option<types::Affinity>, FailureKind>;
    /// The first selection link's index into `backends`, never one in `tried`.
    fn select(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        flow: types::Flow,
        backends: &Arc<[Backend]>,
        tried: &[SocketAddr],
        now: std::time::Instant,
    ) -> Result<Option<usize>, FailureKind>;
    /// A route running `chain` arrived on this worker.
    fn attach(&mut self, chain: &Chain);
    /// A route running `chain` left this worker.
    fn detach(&mut self, chain: &Chain);
    /// Instances alive.
    fn instances(&self) -> usize;
    /// A setup this worker started came back (see [`crate::plugin::setup`]).
    fn done(&mut self, done: Done, now: std::time::Instant);
    /// The flows parked on setups were asked again.
    fn settled(&mut self);
}

impl PluginCalls for WorkerInstances {
    fn prepare(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        picks: Option<&Arc<[Backend]>>,
        now: std::time::Instant,
    ) -> Result<(), FailureKind> {
        WorkerInstances::prepare(self, chain, family, picks, now)
    }
    fn admit(
        &mut self,
        chain: &Arc<Chain>,
        link: usize,
        family: Family,
        flow: types::Flow,
        now: std::time::Instant,
    ) -> Result<types::Verdict, FailureKind> {
        WorkerInstances::admit(self, chain, link, family, flow, now)
    }
    fn affinity_key(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        flow: types::Flow,
        now: std::time::Instant,
    ) -> Result<Option<types::Affinity>, FailureKind> {
        WorkerInstances::affinity_key(self, chain, family, flow, now)
    }
    fn select(
        &mut self,
        chain: &Arc<Chain>,
        family: Family,
        flow: types::Flow,
        backends: &Arc<[Backend]>,
        tried: &[SocketAddr],
        now: std::time::Instant,
    ) -> Result<Option<usize>, FailureKind> {
        WorkerInstances::select(self, chain, family, flow, backends, tried, now)
    }
    fn attach(&mut self, chain: &Chain) {
        WorkerInstances::attach(self, chain)
    }
    fn detach(&mut self, chain: &Chain) {
        WorkerInstances::detach(self, chain)
    }
    fn instances(&self) -> usize {
        WorkerInstances::instances(self)
    }
    fn done(&mut self, done: Done, now: std::time::Instant) {
        WorkerInstances::done(self, done, now)
    }
    fn settled(&mut self) {
        WorkerInstances::settled(self)
    }
}

/// Lifetime of a plugin's affinity entry when neither it nor the Service says.
const DEFAULT_AFFINITY: Duration = Duration::from_secs(10800);

/// The flow as the plugins of `chain` see it (built once per call, fixed-size data only).
pub fn record(chain: &Chain, flow: &FlowInfo) -> types::Flow {
    let handle = chain.handle(flow.family);
    let protocol = flow.frontend.protocol;
    wire::flow(handle, protocol, flow.client, flow.node, flow.id, flow.hash)
}

/// A resolved chain run as a policy.
#[derive(Debug)]
pub struct PluginPolicy {
    chain: Arc<Chain>,
    native: Native,
    /// Indexes of the links with the admission role, in chain order.
    admission: Vec<usize>,
}

impl PluginPolicy {
    /// The policy of `chain`, falling back to `native`.
    pub fn new(chain: Arc<Chain>, native: Native) -> Self {
        let admission = chain.admission_links().collect();
        Self {
            chain,
            native,
            admission,
        }
    }

    /// The chain it runs.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// What a failed plugin call means: under `open` the fallback stands, under `closed`
    /// the flow is refused. Every failure of every role is resolved here.
    fn on_failure<T>(&self, fallback: T) -> Result<T, Refused> {
        match self.chain.policy {
            FailurePolicy::Open => Ok(fallback),
            FailurePolicy::Closed => Err(Refused::PluginFailed),
        }
    }

    /// A call that gave no answer: Pending (its instance is being set up) parks the flow
    /// when the dataplane can wait for it; otherwise it is a failure like any other.
    fn unanswered<T>(
        &self,
        st: &PolicyState,
        kind: FailureKind,
        fallback: T,
    ) -> Result<T, Refused> {
        if kind == FailureKind::Pending && st.may_wait {
            return Err(Refused::Pending);
        }
        self.on_failure(fallback)
    }

    /// The affinity key a flow sticks by: the plugin's, else ClientIP's.
    fn key(&self, flow: &FlowInfo) -> Option<(AffinityKey, Duration)> {
        match flow.affinity {
            Some((k, ttl)) => Some((AffinityKey::Plugin(k), ttl)),
            None => self.native.key(flow),
        }
    }
}

impl FlowPolicy for PluginPolicy {
    fn admit(
        &self,
        st: &mut PolicyState,
        flow: FlowInfo,
        picks: Option<&Arc<[Backend]>>,
    ) -> Result<FlowInfo, Refused> {
        // Wait, if it must, before the first link decides: asked again, no link decides
        // twice. A flow that can no longer wait goes on, and each call still pending is a
        // failure of its link.
        if st.may_wait {
            let now = st.now;
            let ready = st.plugins.prepare(&self.chain, flow.family, picks, now);
            if ready.is_err() {
                return Err(Refused::Pending);
            }
        }
        let record = record(&self.chain, &flow);
        for &i in &self.admission {
            match st
                .plugins
                .admit(&self.chain, i, flow.family, record, st.now)
            {
                Ok(types::Verdict::Allow) => {}
                Ok(types::Verdict::Deny(_)) => return Err(Refused::Denied),
                Err(kind) => self.unanswered(st, kind, ())?,
            }
        }
        let key = st
            .plugins
            .affinity_key(&self.chain, flow.family, record, st.now);
        match key {
            Ok(Some(a)) => {
                let ttl = match a.ttl_seconds {
                    0 => self.native.client_ip_timeout().unwrap_or(DEFAULT_AFFINITY),
                    s => Duration::from_secs(s as u64),
                };
                Ok(flow.with_affinity(a.key, ttl))
            }
            Ok(None) => Ok(flow),
            Err(kind) => self.unanswered(st, kind, flow),
        }
    }

    fn placement(&self, flow: &FlowInfo) -> Option<u64> {
        match flow.affinity {
            Some(_) => Some(flow.hash),
            None => self.native.placement(flow),
        }
    }

    fn pick(
        &self,
        st: &mut PolicyState,
        flow: &FlowInfo,
        backends: &Arc<[Backend]>,
        tried: &[SocketAddr],
    ) -> Result<SocketAddr, Refused> {
        st.sticky(flow.frontend, self.key(flow), backends, tried, |st| {
            if self.chain.selection.is_none() {
                return Ok(Native::choose(st, flow, backends, tried));
            }
            let record = record(&self.chain, flow);
            let now = st.now;
            let picked = st
                .plugins
                .select(&self.chain, flow.family, record, backends, tried, now);
            match picked {
                Ok(idx) => Ok(idx),
                Err(kind) => {
                    self.unanswered(st, kind, ())?;
                    Ok(Native::choose(st, flow, backends, tried))
                }
            }
        })
    }

    fn decides_admission(&self) -> bool {
        self.chain.admission
    }

    fn attach(&self, st: &mut PolicyState) {
        st.plugins.attach(&self.chain);
    }

    fn detach(&self, st: &mut PolicyState) {
        st.plugins.detach(&self.chain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{backends, chain, flow, read, scripted, Script};

    /// A chain policy whose admission links are `admission` (no plugin loaded).
    fn policy(policy: FailurePolicy, admission: Vec<usize>, sel: bool) -> PluginPolicy {
        let c = chain(policy, Some(2), sel.then_some(3));
        PluginPolicy {
            chain: c,
            native: Native::new(None),
            admission,
        }
    }

    fn deny() -> types::Verdict {
        types::Verdict::Deny(types::DenyReason::Policy)
    }

    #[test]
    fn admission_runs_in_order_and_a_deny_stops_it() {
        let script = Script {
            admit: vec![(1, Ok(deny()))],
            ..Default::default()
        };
        let (mut st, s) = scripted(script);
        let p = policy(FailurePolicy::Open, vec![0, 1, 4], false);
        assert_eq!(p.admit(&mut st, flow(1), None).err(), Some(Refused::Denied));
        assert_eq!(
            read(&s).asked,
            vec![0, 1],
            "links after a deny are not asked"
        );
        let (mut st, s) = scripted(Script::default());
        assert!(p.admit(&mut st, flow(1), None).is_ok());
        assert_eq!(read(&s).asked, vec![0, 1, 4]);
    }

    #[test]
    fn a_flow_waits_for_its_setups_before_any_link_decides() {
        let (mut st, s) = scripted(Script {
            pending: 2,
            ..Default::default()
        });
        let p = policy(FailurePolicy::Closed, vec![0, 1], false);
        for _ in 0..2 {
            assert_eq!(
                p.admit(&mut st, flow(1), None).err(),
                Some(Refused::Pending)
            );
        }
        assert!(read(&s).asked.is_empty(), "no link decided a waiting flow");
        assert!(p.admit(&mut st, flow(1), None).is_ok());
        assert_eq!(read(&s).asked, vec![0, 1], "each link decides it once");
        // A flow that can wait no longer is not held: its links are called (a call still
        // pending is then a failure of its link, under the failure policy).
        let (mut st, s) = scripted(Script {
            pending: 1,
            ..Default::default()
        });
        st.may_wait = false;
        assert!(p.admit(&mut st, flow(1), None).is_ok());
        assert!(read(&s).prepared.is_empty());
        assert_eq!(read(&s).asked, vec![0, 1]);
        // UDP readies the pick with admission; TCP may be picked on another worker.
        let (mut st, s) = scripted(Script::default());
        assert!(st.admit_datagram(&p, flow(1), &backends(2)).is_ok());
        assert!(p.admit(&mut st, flow(2), None).is_ok());
        assert_eq!(read(&s).prepared, vec![true, false]);
    }

    #[test]
    fn failure_policy_open_skips_a_failed_link_closed_refuses() {
        let script = || Script {
            admit: vec![(0, Err(FailureKind::Trap))],
            key: Some(Err(FailureKind::Deadline)),
            ..Default::default()
        };
        let (mut st, s) = scripted(script());
        let open = policy(FailurePolicy::Open, vec![0, 1], false);
        let f = open.admit(&mut st, flow(1), None).expect("open admits");
        assert_eq!(f.affinity, None, "a failed affinity call gives no key");
        assert_eq!(read(&s).asked, vec![0, 1], "open asks the next link");
        let (mut st, s) = scripted(script());
        let closed = policy(FailurePolicy::Closed, vec![0, 1], false);
        assert_eq!(
            closed.admit(&mut st, flow(1), None).err(),
            Some(Refused::PluginFailed)
        );
        assert_eq!(read(&s).asked, vec![0]);
        // Admission passes but the affinity key fails: closed still refuses.
        let (mut st, _) = scripted(Script {
            key: Some(Err(FailureKind::Trap)),
            ..Default::default()
        });
        assert_eq!(
            closed.admit(&mut st, flow(1), None).err(),
            Some(Refused::PluginFailed)
        );
    }

    #[test]
    fn selection_failure_open_falls_back_closed_refuses() {
        let b = backends(4);
        let (mut st, _) = scripted(Script {
            select: vec![Err(FailureKind::BadAnswer)],
            ..Default::default()
        });
        let open = policy(FailurePolicy::Open, vec![], true);
        assert!(
            open.pick(&mut st, &flow(1), &b, &[]).is_ok(),
            "native decides"
        );
        let (mut st, _) = scripted(Script {
            select: vec![Err(FailureKind::BadAnswer)],
            ..Default::default()
        });
        let closed = policy(FailurePolicy::Closed, vec![], true);
        assert_eq!(
            closed.pick(&mut st, &flow(1), &b, &[]),
            Err(Refused::PluginFailed)
        );
    }

    #[test]
    fn selection_is_asked_again_with_what_failed() {
        let b = backends(4);
        let (mut st, s) = scripted(Script {
            select: vec![Ok(Some(2)), Ok(Some(0)), Ok(None)],
            ..Default::default()
        });
        let p = policy(FailurePolicy::Open, vec![], true);
        let f = flow(1);
        let first = p.pick(&mut st, &f, &b, &[]).expect("picked");
        assert_eq!(first, b[2].addr);
        let second = p.pick(&mut st, &f, &b, &[first]).expect("picked");
        assert_eq!(second, b[0].addr);
        assert_eq!(
            p.pick(&mut st, &f, &b, &[first, second]),
            Err(Refused::NoEndpoint),
            "a plugin that picks nothing leaves the flow without endpoint"
        );
        assert_eq!(
            read(&s).select_tried,
            vec![vec![], vec![first], vec![first, second]]
        );
    }

    #[test]
    fn plugin_affinity_key_hits_and_misses() {
        let b = backends(8);
        let key = types::Affinity {
            key: 42,
            ttl_seconds: 5,
        };
        let (mut st, s) = scripted(Script {
            key: Some(Ok(Some(key))),
            select: vec![Ok(Some(5)), Ok(Some(1)), Ok(Some(2))],
            ..Default::default()
        });
        let p = policy(FailurePolicy::Open, vec![], true);
        let a = p.admit(&mut st, flow(1), None).expect("admitted");
        let b2 = p.admit(&mut st, flow(2), None).expect("admitted");
        assert_eq!(a.affinity, Some((42, Duration::from_secs(5))));
        assert_eq!(a.hash, b2.hash, "flows of one key hash alike");
        assert_eq!(p.placement(&a), Some(a.hash));
        assert_eq!(p.pick(&mut st, &a, &b, &[]), Ok(b[5].addr));
        // Another client with the same key: a hit, selection is not asked.
        assert_eq!(p.pick(&mut st, &b2, &b, &[]), Ok(b[5].addr));
        assert_eq!(read(&s).select_tried.len(), 1);
        // A hit that failed to connect is not repeated; after the TTL it is a miss.
        assert_eq!(p.pick(&mut st, &b2, &b, &[b[5].addr]), Ok(b[1].addr));
        st.now += Duration::from_secs(6);
        assert_eq!(
            p.pick(&mut st, &b2, &b, &[]),
            Ok(b[2].addr),
            "expired: a miss"
        );
        assert_eq!(read(&s).select_tried.len(), 3, "misses ask selection");
    }

    #[test]
    fn udp_refusals_are_remembered_per_tuple() {
        let (mut st, s) = scripted(Script {
            admit: vec![(0, Ok(deny()))],
            ..Default::default()
        });
        let p = policy(FailurePolicy::Open, vec![0], false);
        for _ in 0..5 {
            assert_eq!(
                st.admit_datagram(&p, flow(1), &backends(2)).err(),
                Some(Refused::Denied)
            );
        }
        assert_eq!(
            read(&s).asked.len(),
            1,
            "asked once per flow, not per datagram"
        );
        st.now += Duration::from_secs(2);
        assert!(st.admit_datagram(&p, flow(1), &backends(2)).is_err());
        assert_eq!(
            read(&s).asked.len(),
            2,
            "asked again once the memory expired"
        );
    }

    #[test]
    fn attach_and_detach_follow_route_replacement() {
        let (mut st, s) = scripted(Script::default());
        let key = flow(1).frontend;
        let a: Arc<dyn FlowPolicy> = Arc::new(policy(FailurePolicy::Open, vec![], false));
        let b: Arc<dyn FlowPolicy> = Arc::new(policy(FailurePolicy::Open, vec![], false));
        st.replace(key, None, Some(&a), false);
        st.replace(key, Some(&a), Some(&a), false);
        assert_eq!(
            read(&s).attached,
            1,
            "the same policy again attaches nothing"
        );
        st.replace(key, Some(&a), Some(&b), false);
        assert_eq!(read(&s).attached, 1);
        st.replace(key, Some(&b), None, false);
        assert_eq!(read(&s).attached, 0);
    }
}
