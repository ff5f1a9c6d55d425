//! The Kubernetes API as a source, as kube-proxy takes it: one kube-rs watcher per kind
//! (Services, discovery.k8s.io/v1 EndpointSlices, this node's Node, and the plugin
//! ConfigMaps when `--plugin-dir` is given), each feeding a reflector store and telling the
//! sync loop per object. The watches run as tasks on the control plane's tokio runtime.
//!
//! Selection follows kube-proxy: Services without `service.kubernetes.io/service-proxy-name`
//! (or with it equal to `--proxy-name`), never headless ones; EndpointSlices that are not
//! headless. The daemon is ready once every kind has been listed once.
//!
//! While the API server cannot be reached, the watches retry with kube's backoff and the
//! dataplane keeps the last known state, unchanged: no object is dropped because a watch
//! failed. A probe of the API server (`/version`, every `PROBE_EVERY`) keeps
//! `nodeportd_source_connected` and `nodeportd_source_last_sync_timestamp_seconds` (the time
//! up to which the data is known current, which /healthz reports as `lastUpdated`).

pub mod events;
pub mod node;
pub mod objects;
pub mod plugin_files;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Sink, Source};
use crate::metrics::Metrics;
use crate::notice::Notice;
use watch::FirstListing;

/// How often the API server is probed for the staleness metric.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Longest one probe may take before the API server counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where plugins come from, with the API source.
#[derive(Clone, Debug)]
pub struct PluginConfigMaps {
    /// `--plugin-dir`: the files are written here.
    pub dir: PathBuf,
    /// The namespace whose ConfigMaps are read.
    pub namespace: String,
    /// Label selector of the ConfigMaps.
    pub selector: String,
}

/// What the API source is told by the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--kubeconfig` (None: KUBECONFIG, ~/.kube/config, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name.
    pub node: String,
    /// `--proxy-name`: the service-proxy-name label value served (None: unlabelled only).
    pub proxy_name: Option<String>,
    /// Take the zone from the Node object (false when `--node-zone` fixes it).
    pub node_zone: bool,
    /// Plugins by ConfigMap.
    pub plugins: Option<PluginConfigMaps>,
}

/// The label kube-proxy's `--proxy-name`-style selection reads.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Headless Services have no frontends; kube-proxy skips them and their slices.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The label selector for Services (kube-proxy's).
pub fn service_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        Some(name) => format!("{PROXY_NAME_LABEL}={name},!{HEADLESS_LABEL}"),
        None => format!("!{PROXY_NAME_LABEL},!{HEADLESS_LABEL}"),
    }
}

/// The Kubernetes API source.
pub struct KubeSource {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    runtime: Handle,
    notices: Option<UnboundedReceiver<Notice>>,
}

/// A client for the settings' API server: the kubeconfig file when given, else what kube
/// infers (KUBECONFIG, ~/.kube/config, in-cluster service account).
pub async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes API configuration (not in a cluster, no KUBECONFIG or --kubeconfig; or use --manifests DIR)",
        )?,
    };
    Client::try_from(config).context("cannot build the Kubernetes API client")
}

impl KubeSource {
    /// A client for the API server the settings name (on the current tokio runtime; nothing
    /// is asked of the server yet). What is sent to `notices` becomes Events on Services.
    pub async fn connect(
        settings: Settings,
        metrics: Arc<Metrics>,
        notices: UnboundedReceiver<Notice>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: client(settings.kubeconfig.as_ref()).await?,
            settings,
            metrics,
            runtime: Handle::current(),
            notices: Some(notices),
        })
    }
}

impl Source for KubeSource {
    fn start(mut self: Box<Self>, sink: Sink) -> anyhow::Result<()> {
        let s = &self.settings;
        let c = &self.client;
        let kinds = 3 + usize::from(s.plugins.is_some());
        let first = FirstListing::new(kinds, sink.clone());
        let rt = self.runtime.clone();
        // Plugin files first, so the first listing of Services finds them on disk.
        if let Some(p) = &s.plugins {
            let (_, run) = watch::watch(
                Api::<ConfigMap>::namespaced(c.clone(), &p.namespace),
                watcher::Config::default().labels(&p.selector),
                "ConfigMap",
                plugin_files::PluginFiles::new(p.dir.clone()),
                first.clone(),
            );
            rt.spawn(run);
        }
        let (services, run) = watch::watch(
            Api::<Service>::all(c.clone()),
            watcher::Config::default().labels(&service_selector(s.proxy_name.as_deref())),
            "Service",
            objects::Objects::<Service>::new(sink.clone()),
            first.clone(),
        );
        rt.spawn(run);
        let (_, run) = watch::watch(
            Api::<EndpointSlice>::all(c.clone()),
            watcher::Config::default().labels(&format!("!{HEADLESS_LABEL}")),
            "EndpointSlice",
            objects::Objects::<EndpointSlice>::new(sink.clone()),
            first.clone(),
        );
        rt.spawn(run);
        let (_, run) = watch::watch(
            Api::<Node>::all(c.clone()),
            watcher::Config::default().fields(&format!("metadata.name={}", s.node)),
            "Node",
            node::ThisNode::new(sink.clone(), s.node_zone),
            first,
        );
        rt.spawn(run);
        if let Some(rx) = self.notices.take() {
            rt.spawn(events::publish(c.clone(), s.node.clone(), services, rx));
        }
        rt.spawn(probe(c.clone(), self.metrics.clone()));
        tracing::info!(node = %s.node, services = %service_selector(s.proxy_name.as_deref()), plugins = ?s.plugins, "watching the Kubernetes API");
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Keeps the connection metrics: the API server answered within `PROBE_TIMEOUT` (data
/// current up to now), or not (the last good time stays). Runs as long as the runtime.
async fn probe(client: Client, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut up = None;
    loop {
        tick.tick().await;
        let ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await,
            Ok(Ok(_))
        );
        if ok {
            metrics.source_last_sync.set(unix_now());
        }
        metrics.source_connected.set(i64::from(ok));
        if up != Some(ok) {
            match ok {
                true => tracing::info!("Kubernetes API server reachable"),
                false => tracing::warn!(
                    "Kubernetes API server unreachable; serving the last known state"
                ),
            }
            up = Some(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_selected_as_kube_proxy_selects_them() {
        assert_eq!(
            service_selector(None),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        assert_eq!(
            service_selector(Some("nodeportd")),
            "service.kubernetes.io/service-proxy-name=nodeportd,!service.kubernetes.io/headless"
        );
    }
}
