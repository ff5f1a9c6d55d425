//! Prometheus metrics, below everything: every other module may count here, this module
//! imports none of them. Label values are strings or closed enums that implement
//! [`LabelValue`] where they are defined (the dataplane's refusal reasons, the plugin
//! runtime's failure kinds). Handles are made once per frontend or plugin link, so workers
//! only touch atomics on the flow path (no label lookup, no lock).
//!
//! - [`frontend`]: per-frontend series (flows, bytes, refusals).
//! - [`plugin`]: per-(Service port, plugin) series, created on first use.
//! - [`histogram`]: a lock-free latency histogram for the flow path.

pub mod frontend;
pub mod histogram;
pub mod plugin;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use frontend::{DirectionLabels, ReasonLabels};
pub use frontend::{FrontendLabels, FrontendMetrics};
use plugin::PluginFamilies;
pub use plugin::{PluginMetrics, Role, DENY_REASONS};

/// A closed set of label values (an enum of its domain): every value is known up front, so
/// series are indexed by position instead of looked up by label on the flow path.
pub trait LabelValue: Copy + 'static {
    /// Every value, in index order.
    const ALL: &'static [Self];
    /// The label text.
    fn label(self) -> &'static str;
    /// The position in [`LabelValue::ALL`].
    fn index(self) -> usize;
}

/// Labels of per-Service series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// namespace/name.
    pub service: String,
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
    /// 1 while the Kubernetes API server answers (always 0 with the manifests directory).
    pub source_connected: Gauge,
    /// Unix time up to which the source's data is known current: the last moment the API
    /// server answered (0 with the manifests directory, which is always current).
    pub source_last_sync: Gauge,
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
        let m = Self {
            flows_active: Family::default(),
            flows: Family::default(),
            bytes: Family::default(),
            refused: Family::default(),
            sync_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            endpoint_changes: Family::default(),
            config_errors: Counter::default(),
            listeners: Gauge::default(),
            plugin: PluginFamilies::register(&mut registry),
            plugin_logs_dropped: Counter::default(),
            plugin_load_errors: Counter::default(),
            source_connected: Gauge::default(),
            source_last_sync: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("flows_active", "Flows open now", m.flows_active.clone());
        r.register("flows", "Flows started", m.flows.clone());
        r.register(
            "bytes",
            "Payload bytes relayed (direction in: client to endpoint)",
            m.bytes.clone(),
        );
        r.register(
            "flows_refused",
            "Flows refused or datagrams dropped, by reason",
            m.refused.clone(),
        );
        r.register(
            "sync_duration_seconds",
            "Time to program one source change",
            m.sync_duration.clone(),
        );
        r.register(
            "endpoint_changes",
            "Changes of a Service's endpoint set",
            m.endpoint_changes.clone(),
        );
        r.register(
            "config_errors",
            "Manifests or objects rejected",
            m.config_errors.clone(),
        );
        r.register("listeners", "nodePort sockets open", m.listeners.clone());
        r.register(
            "plugin_log_lines_dropped",
            "Plugin log lines over the per-instance rate limit",
            m.plugin_logs_dropped.clone(),
        );
        r.register(
            "plugin_load_errors",
            "Plugins that could not be loaded or configured",
            m.plugin_load_errors.clone(),
        );
        r.register(
            "source_connected",
            "1 while the Kubernetes API server answers",
            m.source_connected.clone(),
        );
        r.register(
            "source_last_sync_timestamp_seconds",
            "Unix time up to which the source's data is known current (API source)",
            m.source_last_sync.clone(),
        );
        Self { registry, ..m }
    }

    /// The series of a (Service port, plugin) pair (created on first use; the same atomics
    /// every time).
    pub fn plugin<K: LabelValue>(&self, fe: &FrontendLabels, plugin: &str) -> PluginMetrics<K> {
        PluginMetrics::new(&self.plugin, fe, plugin)
    }

    /// Removes the series of a (Service port, plugin) pair that no longer exists (`K`: the
    /// failure kinds, `C`: the disable causes).
    pub fn forget_plugin<K: LabelValue, C: LabelValue>(&self, fe: &FrontendLabels, plugin: &str) {
        PluginMetrics::<K>::forget::<C>(&self.plugin, fe, plugin);
    }

    /// Handles for a frontend (the same atomics every time it is rebuilt).
    pub fn frontend<R: LabelValue>(&self, l: &FrontendLabels) -> FrontendMetrics<R> {
        FrontendMetrics {
            active: handle(&self.flows_active, l),
            flows: handle(&self.flows, l),
            bytes_in: handle(&self.bytes, &l.direction("in")),
            bytes_out: handle(&self.bytes, &l.direction("out")),
            refused: R::ALL
                .iter()
                .map(|r| handle(&self.refused, &l.reason(r.label())))
                .collect(),
            reasons: std::marker::PhantomData,
        }
    }

    /// Removes a frontend's series once its Service is gone.
    pub fn forget<R: LabelValue>(&self, l: &FrontendLabels) {
        self.flows_active.remove(l);
        self.flows.remove(l);
        self.bytes.remove(&l.direction("in"));
        self.bytes.remove(&l.direction("out"));
        for r in R::ALL {
            self.refused.remove(&l.reason(r.label()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Copy, Clone, Debug, PartialEq)]
    enum Why {
        A,
        B,
    }

    impl LabelValue for Why {
        const ALL: &'static [Self] = &[Why::A, Why::B];
        fn label(self) -> &'static str {
            match self {
                Why::A => "a",
                Why::B => "b",
            }
        }
        fn index(self) -> usize {
            self as usize
        }
    }

    fn labels() -> FrontendLabels {
        FrontendLabels {
            service: "ns/web".into(),
            port: "http".into(),
            protocol: "tcp".into(),
            node_port: 30080,
        }
    }

    #[test]
    fn frontend_series_are_shared_and_forgotten() {
        let m = Metrics::new();
        let a = m.frontend::<Why>(&labels());
        let b = m.frontend::<Why>(&labels());
        a.refuse(Why::B);
        assert_eq!(b.refused(Why::B), 1, "rebuilt handles share the atomics");
        let text = m.encode();
        assert!(text.contains(r#"nodeportd_flows_refused_total{service="ns/web",port="http",protocol="tcp",node_port="30080",reason="b"} 1"#), "{text}");
        m.forget::<Why>(&labels());
        assert!(!m.encode().contains("ns/web"));
    }

    #[test]
    fn plugin_series_appear_on_first_use_and_go() {
        let m = Metrics::new();
        let p = m.plugin::<Why>(&labels(), "maglev");
        assert!(!m.encode().contains("maglev"), "no series before first use");
        p.fail(Why::A);
        p.call(Role::Selection);
        p.disable(Why::B);
        assert_eq!(p.failures(Why::A), 1);
        let text = m.encode();
        assert!(
            text.contains(r#"kind="a""#) && text.contains(r#"role="selection""#),
            "{text}"
        );
        let disables = r#"nodeportd_plugin_disables_total{service="ns/web",port="http",protocol="tcp",node_port="30080",plugin="maglev",cause="b"} 1"#;
        assert!(text.contains(disables), "{text}");
        m.forget_plugin::<Why, Why>(&labels(), "maglev");
        assert!(!m.encode().contains("maglev"));
    }
}
