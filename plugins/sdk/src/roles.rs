//! The traits a plugin implements: [`Plugin`] (configure and forget per Service handle) and
//! one per role it plays ([`Admission`], [`Selection`], [`Affinity`]).

use crate::{AffinityKey, Backend, Flow, Service, Verdict};

/// What every plugin is: one value per plugin instance, configured per Service port.
///
/// `Default` because the SDK creates the value itself on first use; `'static` because it
/// lives for the whole instance.
pub trait Plugin: Default + 'static {
    /// Called once per Service handle before any other call with it, and again with a new
    /// handle when the Service's `nodeportd.dev/config.<plugin>` annotation changes (`config`
    /// is "" when the annotation is absent).
    ///
    /// Parse and validate here, not per flow: an `Err` keeps the Service off this plugin and
    /// is shown to the operator, so make it name the offending part of the config (first:
    /// the host keeps 1 KiB of it).
    fn configure(&mut self, service: &Service, config: &str) -> Result<(), String> {
        let _ = (service, config);
        Ok(())
    }

    /// The handle is gone (Service removed, or reconfigured under a new handle): drop every
    /// bit of state kept for it, or the instance leaks across Service churn.
    fn forget(&mut self, handle: u32) {
        let _ = handle;
    }
}

/// Role: whether a new flow is admitted at all. Runs before affinity and selection on
/// every new flow, so keep it cheap.
pub trait Admission: Plugin {
    /// Decides one new flow.
    fn admit(&mut self, flow: &Flow) -> Verdict;
}

/// Role: which endpoint takes a new flow.
pub trait Selection: Plugin {
    /// The Service port's endpoints, in the order [`Selection::select`] indexes; called after
    /// `configure` and whenever they change (possibly with an empty list). Precompute here:
    /// this runs on endpoint changes, `select` runs on every flow.
    fn set_backends(&mut self, handle: u32, backends: Vec<Backend>);

    /// An index into the last `set_backends` list for `flow.handle`, or `None` for "no
    /// endpoint" (the flow is refused).
    ///
    /// After a failed connect the host asks again for the same flow (same `flow.id`) with
    /// the index that failed in `excluded`. Returning an index that already failed for this
    /// flow, or one out of range, is a plugin failure.
    fn select(&mut self, flow: &Flow, excluded: Option<u32>) -> Option<u32>;
}

/// Role: which flows stick together. The host keeps the key -> endpoint table; the plugin
/// only says which key a flow belongs to.
pub trait Affinity: Plugin {
    /// A key for this flow, or `None` for "no affinity".
    fn affinity_key(&mut self, flow: &Flow) -> Option<AffinityKey>;
}
