//! `nodeportd run`: wires source (a manifests directory, or the Kubernetes API) -> sync ->
//! dataplane, the admin server and signals.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use super::{PreserveSource, RelayMode, RunArgs};
use crate::admin::health;
use crate::admin::server::{self, AdminState};
use crate::dataplane::listener::{self, BindAddresses};
use crate::dataplane::transparent::Transparent;
use crate::dataplane::{Dataplane, DataplaneConfig};
use crate::metrics::Metrics;
use crate::model::store::Store;
use crate::model::{Family, NodeInfo};
use crate::notice::{Notice, Notices};
use crate::source::kube::{self, KubeSource};
use crate::source::manifests::ManifestDir;
use crate::source::{Sink, Source};
use crate::sync::{Event, Sync};
use tokio::sync::mpsc::UnboundedReceiver;

/// Raises the open-file limit to its hard maximum: every flow holds two to six descriptors.
fn raise_nofile() {
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// What the API source takes from the command line.
fn kube_settings(args: &RunArgs) -> kube::Settings {
    kube::Settings {
        kubeconfig: args.kubeconfig.clone(),
        node: args.node_name.clone(),
        proxy_name: args.proxy_name.clone(),
        node_zone: args.node_zone.is_none(),
        plugins: args.plugin_dir.as_ref().map(|dir| kube::PluginConfigMaps {
            dir: dir.clone(),
            namespace: args.plugin_namespace.clone(),
            selector: args.plugin_configmap_selector.clone(),
        }),
    }
}

/// Source preservation as `--preserve-source` asks (None: endpoints see the node address).
fn preserve_source(mode: PreserveSource) -> anyhow::Result<Option<Transparent>> {
    let t = match mode {
        PreserveSource::Off => None,
        PreserveSource::On => {
            Some(Transparent::install().map_err(|e| anyhow::anyhow!("--preserve-source on: {e}"))?)
        }
        PreserveSource::Auto => match Transparent::install() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "client source not preserved for externalTrafficPolicy Local (endpoints see the node address)");
                None
            }
        },
    };
    if t.is_some() {
        tracing::info!("client source preserved for externalTrafficPolicy Local");
    }
    Ok(t)
}

/// The plugin runtime when `--plugin-dir` is given; workers tell `notices` when they disable
/// a plugin.
fn plugin_runtime(
    args: &RunArgs,
    metrics: &Metrics,
    notices: &Notices,
) -> anyhow::Result<Option<Arc<crate::plugin::Runtime>>> {
    match &args.plugin_dir {
        Some(dir) if !dir.is_dir() => {
            anyhow::bail!("--plugin-dir {}: not a directory", dir.display())
        }
        Some(_) => {
            let rt = crate::plugin::Runtime::new(
                crate::plugin::RuntimeConfig {
                    notices: notices.clone(),
                    ..args.plugin_limits.runtime()
                },
                metrics.plugin_logs_dropped.clone(),
            )
            .context("cannot start the plugin runtime")?;
            tracing::info!(memory = %rt.memory_layout(), "plugin runtime ready");
            Ok(Some(rt))
        }
        None => Ok(None),
    }
}

/// The dataplane's settings from the command line.
fn dataplane_config(
    args: &RunArgs,
    bind: &BindAddresses,
    transparent: Option<&Transparent>,
    plugins: Option<Arc<crate::plugin::Runtime>>,
) -> anyhow::Result<DataplaneConfig> {
    let workers = args
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    Ok(DataplaneConfig {
        workers,
        connect_timeout: args.connect_timeout,
        connect_attempts: args.connect_attempts.max(1),
        udp_timeout: args.udp_timeout,
        udp_stream_timeout: args.udp_stream_timeout,
        tcp_idle_timeout: args.tcp_idle_timeout,
        max_flows_per_worker: args.max_flows_per_worker.max(1),
        splice: args.relay == RelayMode::Splice,
        pipe_bytes: args.splice_pipe_kib as usize * 1024,
        bind: bind.clone(),
        preserve_source_v4: transparent.is_some(),
        preserve_source_v6: transparent.is_some_and(Transparent::covers_v6),
        node_ips: if transparent.is_some() {
            listener::node_ips()?
        } else {
            Vec::new()
        },
        plugins,
    })
}

/// Where the admin servers listen (the deprecated single address overrides both).
fn admin_addresses(args: &RunArgs) -> server::Addresses {
    match args.admin_address {
        Some(one) => {
            tracing::warn!(address = %one, "--admin-address is deprecated: it serves /metrics and /conntrack beside health; use --healthz-bind-address and --metrics-bind-address");
            server::Addresses {
                health: one,
                metrics: one,
            }
        }
        None => server::Addresses {
            health: args.healthz_bind_address,
            metrics: args.metrics_bind_address,
        },
    }
}

/// The source the command line names: a manifests directory, or the Kubernetes API with the
/// receiver of what should become Events on Services.
enum Wanted {
    Manifests(std::path::PathBuf),
    Api(UnboundedReceiver<Notice>),
}

/// Starts connecting to the source `wanted` names.
async fn source(
    args: &RunArgs,
    metrics: Arc<Metrics>,
    wanted: Wanted,
) -> anyhow::Result<Box<dyn Source>> {
    match wanted {
        Wanted::Manifests(dir) => Ok(Box::new(ManifestDir::new(dir))),
        Wanted::Api(rx) => {
            let s = KubeSource::connect(kube_settings(args), metrics, rx).await?;
            Ok(Box::new(s))
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; returns once flows are drained.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    raise_nofile();
    if let Some(dir) = args.manifests.as_ref().filter(|d| !d.is_dir()) {
        anyhow::bail!("--manifests {}: not a directory", dir.display());
    }
    // With the API source, what should become Events on Services is sent there.
    let (notices, wanted) = match &args.manifests {
        Some(dir) => (Notices::default(), Wanted::Manifests(dir.clone())),
        None => {
            let (n, rx) = Notices::channel();
            (n, Wanted::Api(rx))
        }
    };
    let bind =
        BindAddresses::resolve(&args.nodeport_addresses).context("cannot read node addresses")?;
    let transparent = preserve_source(args.preserve_source)?;
    let metrics = Arc::new(Metrics::new());
    let plugins = plugin_runtime(&args, &metrics, &notices)?;
    let cfg = dataplane_config(&args, &bind, transparent.as_ref(), plugins.clone())?;
    tracing::info!(workers = cfg.workers, node = %args.node_name, manifests = ?args.manifests, plugins = ?args.plugin_dir, "starting nodeportd");
    let ready = Arc::new(AtomicBool::new(false));
    let dataplane =
        Dataplane::start(cfg, metrics.clone()).context("cannot start dataplane workers")?;
    let admin = AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        conntrack: dataplane.conntrack(),
    };
    let node = NodeInfo {
        name: args.node_name.clone(),
        zone: args.node_zone.clone(),
    };
    let store = Store::new(args.nodeport_range.0..=args.nodeport_range.1, node);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let health = {
        let _guard = runtime.enter();
        let mut addrs = bind.of(Family::V4).to_vec();
        addrs.extend_from_slice(bind.of(Family::V6));
        health::spawn(addrs)
    };
    let (tx, rx) = crossbeam_channel::unbounded::<Event>();
    let mut sync = Sync::new(store, dataplane, metrics.clone(), ready)
        .with_health(health)
        .with_notices(notices);
    if let (Some(rt), Some(dir)) = (plugins, &args.plugin_dir) {
        let probed = tx.clone();
        let probed = Arc::new(move || {
            let _ = probed.send(Event::PluginsChanged);
        });
        let directory = crate::plugin::Directory::new(rt, dir.clone(), metrics.clone(), probed)
            .context("cannot start the plugin probe threads")?;
        directory
            .watch(tx.clone(), || Event::PluginsChanged)
            .with_context(|| format!("cannot watch --plugin-dir {}", dir.display()))?;
        sync = sync.with_plugins(directory);
    }
    let sync_thread = std::thread::Builder::new()
        .name("nodeportd-sync".into())
        .spawn(move || sync.run(rx))?;
    runtime.block_on(serve(args, admin, metrics, wanted, tx, sync_thread))
}

/// The main thread's part: the admin servers, the source, and signals; on SIGTERM the sync
/// loop drains the dataplane and this returns once it has.
async fn serve(
    args: RunArgs,
    admin: AdminState,
    metrics: Arc<Metrics>,
    wanted: Wanted,
    tx: crossbeam_channel::Sender<Event>,
    sync_thread: std::thread::JoinHandle<()>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(server::serve(admin_addresses(&args), admin, async {
        let _ = stop_rx.await;
    }));
    // Sources start once the admin addresses are ours, so a taken admin port fails fast.
    tokio::task::yield_now().await;
    if admin_task.is_finished() {
        let _ = tx.send(Event::Shutdown(std::time::Duration::ZERO));
        return admin_task.await?;
    }
    // The source sends straight into the sync loop's channel.
    let started = source(&args, metrics, wanted)
        .await
        .and_then(|s| s.start(Sink::new(tx.clone())));
    if let Err(e) = started {
        let _ = tx.send(Event::Shutdown(std::time::Duration::ZERO));
        return Err(e);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        r = admin_task => { let _ = tx.send(Event::Shutdown(std::time::Duration::ZERO)); return r?; }
    }
    let _ = tx.send(Event::Shutdown(args.shutdown_grace));
    tokio::task::spawn_blocking(move || sync_thread.join())
        .await?
        .ok();
    let _ = stop_tx.send(());
    tracing::info!("stopped");
    Ok(())
}
