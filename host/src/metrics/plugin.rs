//! Per-(Service port, plugin) series: calls and their latency by role, denials by reason,
//! failures by kind. Series are created on first use and removed with the frontend's chain.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::histogram::LatencyHistogram;
use super::{handle, FrontendLabels, LabelValue};

/// Labels of per-(Service port, plugin) series; the last label differs by family.
macro_rules! plugin_labels {
    ($name:ident, $last:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub(super) struct $name {
            service: String,
            port: String,
            protocol: String,
            node_port: u16,
            plugin: String,
            $last: &'static str,
        }
    };
}
plugin_labels!(PluginRoleLabels, role);
plugin_labels!(PluginReasonLabels, reason);
plugin_labels!(PluginKindLabels, kind);
plugin_labels!(PluginCauseLabels, cause);

/// The label set of a [`PluginBase`] with a last label.
macro_rules! plugin_label {
    ($base:expr, $ty:ident, $last:ident, $v:expr) => {
        $ty {
            service: $base.service.clone(),
            port: $base.port.clone(),
            protocol: $base.protocol.clone(),
            node_port: $base.node_port,
            plugin: $base.plugin.clone(),
            $last: $v,
        }
    };
}

/// The labels every series of one (Service port, plugin) pair shares.
#[derive(Clone, Debug)]
struct PluginBase {
    service: String,
    port: String,
    protocol: String,
    node_port: u16,
    plugin: String,
}

impl PluginBase {
    fn new(fe: &FrontendLabels, plugin: &str) -> Self {
        Self {
            service: fe.service.clone(),
            port: fe.port.clone(),
            protocol: fe.protocol.clone(),
            node_port: fe.node_port,
            plugin: plugin.to_string(),
        }
    }
}

/// The plugin metric families (cheap clones of shared handles).
#[derive(Clone, Debug, Default)]
pub(super) struct PluginFamilies {
    calls: Family<PluginRoleLabels, Counter>,
    latency: Family<PluginRoleLabels, LatencyHistogram>,
    denials: Family<PluginReasonLabels, Counter>,
    failures: Family<PluginKindLabels, Counter>,
    disables: Family<PluginCauseLabels, Counter>,
}

impl PluginFamilies {
    /// Registers the plugin families in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Self {
        let f = Self::default();
        registry.register(
            "plugin_calls",
            "Per-flow plugin calls by role",
            f.calls.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Per-flow plugin call latency by role (one call in 8 is timed)",
            f.latency.clone(),
        );
        registry.register(
            "plugin_denials",
            "Flows an admission plugin refused, by reason",
            f.denials.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that failed, by kind; the Service's failure policy decided the flow",
            f.failures.clone(),
        );
        registry.register(
            "plugin_disables",
            "Times a plugin was disabled on a worker after failing, by cause (streak, rate, probation)",
            f.disables.clone(),
        );
        f
    }
}

/// Plugin roles, in the order of `PluginMetrics` arrays.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// admit
    Admission,
    /// affinity-key
    Affinity,
    /// select
    Selection,
}

impl Role {
    /// Every role, in the order a new flow meets them.
    pub const ALL: [Role; 3] = [Self::Admission, Self::Affinity, Self::Selection];

    /// The per-flow function of the role in the contract.
    pub fn call(self) -> &'static str {
        match self {
            Self::Admission => "admit",
            Self::Affinity => "affinity-key",
            Self::Selection => "select",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Admission => "admission",
            Self::Affinity => "affinity",
            Self::Selection => "selection",
        }
    }
}

/// Labels of denials, in the order of the WIT `deny-reason` enum.
pub const DENY_REASONS: [&str; 4] = [
    "source_not_allowed",
    "rate_limited",
    "over_capacity",
    "policy",
];

/// One (Service port, plugin) pair's series, each created on first use: 10,000 Services with
/// two plugins would otherwise hold 340,000 mostly-zero series. After the first use a series
/// is a lock-free `OnceLock` read plus atomics; only its creation takes the family's lock.
/// `K` is the plugin runtime's closed set of failure kinds.
#[derive(Debug)]
pub struct PluginMetrics<K>(Arc<PluginSeries>, PhantomData<K>);

impl<K> Clone for PluginMetrics<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), PhantomData)
    }
}

#[derive(Debug)]
struct PluginSeries {
    base: PluginBase,
    families: PluginFamilies,
    calls: [OnceLock<Counter>; 3],
    latency: [OnceLock<LatencyHistogram>; 3],
    denials: [OnceLock<Counter>; 4],
    failures: Box<[OnceLock<Counter>]>,
}

impl<K: LabelValue> PluginMetrics<K> {
    /// The series of `plugin` on the frontend labelled `fe`, in `families`.
    pub(super) fn new(families: &PluginFamilies, fe: &FrontendLabels, plugin: &str) -> Self {
        Self(
            Arc::new(PluginSeries {
                base: PluginBase::new(fe, plugin),
                families: families.clone(),
                calls: Default::default(),
                latency: Default::default(),
                denials: Default::default(),
                failures: K::ALL.iter().map(|_| OnceLock::new()).collect(),
            }),
            PhantomData,
        )
    }

    /// Removes every series of `plugin` on `fe` from `f` (`C`: the disable causes).
    pub(super) fn forget<C: LabelValue>(f: &PluginFamilies, fe: &FrontendLabels, plugin: &str) {
        let base = PluginBase::new(fe, plugin);
        for r in Role::ALL {
            f.calls
                .remove(&plugin_label!(base, PluginRoleLabels, role, r.label()));
            f.latency
                .remove(&plugin_label!(base, PluginRoleLabels, role, r.label()));
        }
        for r in DENY_REASONS {
            f.denials
                .remove(&plugin_label!(base, PluginReasonLabels, reason, r));
        }
        for k in K::ALL {
            f.failures
                .remove(&plugin_label!(base, PluginKindLabels, kind, k.label()));
        }
        for c in C::ALL {
            f.disables
                .remove(&plugin_label!(base, PluginCauseLabels, cause, c.label()));
        }
    }

    fn calls(&self, role: Role) -> &Counter {
        let s = &self.0;
        s.calls[role as usize].get_or_init(|| {
            handle(
                &s.families.calls,
                &plugin_label!(s.base, PluginRoleLabels, role, role.label()),
            )
        })
    }

    /// Counts a call of `role`.
    pub fn call(&self, role: Role) {
        self.calls(role).inc();
    }

    /// Counts a call of `role` that was timed: it took `ns` nanoseconds.
    pub fn timed_call(&self, role: Role, ns: u64) {
        self.calls(role).inc();
        let s = &self.0;
        s.latency[role as usize]
            .get_or_init(|| {
                handle(
                    &s.families.latency,
                    &plugin_label!(s.base, PluginRoleLabels, role, role.label()),
                )
            })
            .observe_ns(ns);
    }

    /// Counts a denial (`reason` indexes DENY_REASONS).
    pub fn deny(&self, reason: usize) {
        let s = &self.0;
        if let (Some(cell), Some(label)) = (s.denials.get(reason), DENY_REASONS.get(reason)) {
            cell.get_or_init(|| {
                handle(
                    &s.families.denials,
                    &plugin_label!(s.base, PluginReasonLabels, reason, label),
                )
            })
            .inc();
        }
    }

    /// Counts a failure.
    pub fn fail(&self, kind: K) {
        let s = &self.0;
        if let Some(cell) = s.failures.get(kind.index()) {
            cell.get_or_init(|| {
                handle(
                    &s.families.failures,
                    &plugin_label!(s.base, PluginKindLabels, kind, kind.label()),
                )
            })
            .inc();
        }
    }

    /// Counts a disable and why. Rare (at most once per backoff period per worker), so the
    /// series is looked up in its family each time.
    pub fn disable<C: LabelValue>(&self, cause: C) {
        let s = &self.0;
        let labels = plugin_label!(s.base, PluginCauseLabels, cause, cause.label());
        handle(&s.families.disables, &labels).inc();
    }

    /// Failures of one kind so far.
    pub fn failures(&self, kind: K) -> u64 {
        self.0
            .failures
            .get(kind.index())
            .and_then(|c| c.get())
            .map_or(0, |c| c.get())
    }
}
