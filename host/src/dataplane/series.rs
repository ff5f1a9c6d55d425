//! The one owner of a frontend's metric series, its own and its plugins': the dataplane,
//! which programs the frontend's route, forgets them when the route stops running them.
//! (They are made where their handles are first needed, by get-or-create: the frontend's in
//! `Dataplane::upsert`, a plugin link's when the plugin directory resolves the chain.)

use super::refusal::Refusal;
use crate::metrics::Metrics;
use crate::model::Frontend;
use crate::plugin::backoff::Cause;
use crate::plugin::{Chain, FailureKind};

/// Forgets the series of plugins in `old` that `new` does not run for `fe`.
pub(super) fn switch_plugins(
    metrics: &Metrics,
    fe: &Frontend,
    old: Option<&Chain>,
    new: Option<&Chain>,
) {
    let runs = |name: &str| new.is_some_and(|n| n.links.iter().any(|l| *l.plugin.name == *name));
    for link in old.into_iter().flat_map(|c| &c.links) {
        if !runs(&link.plugin.name) {
            metrics.forget_plugin::<FailureKind, Cause>(&fe.into(), &link.plugin.name);
        }
    }
}

/// `fe`, which ran `chain`, is no longer programmed: every series of it goes.
pub(super) fn forget(metrics: &Metrics, fe: &Frontend, chain: Option<&Chain>) {
    metrics.forget::<Refusal>(&fe.into());
    switch_plugins(metrics, fe, chain, None);
}
