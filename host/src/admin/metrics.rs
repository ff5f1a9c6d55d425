//! Prometheus metrics. Families live here; each frontend gets its own handles once, when it is
//! programmed, so workers only touch atomics on the flow path (no label lookup, no lock).

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::histogram::LatencyHistogram;
use crate::model::Frontend;
use crate::plugin::FailureKind;

/// Labels of per-frontend series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontendLabels {
    /// namespace/name.
    pub service: String,
    /// Service port name.
    pub port: String,
    /// tcp or udp.
    pub protocol: String,
    /// The nodePort.
    pub node_port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    service: String,
    port: String,
    protocol: String,
    node_port: u16,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    service: String,
    port: String,
    protocol: String,
    node_port: u16,
    reason: &'static str,
}

/// Labels of per-(Service port, plugin) series; the last label differs by family.
macro_rules! plugin_labels {
    ($name:ident, $last:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $name {
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
    fn new(fe: &Frontend, plugin: &str) -> Self {
        Self {
            service: fe.service.to_string(),
            port: fe.port_name.clone(),
            protocol: fe.key.protocol.as_str().to_string(),
            node_port: fe.key.node_port,
            plugin: plugin.to_string(),
        }
    }
}

/// The plugin metric families (cheap clones of shared handles).
#[derive(Clone, Debug, Default)]
struct PluginFamilies {
    calls: Family<PluginRoleLabels, Counter>,
    latency: Family<PluginRoleLabels, LatencyHistogram>,
    denials: Family<PluginReasonLabels, Counter>,
    failures: Family<PluginKindLabels, Counter>,
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
    const ALL: [Role; 3] = [Self::Admission, Self::Affinity, Self::Selection];

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
#[derive(Clone, Debug)]
pub struct PluginMetrics(Arc<PluginSeries>);

#[derive(Debug)]
struct PluginSeries {
    base: PluginBase,
    families: PluginFamilies,
    calls: [OnceLock<Counter>; 3],
    latency: [OnceLock<LatencyHistogram>; 3],
    denials: [OnceLock<Counter>; 4],
    failures: [OnceLock<Counter>; 7],
}

impl PluginMetrics {
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

    fn failure_counter(&self, kind: FailureKind) -> &Counter {
        let s = &self.0;
        s.failures[kind as usize].get_or_init(|| {
            handle(
                &s.families.failures,
                &plugin_label!(s.base, PluginKindLabels, kind, kind.as_str()),
            )
        })
    }

    /// Counts a failure.
    pub fn fail(&self, kind: FailureKind) {
        self.failure_counter(kind).inc();
    }

    /// Failures of one kind so far.
    pub fn failures(&self, kind: FailureKind) -> u64 {
        self.0.failures[kind as usize].get().map_or(0, |c| c.get())
    }
}

/// Labels of per-Service series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// namespace/name.
    pub service: String,
}

/// Why a flow was refused or dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No usable endpoint.
    NoEndpoint,
    /// Every connect attempt failed or timed out.
    ConnectFailed,
    /// The conntrack shard is full.
    TableFull,
    /// A datagram could not be delivered (socket buffer full, endpoint unreachable).
    Dropped,
    /// An admission plugin refused the flow.
    Denied,
    /// A plugin failed and the Service's failure policy is closed.
    PluginFailed,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Self::NoEndpoint,
        Self::ConnectFailed,
        Self::TableFull,
        Self::Dropped,
        Self::Denied,
        Self::PluginFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::NoEndpoint => "no_endpoint",
            Self::ConnectFailed => "connect_failed",
            Self::TableFull => "table_full",
            Self::Dropped => "dropped",
            Self::Denied => "denied",
            Self::PluginFailed => "plugin_failed",
        }
    }
}

/// A frontend's metric handles (atomics shared with the registry).
#[derive(Clone, Debug, Default)]
pub struct FrontendMetrics {
    /// Flows open now.
    pub active: Gauge,
    /// Flows started.
    pub flows: Counter,
    /// Bytes client -> endpoint.
    pub bytes_in: Counter,
    /// Bytes endpoint -> client.
    pub bytes_out: Counter,
    refused: [Counter; 6],
}

impl FrontendMetrics {
    /// Counts a refused flow or dropped datagram.
    pub fn refuse(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }
}

/// A family member's handle. The family's read guard must be gone before the next
/// get_or_create may take its write lock, so it is dropped here, not at the caller's `;`.
fn handle<S, M>(family: &Family<S, M>, labels: &S) -> M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone + Default,
{
    let guard = family.get_or_create(labels);
    let m = guard.clone();
    drop(guard);
    m
}

/// Every metric nodeportd exports.
pub struct Metrics {
    registry: Registry,
    flows_active: Family<FrontendLabels, Gauge>,
    flows: Family<FrontendLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    /// Time from a source change to the dataplane having it.
    pub sync_duration: Histogram,
    /// Endpoint set changes per Service.
    pub endpoint_changes: Family<ServiceLabels, Counter>,
    /// Objects or files rejected.
    pub config_errors: Counter,
    /// nodePort sockets open.
    pub listeners: Gauge,
    plugin: PluginFamilies,
    /// Plugin log lines dropped by the per-instance rate limit.
    pub plugin_logs_dropped: Counter,
    /// Plugins that failed to load, by reload attempt.
    pub plugin_load_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nodeportd");
        let flows_active = Family::<FrontendLabels, Gauge>::default();
        let flows = Family::<FrontendLabels, Counter>::default();
        let bytes = Family::<DirectionLabels, Counter>::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let sync_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let endpoint_changes = Family::<ServiceLabels, Counter>::default();
        let config_errors = Counter::default();
        let listeners = Gauge::default();
        registry.register("flows_active", "Flows open now", flows_active.clone());
        registry.register("flows", "Flows started", flows.clone());
        registry.register(
            "bytes",
            "Payload bytes relayed (direction in: client to endpoint)",
            bytes.clone(),
        );
        registry.register(
            "flows_refused",
            "Flows refused or datagrams dropped, by reason",
            refused.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Time to program one source change",
            sync_duration.clone(),
        );
        registry.register(
            "endpoint_changes",
            "Changes of a Service's endpoint set",
            endpoint_changes.clone(),
        );
        registry.register(
            "config_errors",
            "Manifests or objects rejected",
            config_errors.clone(),
        );
        registry.register("listeners", "nodePort sockets open", listeners.clone());
        let plugin_calls = Family::<PluginRoleLabels, Counter>::default();
        let plugin_latency = Family::<PluginRoleLabels, LatencyHistogram>::default();
        let plugin_denials = Family::<PluginReasonLabels, Counter>::default();
        let plugin_failures = Family::<PluginKindLabels, Counter>::default();
        let plugin_logs_dropped = Counter::default();
        let plugin_load_errors = Counter::default();
        registry.register(
            "plugin_calls",
            "Per-flow plugin calls by role",
            plugin_calls.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Per-flow plugin call latency by role (one call in 8 is timed)",
            plugin_latency.clone(),
        );
        registry.register(
            "plugin_denials",
            "Flows an admission plugin refused, by reason",
            plugin_denials.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that failed, by kind; the Service's failure policy decided the flow",
            plugin_failures.clone(),
        );
        registry.register(
            "plugin_log_lines_dropped",
            "Plugin log lines over the per-instance rate limit",
            plugin_logs_dropped.clone(),
        );
        registry.register(
            "plugin_load_errors",
            "Plugins that could not be loaded or configured",
            plugin_load_errors.clone(),
        );
        Self {
            registry,
            flows_active,
            flows,
            bytes,
            refused,
            sync_duration,
            endpoint_changes,
            config_errors,
            listeners,
            plugin: PluginFamilies {
                calls: plugin_calls,
                latency: plugin_latency,
                denials: plugin_denials,
                failures: plugin_failures,
            },
            plugin_logs_dropped,
            plugin_load_errors,
        }
    }

    /// The series of a (Service port, plugin) pair (created on first use; the same atomics
    /// every time).
    pub fn plugin(&self, fe: &Frontend, plugin: &str) -> PluginMetrics {
        PluginMetrics(Arc::new(PluginSeries {
            base: PluginBase::new(fe, plugin),
            families: self.plugin.clone(),
            calls: Default::default(),
            latency: Default::default(),
            denials: Default::default(),
            failures: Default::default(),
        }))
    }

    /// Removes the series of a (Service port, plugin) pair that no longer exists.
    pub fn forget_plugin(&self, fe: &Frontend, plugin: &str) {
        let base = PluginBase::new(fe, plugin);
        let f = &self.plugin;
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
        for k in FailureKind::ALL {
            f.failures
                .remove(&plugin_label!(base, PluginKindLabels, kind, k.as_str()));
        }
    }

    fn labels(fe: &Frontend) -> FrontendLabels {
        FrontendLabels {
            service: fe.service.to_string(),
            port: fe.port_name.clone(),
            protocol: fe.key.protocol.as_str().to_string(),
            node_port: fe.key.node_port,
        }
    }

    fn direction(l: &FrontendLabels, direction: &'static str) -> DirectionLabels {
        DirectionLabels {
            service: l.service.clone(),
            port: l.port.clone(),
            protocol: l.protocol.clone(),
            node_port: l.node_port,
            direction,
        }
    }

    fn reason(l: &FrontendLabels, reason: Refusal) -> ReasonLabels {
        ReasonLabels {
            service: l.service.clone(),
            port: l.port.clone(),
            protocol: l.protocol.clone(),
            node_port: l.node_port,
            reason: reason.label(),
        }
    }

    /// Handles for a frontend (the same atomics every time it is rebuilt).
    pub fn frontend(&self, fe: &Frontend) -> FrontendMetrics {
        let l = Self::labels(fe);
        FrontendMetrics {
            active: handle(&self.flows_active, &l),
            flows: handle(&self.flows, &l),
            bytes_in: handle(&self.bytes, &Self::direction(&l, "in")),
            bytes_out: handle(&self.bytes, &Self::direction(&l, "out")),
            refused: Refusal::ALL.map(|r| handle(&self.refused, &Self::reason(&l, r))),
        }
    }

    /// Removes a frontend's series once its Service is gone.
    pub fn forget(&self, fe: &Frontend) {
        let l = Self::labels(fe);
        self.flows_active.remove(&l);
        self.flows.remove(&l);
        self.bytes.remove(&Self::direction(&l, "in"));
        self.bytes.remove(&Self::direction(&l, "out"));
        for r in Refusal::ALL {
            self.refused.remove(&Self::reason(&l, r));
        }
    }

    /// Text exposition for /metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
