//! One plugin version on one worker: its instance (here, or lent to a setup thread), its
//! backoff, and how a failed call or setup is booked (counted, logged at most once a second,
//! fed to the backoff, a disable announced as a notice for an Event on the Service), and what
//! the instance lacks for a call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff::{Backoff, Cause, Outcome};
use super::chain::Chain;
use super::contract::Plugin;
use super::failure::{Failure, FailureKind};
use super::runtime::Runtime;
use super::setup::{Done, Live, Step};
use super::wire;
use crate::model::{Backend, Family};
use crate::notice::{Notice, Reason};

/// Failure log lines per plugin and worker: at most one per this period.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// One plugin version on one worker.
pub(super) struct Slot {
    pub(super) plugin: Arc<Plugin>,
    /// Routes of this worker whose chain uses it.
    pub(super) routes: usize,
    /// The instance, when it is here and made.
    pub(super) live: Option<Live>,
    /// The instance is on a setup thread.
    pub(super) away: bool,
    /// The setup that just came back failed so: calls until the worker has re-run its parked
    /// flows get this failure (already counted) instead of starting another setup.
    pub(super) setup_failed: Option<FailureKind>,
    /// Handles to forget with the next setup.
    pub(super) forget: Vec<u32>,
    /// Failure counting and disable periods.
    pub(super) backoff: Backoff,
    logged: Option<Instant>,
    suppressed: u64,
}

impl Slot {
    /// A plugin no route uses yet, enabled, without an instance.
    pub(super) fn new(plugin: Arc<Plugin>) -> Self {
        Self {
            plugin,
            routes: 0,
            live: None,
            away: false,
            setup_failed: None,
            forget: Vec::new(),
            backoff: Backoff::new(),
            logged: None,
            suppressed: 0,
        }
    }
}

/// Books a setup's outcome on its slot: the instance comes back, and a failure is counted
/// and fed to the backoff under the Service port that asked (a `forget` nobody asked for is
/// only logged). Returns the failure's kind.
pub(super) fn book(
    slot: &mut Slot,
    rt: Option<&Runtime>,
    worker: usize,
    done: Done,
    now: Instant,
) -> Option<FailureKind> {
    slot.live = done.live;
    let failure = done.failure?;
    let kind = failure.kind;
    match done.blame {
        Some(b) => {
            let link = &b.chain.links[b.link];
            link.metrics.fail(kind);
            if let Some(cause) = failed(slot, rt, worker, &b.chain, failure, now) {
                link.metrics.disable(cause);
            }
        }
        None => {
            tracing::debug!(plugin = %slot.plugin.name, worker, %failure, "forgetting a handle failed; the instance is re-made");
            slot.live = None;
        }
    }
    Some(kind)
}

/// Books a failure: a trapped instance is dropped, the backoff decides whether the plugin is
/// disabled, and the failure is logged (a disable always, others once a second per slot).
pub(super) fn failed(
    slot: &mut Slot,
    rt: Option<&Runtime>,
    worker: usize,
    chain: &Chain,
    failure: Failure,
    now: Instant,
) -> Option<Cause> {
    if failure.kind.poisons() || failure.kind == FailureKind::Instantiate {
        slot.live = None;
    }
    let plugin = &*slot.plugin.name;
    let service = chain.service_name();
    match slot.backoff.record_failure(now) {
        Outcome::Disabled(backoff, cause) => {
            tracing::error!(%service, plugin, worker, failure = %failure, ?backoff, cause = cause.as_str(),
                "plugin keeps failing; disabled on this worker, the Service's failure policy decides meanwhile");
            if let Some(rt) = rt {
                rt.config().notices.send(Notice {
                    namespace: chain.namespace.clone(),
                    name: chain.name.clone(),
                    reason: Reason::PluginDisabled,
                    message: format!(
                        // No worker in the text: every worker's disable is one notice, so
                        // the Event rate limit folds them together.
                        "plugin {plugin} disabled for {backoff:?} on a worker after {}: {failure}; failure policy {:?} decides meanwhile",
                        cause.as_str(),
                        chain.policy
                    ),
                });
            }
            slot.live = None;
            slot.logged = Some(now);
            return Some(cause);
        }
        Outcome::Counted if slot.logged.is_none_or(|t| now >= t + LOG_EVERY) => {
            tracing::warn!(%service, plugin, worker, failure = %failure, suppressed = slot.suppressed,
                "plugin call failed; the Service's failure policy decides this flow");
            slot.logged = Some(now);
            slot.suppressed = 0;
        }
        Outcome::Counted => slot.suppressed += 1,
    }
    None
}

/// What `slot`'s instance lacks for a call of `chain`'s `family` handle: None when it is
/// ready (the common case: one map lookup), else the steps (an empty list when only the
/// instance itself is missing).
pub(super) fn needs(
    slot: &Slot,
    chain: &Chain,
    family: Family,
    backends: Option<&Arc<[Backend]>>,
) -> Option<Vec<Step>> {
    let handle = chain.handle(family);
    // None = handle never configured; Some(list) = the list last sent (the map holds that
    // Arc, so its address cannot be reused by another list).
    let sent = (slot.live.as_ref()).and_then(|l| l.handles.get(&handle));
    let list = backends.filter(|_| slot.plugin.roles.selection);
    let stale = list.filter(|b| {
        !sent
            .and_then(Option::as_ref)
            .is_some_and(|s| Arc::ptr_eq(s, b))
    });
    if slot.live.is_some() && sent.is_some() && stale.is_none() {
        return None;
    }
    let mut steps = Vec::with_capacity(2);
    if sent.is_none() {
        let link = (chain.links.iter()).find(|l| Arc::ptr_eq(&l.plugin, &slot.plugin));
        steps.push(Step::Configure {
            handle,
            service: wire::service(chain, family),
            config: link.map(|l| l.config.clone()).unwrap_or_default(),
        });
    }
    if let Some(b) = stale {
        steps.push(Step::Backends {
            handle,
            list: b.clone(),
        });
    }
    Some(steps)
}
