//! What workers consult for a frontend: the frontend, its metric handles and the flow
//! policy its new flows go through. Built by the control side, swapped into workers whole.

use std::sync::Arc;

use super::refusal::Refusal;
use crate::metrics::FrontendMetrics;
use crate::model::{Backend, Family, Frontend};
use crate::plugin::Chain;
use crate::policy::{self, FlowPolicy};

/// A frontend as workers see it; immutable once built.
#[derive(Debug)]
pub struct Route {
    /// The frontend as built from the model.
    pub frontend: Frontend,
    /// Its counters.
    pub metrics: FrontendMetrics<Refusal>,
    /// The Service's WASM plugin chain (None: native kube-proxy behaviour).
    pub chain: Option<Arc<Chain>>,
    /// What new flows go through (the chain, or the native default).
    pub policy: Arc<dyn FlowPolicy>,
    /// Affinity entries of the previous route mean something else now (the ClientIP timeout
    /// changed, or a chain with an affinity plugin was replaced): workers drop them.
    pub forget_affinity: bool,
}

impl Route {
    /// The route of `frontend` running `chain`, replacing `previous`. The previous policy
    /// is kept when neither the chain nor the affinity changed, so plugin instances keep
    /// their per-Service state when only endpoints change.
    pub fn new(
        frontend: Frontend,
        metrics: FrontendMetrics<Refusal>,
        chain: Option<Arc<Chain>>,
        previous: Option<&Route>,
    ) -> Self {
        let same_chain = previous.is_some_and(|p| Chain::same(p.chain.as_ref(), chain.as_ref()));
        let same_affinity = previous.is_some_and(|p| p.frontend.affinity == frontend.affinity);
        let policy = match previous {
            Some(p) if same_chain && same_affinity => p.policy.clone(),
            _ => policy::for_frontend(&frontend, chain.clone()),
        };
        let forget_affinity = previous.is_some_and(|p| {
            !same_affinity
                || (!same_chain && p.chain.as_ref().is_some_and(|c| c.affinity.is_some()))
        });
        Self {
            frontend,
            metrics,
            chain,
            policy,
            forget_affinity,
        }
    }

    /// The endpoints new flows of `family` may use.
    pub fn backends(&self, family: Family) -> &Arc<[Backend]> {
        match family {
            Family::V4 => &self.frontend.v4,
            Family::V6 => &self.frontend.v6,
        }
    }

    /// Counts a refusal of this frontend's flow.
    pub fn refuse(&self, why: impl Into<Refusal>) {
        self.metrics.refuse(why.into());
    }
}
