//! The flow-policy seam: every new flow goes through one [`FlowPolicy`] — admit, place, pick
//! (again after a failed connect, never repeating an endpoint), and a notice when it ends.
//! The native policy (kube-proxy's uniform random plus ClientIP affinity) and a Service's
//! plugin chain both implement it, so the dataplane never asks "native or plugin". Policies
//! are immutable and shared by every worker (they ride in the route); what changes per flow
//! lives in each worker's own [`PolicyState`], so no decision takes a lock.
//!
//! - [`flow`]: the flow record policies decide on.
//! - [`native`]: kube-proxy's behaviour.
//! - [`plugins`]: a Service's WASM chain as a policy; the failure policy is applied there only.
//! - [`affinity`]: session affinity entries, shared by both.
//! - [`random`]: the uniform choice.
//! - [`denied`]: UDP tuples admission refused, so a plugin is asked once per flow.
//!
//! Data flows one way: the dataplane calls policies, policies call the plugin runtime.

pub mod affinity;
pub mod denied;
pub mod flow;
pub mod native;
pub mod plugins;
pub mod random;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{Backend, Frontend, FrontendKey};
use crate::plugin::Chain;
pub use affinity::{AffinityKey, AffinityTable};
pub use flow::{mix, FlowInfo};
pub use native::Native;
pub use plugins::{PluginCalls, PluginPolicy};
pub use random::Random;

/// Why a policy refused a flow.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No usable endpoint is left.
    NoEndpoint,
    /// An admission plugin said no.
    Denied,
    /// A plugin failed and the Service's failure policy is closed.
    PluginFailed,
    /// Not a refusal: a plugin instance the flow needs is being set up off the worker. The
    /// dataplane parks the flow and asks again once the setup is back. Only given while
    /// [`PolicyState::may_wait`] is set; otherwise the wait is a failure (failure policy).
    Pending,
}

/// How a flow ended, for policies that learn from outcomes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Both sides finished (FIN both ways) or the UDP flow idled out.
    Closed,
    /// A side reset, a relay error, or the daemon aborted it.
    Reset,
    /// No endpoint accepted the connection.
    ConnectFailed,
}

/// A finished flow: what it was sent to and what it carried.
#[derive(Copy, Clone, Debug)]
pub struct FlowEnd {
    /// The endpoint it ended on.
    pub endpoint: SocketAddr,
    /// How it ended.
    pub ending: Ending,
    /// How long it lived.
    pub duration: Duration,
    /// Bytes client -> endpoint.
    pub bytes_in: u64,
    /// Bytes endpoint -> client.
    pub bytes_out: u64,
}

/// What a new flow goes through. Implementations are immutable and shared by every worker;
/// each call gets the calling worker's [`PolicyState`].
pub trait FlowPolicy: Send + Sync + fmt::Debug {
    /// Whether the flow may start, on the worker that received it, before it is placed. May
    /// give the flow an affinity key (it then hashes as its key does). `picks`: the endpoints
    /// the flow is picked from next on this worker, when it is (UDP), so that whatever the
    /// pick needs is readied with admission; None when it may be picked elsewhere (TCP).
    fn admit(
        &self,
        st: &mut PolicyState,
        flow: FlowInfo,
        picks: Option<&Arc<[Backend]>>,
    ) -> Result<FlowInfo, Refused>;

    /// A hash that must decide which worker carries the flow (so one worker's affinity table
    /// sees every flow of a key), or None to let the dataplane balance load.
    fn placement(&self, flow: &FlowInfo) -> Option<u64>;

    /// An endpoint among `backends`, never one in `tried` (those failed to connect for this
    /// flow, in order).
    fn pick(
        &self,
        st: &mut PolicyState,
        flow: &FlowInfo,
        backends: &Arc<[Backend]>,
        tried: &[SocketAddr],
    ) -> Result<SocketAddr, Refused>;

    /// The flow ended. The default ignores it.
    fn flow_ended(&self, _st: &mut PolicyState, _flow: &FlowInfo, _end: &FlowEnd) {}

    /// Whether a refusal by `admit` is the policy's own decision about this client (so the
    /// UDP path may remember it for a while instead of asking per datagram).
    fn decides_admission(&self) -> bool {
        false
    }

    /// The policy became active on this worker (a route carrying it arrived).
    fn attach(&self, _st: &mut PolicyState) {}

    /// The policy left this worker (its route was replaced by one with another policy, or
    /// removed): per-worker state it kept is released.
    fn detach(&self, _st: &mut PolicyState) {}
}

/// The policy a frontend runs: its plugin chain when it has one, else the native default.
pub fn for_frontend(fe: &Frontend, chain: Option<Arc<Chain>>) -> Arc<dyn FlowPolicy> {
    let native = Native::new(fe.affinity);
    match chain {
        Some(chain) => Arc::new(PluginPolicy::new(chain, native)),
        None => Arc::new(native),
    }
}

/// One worker's policy state: the clock of its current round, its random generator, its
/// affinity entries, its plugin instances and its memory of refused UDP tuples.
pub struct PolicyState {
    /// When the worker's current round began (one clock read per round).
    pub now: Instant,
    /// Whether the flow being decided can wait for a plugin setup (the dataplane has room to
    /// park it, and it has not waited too long already): see [`Refused::Pending`].
    pub may_wait: bool,
    random: Random,
    affinity: AffinityTable,
    plugins: Box<dyn PluginCalls>,
    denied: denied::Denied,
}

impl PolicyState {
    /// State for worker `index`; seeded per process and per worker, so neither the workers of
    /// one node nor the nodes of a cluster (nor one node across restarts) pick in lockstep:
    /// with a fixed seed every node sent its n-th flow to the same endpoint.
    pub fn new(index: usize, plugins: Box<dyn PluginCalls>, now: Instant) -> Self {
        Self {
            now,
            may_wait: true,
            random: Random::new(
                fastrand::u64(..) ^ (index as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
            ),
            affinity: AffinityTable::default(),
            plugins,
            denied: denied::Denied::default(),
        }
    }

    /// Admits a new UDP flow: a tuple the policy refused within the last second is refused
    /// again without asking, so a plugin decides once per flow, not once per datagram.
    pub fn admit_datagram(
        &mut self,
        policy: &dyn FlowPolicy,
        flow: FlowInfo,
        picks: &Arc<[Backend]>,
    ) -> Result<FlowInfo, Refused> {
        let key = (flow.client, flow.node);
        if policy.decides_admission() && self.denied.contains(&key, self.now) {
            return Err(Refused::Denied);
        }
        let admitted = policy.admit(self, flow, Some(picks));
        let refused = matches!(admitted, Err(why) if why != Refused::Pending);
        if refused && policy.decides_admission() {
            self.denied.insert(key, self.now);
        }
        admitted
    }

    /// A route's policy replaced another on this worker: plugin instances follow the new
    /// one, and when the control plane says so (affinity changed meaning) the frontend's
    /// affinity entries are dropped.
    pub fn replace(
        &mut self,
        key: FrontendKey,
        old: Option<&Arc<dyn FlowPolicy>>,
        new: Option<&Arc<dyn FlowPolicy>>,
        forget_affinity: bool,
    ) {
        let same = match (old, new) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some(p) = new {
                p.attach(self);
            }
            if let Some(p) = old {
                p.detach(self);
            }
        }
        if forget_affinity {
            self.affinity.forget_frontend(key);
        }
    }

    /// Periodic clean-up of expired affinity entries and refused tuples.
    pub fn sweep(&mut self) {
        self.affinity.sweep(self.now);
        self.denied.sweep(self.now);
    }

    /// Plugin instances alive on this worker.
    pub fn plugin_instances(&self) -> usize {
        self.plugins.instances()
    }

    /// A plugin setup this worker started came back; its parked flows may be asked again.
    pub fn setup_done(&mut self, done: crate::plugin::setup::Done) {
        self.plugins.done(done, self.now);
    }

    /// The flows parked on setups were asked again.
    pub fn settled(&mut self) {
        self.plugins.settled();
    }

    /// The affinity layer every policy shares. With a key, a live entry wins if its
    /// endpoint is still offered and has not failed for this flow; otherwise `choose` picks
    /// an index and the key's entry is recorded (each new flow refreshes it, as kube-proxy's
    /// `recent` match does).
    fn sticky(
        &mut self,
        frontend: FrontendKey,
        key: Option<(AffinityKey, Duration)>,
        backends: &Arc<[Backend]>,
        tried: &[SocketAddr],
        choose: impl FnOnce(&mut Self) -> Result<Option<usize>, Refused>,
    ) -> Result<SocketAddr, Refused> {
        if backends.is_empty() {
            return Err(Refused::NoEndpoint);
        }
        if let Some((k, ttl)) = key {
            if let Some(addr) = self.affinity.lookup(frontend, k, self.now) {
                if !tried.contains(&addr) && backends.iter().any(|b| b.addr == addr) {
                    self.affinity.record(frontend, k, addr, ttl, self.now);
                    return Ok(addr);
                }
            }
        }
        let idx = choose(self)?.ok_or(Refused::NoEndpoint)?;
        let addr = backends.get(idx).ok_or(Refused::NoEndpoint)?.addr;
        if let Some((k, ttl)) = key {
            self.affinity.record(frontend, k, addr, ttl, self.now);
        }
        Ok(addr)
    }
}

#[cfg(test)]
pub(crate) mod testing;
