//! The plugin directory (`--plugin-dir`): plugins are found by name as `<name>.wasm`, loaded
//! on first use, and reloaded when their file changes. It also resolves a Service port's
//! annotated chain into a [`Chain`], once each plugin's `configure` accepted the port's
//! config on a probe instance ([`super::probe`]: on probe threads, outcomes remembered per
//! plugin digest and config), so a refused config never reaches the workers and a plugin
//! whose `configure` hangs never holds up the control plane.
//!
//! Loading (compiling a component takes time in proportion to its code, and a file can be
//! large) runs on load threads ([`super::offload`]) too: a Service whose plugin is still
//! loading waits as it waits for a probe, and the control plane goes on with every other
//! Service meanwhile.
//!
//! A plugin that fails to (re)load leaves every Service on what it had: the previous version
//! of that plugin, or the native default if there was none. The reason is logged and counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;

use super::chain::{Chain, Link};
use super::contract::Plugin;
use super::offload::Offload;
use super::probe::{Checked, Prober};
use super::runtime::Runtime;
use super::wire;
use crate::metrics::Metrics;
use crate::model::Frontend;

/// How long file events settle before plugins are re-read (a copy in progress is not loaded).
const SETTLE: Duration = Duration::from_millis(50);
/// Load threads: a plugin that takes long to compile leaves the other thread to the rest.
const LOAD_THREADS: usize = 2;
/// The largest plugin file read. Compile time and memory grow with the code, and the file is
/// read on the control-plane thread: a runaway file (a log written to the wrong name, a
/// hostile upload) is refused by its size instead of holding a load thread for minutes. A
/// whole interpreter compiled to a component (JavaScript, Python) fits.
const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// A file's (modified, length), what tells that it changed.
type Stamp = Option<(SystemTime, u64)>;

/// A file's bytes, to be loaded on a load thread.
struct Load {
    name: String,
    stamp: Stamp,
    bytes: Vec<u8>,
}

/// What a load thread made of a [`Load`].
struct Loaded {
    name: String,
    stamp: Stamp,
    result: Result<Arc<Plugin>, String>,
}

#[derive(Default)]
struct Entry {
    /// The file's stamp when last read.
    stamp: Stamp,
    /// A load of the file is on a load thread (one at a time: its end re-reads the file, so
    /// a change made during a load is loaded next).
    loading: bool,
    /// Last version that loaded.
    good: Option<Arc<Plugin>>,
    /// Why the last read did not load, if it did not.
    error: Option<String>,
}

/// Why a frontend's chain cannot be built now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// A plugin is still loading, or a probe of one of its configs is running: the frontend
    /// keeps what it runs until the result comes in (the `probed` callback of
    /// [`Directory::new`]).
    Pending,
    /// A plugin is missing, does not load, refused its config or failed in `configure`.
    Refused(String),
}

/// Loaded plugins by name.
pub struct Directory {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
    entries: HashMap<String, Entry>,
    next_handle: u32,
    prober: Prober,
    loads: Offload<Load, Loaded>,
    /// Plugins whose version in force changed since the last [`Directory::refresh`].
    changed: Vec<String>,
}

impl Directory {
    /// A directory of plugins; nothing is read until a Service names a plugin. Starts the
    /// load and probe threads; `probed` is called (on one of them) after each load's and
    /// each probe's result.
    pub fn new(
        runtime: Arc<Runtime>,
        dir: PathBuf,
        metrics: Arc<Metrics>,
        probed: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Self> {
        let rt = runtime.clone();
        let load = move |name: &str, bytes: &[u8]| rt.load(name, bytes);
        Self::with_load(runtime, dir, metrics, probed, load)
    }

    /// [`Directory::new`], loading with `load` (a test stands in for the compiler with it).
    fn with_load(
        runtime: Arc<Runtime>,
        dir: PathBuf,
        metrics: Arc<Metrics>,
        probed: Arc<dyn Fn() + Send + Sync>,
        load: impl Fn(&str, &[u8]) -> Result<Arc<Plugin>, String> + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let load = move |l: Load| Loaded {
            result: load(&l.name, &l.bytes),
            name: l.name,
            stamp: l.stamp,
        };
        Ok(Self {
            loads: Offload::start("plugin-load", LOAD_THREADS, load, probed.clone())?,
            changed: Vec::new(),
            prober: Prober::start(runtime.clone(), probed)?,
            runtime,
            dir,
            metrics,
            entries: HashMap::new(),
            next_handle: 0,
        })
    }

    /// Whether a failed probe's backoff is over: the frontends waiting on it should be
    /// resolved again.
    pub fn retry_due(&mut self) -> bool {
        self.prober.retry_due()
    }

    /// Waits, at most `bound`, until no load and no probe runs; false when some still does.
    pub fn wait_idle(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let (loaded, idle) = self.loads.settle(bound);
        for l in loaded {
            self.record(l);
        }
        idle && self
            .prober
            .wait_idle(deadline.saturating_duration_since(Instant::now()))
    }

    /// The runtime plugins are loaded with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    fn stamp(path: &Path) -> Stamp {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Starts loading `name` again if its file changed since it was last read and no load
    /// of it is out. A file that cannot be read is recorded at once.
    fn read(&mut self, name: &str) {
        let path = self.path(name);
        let stamp = Self::stamp(&path);
        let entry = self.entries.entry(name.to_string()).or_default();
        if entry.loading || (entry.stamp.is_some() && entry.stamp == stamp) {
            return;
        }
        let result = match Self::read_bounded(&path, MAX_PLUGIN_BYTES) {
            Ok(bytes) => {
                let name = name.to_string();
                if self.loads.submit(Load { name, stamp, bytes }) {
                    entry.loading = true;
                    return;
                }
                Err("no plugin load thread runs".to_string())
            }
            Err(e) => Err(e),
        };
        let name = name.to_string();
        self.record(Loaded {
            name,
            stamp,
            result,
        });
    }

    /// The file's bytes, or why not: unreadable, or longer than `max` (by its length, before
    /// anything is read, and as read, so a file that grows meanwhile is bounded too).
    fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let too_large = || {
            format!(
                "the file is larger than the {} MiB a plugin file may be",
                max >> 20
            )
        };
        let file = std::fs::File::open(path).map_err(cannot)?;
        if file.metadata().map_err(cannot)?.len() > max {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes).map_err(cannot)?;
        if bytes.len() as u64 > max {
            return Err(too_large());
        }
        Ok(bytes)
    }

    /// Takes in the loads the load threads finished.
    fn collect(&mut self) {
        while let Some(l) = self.loads.try_take() {
            self.record(l);
        }
    }

    /// Records what a read of `l.name` gave: a new version in force (named in `changed`),
    /// the same one again, or an error (logged and counted once, not on a first load: the
    /// Services that name it are told).
    fn record(&mut self, l: Loaded) {
        let Loaded {
            name,
            stamp,
            result,
        } = l;
        let path = self.path(&name);
        let entry = self.entries.entry(name.clone()).or_default();
        let first = entry.stamp.is_none() && entry.good.is_none() && entry.error.is_none();
        entry.loading = false;
        entry.stamp = stamp;
        match result {
            Ok(p) => {
                entry.error = None;
                if entry.good.as_ref().is_some_and(|g| g.digest == p.digest) {
                    return;
                }
                tracing::info!(plugin = %name, digest = %&p.digest[..12], roles = %p.roles, "plugin loaded");
                entry.good = Some(p);
                if !self.changed.contains(&name) {
                    self.changed.push(name);
                }
            }
            Err(e) => {
                // Bounded: a load error can quote what the component declares (its imports).
                let e = super::text::bounded(format!("plugin {name} ({}): {e}", path.display()));
                if entry.error.as_ref() != Some(&e) {
                    self.metrics.plugin_load_errors.inc();
                    match &entry.good {
                        Some(_) => {
                            tracing::error!(error = %e, "plugin not reloaded; Services keep its previous version")
                        }
                        None if !first => tracing::error!(error = %e, "plugin not loaded"),
                        None => {}
                    }
                }
                entry.error = Some(e);
            }
        }
    }

    /// The version of `name` in force (starting its load on first use): Pending while it
    /// has none and a load is out.
    fn lookup(&mut self, name: &str) -> Result<Arc<Plugin>, Unresolved> {
        self.collect();
        if !self.entries.contains_key(name) {
            self.read(name);
        }
        let entry = self.entries.get(name);
        match entry.map(|e| (&e.good, &e.error, e.loading)) {
            Some((Some(p), _, _)) => Ok(p.clone()),
            Some((None, _, true)) => Err(Unresolved::Pending),
            Some((None, Some(e), false)) => Err(Unresolved::Refused(e.clone())),
            _ => Err(Unresolved::Refused(format!("plugin {name}: not loaded"))),
        }
    }

    /// The version of `name` in force, loading it on first use and waiting (at most `bound`)
    /// for that load, or why there is none: for tools and tests, never for the control plane.
    pub fn get(&mut self, name: &str, bound: Duration) -> Result<Arc<Plugin>, String> {
        if matches!(self.lookup(name), Err(Unresolved::Pending)) {
            self.wait_idle(bound);
        }
        self.lookup(name).map_err(|e| match e {
            Unresolved::Refused(e) => e,
            Unresolved::Pending => format!("plugin {name}: still loading after {bound:?}"),
        })
    }

    /// Takes in finished loads and starts loading every plugin in use whose file changed;
    /// returns the names whose version in force changed since the last call (a new file that
    /// loaded, or the first good version of one that had failed). A load started here ends
    /// with the `probed` callback, after which this is called again.
    pub fn refresh(&mut self) -> Vec<String> {
        self.collect();
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for n in &names {
            self.read(n);
        }
        let changed = std::mem::take(&mut self.changed);
        let live: Vec<String> = self
            .entries
            .values()
            .filter_map(|e| e.good.as_ref().map(|p| p.digest.clone()))
            .collect();
        let live: Vec<&str> = live.iter().map(String::as_str).collect();
        self.runtime.retain_compiled(&live);
        self.prober.retain(&live);
        changed
    }

    /// The chain a frontend's annotations ask for. `previous` is reused when nothing but the
    /// endpoints changed, so plugins keep their per-Service state. Never waits for a probe:
    /// `Pending` while one runs; `Refused` names the plugin and why it cannot serve this
    /// Service (not found, not loadable, config refused, `configure` failed).
    pub fn resolve(
        &mut self,
        fe: &Frontend,
        previous: Option<&Arc<Chain>>,
    ) -> Result<Option<Arc<Chain>>, Unresolved> {
        let Some(spec) = &fe.plugins else {
            return Ok(None);
        };
        let mut plugins = Vec::with_capacity(spec.chain.len());
        for r in &spec.chain {
            let plugin = self.lookup(&r.name)?;
            plugins.push((plugin, r.config.as_str()));
        }
        if let Some(prev) = previous.filter(|p| p.serves(fe, &plugins, spec.failure_policy)) {
            return Ok(Some(prev.clone()));
        }
        let mut pending = false;
        for (plugin, config) in &plugins {
            let services = || {
                fe.families
                    .iter()
                    .map(|f| wire::probe_service(fe, *f))
                    .collect()
            };
            match self.prober.check(plugin, config, services) {
                Checked::Accepted => {}
                Checked::Pending => pending = true,
                Checked::Rejected(e) => return Err(Unresolved::Refused(e)),
            }
        }
        if pending {
            return Err(Unresolved::Pending);
        }
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(2);
        let links: Vec<Link> = plugins
            .into_iter()
            .map(|(plugin, config)| Link {
                metrics: self.metrics.plugin(&fe.into(), &plugin.name),
                plugin,
                config: config.to_string(),
            })
            .collect();
        Ok(Some(Arc::new(Chain::new(
            fe,
            links,
            spec.failure_policy,
            handle,
        ))))
    }

    /// [`Directory::resolve`], waiting (at most `bound`) for the loads and probes it starts:
    /// for tools, tests and benchmarks that resolve one chain at a time, never for the
    /// control plane.
    pub fn resolve_wait(
        &mut self,
        fe: &Frontend,
        previous: Option<&Arc<Chain>>,
        bound: Duration,
    ) -> Result<Option<Arc<Chain>>, Unresolved> {
        let deadline = Instant::now() + bound;
        loop {
            match self.resolve(fe, previous) {
                Err(Unresolved::Pending)
                    if Instant::now() < deadline
                        && self.wait_idle(deadline.saturating_duration_since(Instant::now())) => {}
                other => return other,
            }
        }
    }

    /// Watches the directory for content changes ([`crate::fswatch`]: never opens or reads)
    /// and sends `event()` once per burst (any entry: a ConfigMap volume's `..data` swap
    /// changes every plugin behind it; a re-read compares file stamps only) to `tx`, from a thread of its own, until the
    /// receiver is gone. Fails when the directory cannot be watched.
    pub fn watch<E: Send + 'static>(&self, tx: Sender<E>, event: fn() -> E) -> std::io::Result<()> {
        let mut watch = crate::fswatch::DirWatch::new(&self.dir)?;
        let dir = self.dir.clone();
        std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || loop {
                match watch.next(SETTLE) {
                    Ok(b) if b.gone => {
                        tracing::error!(dir = %dir.display(), "--plugin-dir removed or moved; plugins in use stay loaded");
                        return;
                    }
                    Ok(_) => {
                        if tx.send(event()).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "--plugin-dir no longer watched");
                        return;
                    }
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailurePolicy, PluginRef, PluginSpec};
    use crate::plugin::RuntimeConfig;
    use crate::sync::changes::tests::frontend;

    #[test]
    fn a_plugin_file_over_the_bound_is_refused_by_its_size() {
        let files = tempfile::tempdir().expect("dir");
        let path = files.path().join("big.wasm");
        std::fs::write(&path, vec![0u8; 3 << 20]).expect("file");
        let e = Directory::read_bounded(&path, 2 << 20).expect_err("over the bound");
        assert!(e.contains("larger than the 2 MiB"), "{e}");
        assert_eq!(
            Directory::read_bounded(&path, 3 << 20).map(|b| b.len()),
            Ok(3 << 20),
            "a file of exactly the bound is read whole"
        );
        let e = Directory::read_bounded(&files.path().join("gone.wasm"), 1).expect_err("absent");
        assert!(e.starts_with("cannot read"), "{e}");
    }

    /// A frontend on `node_port` that names `plugin`.
    fn naming(plugin: &str, node_port: u16) -> Frontend {
        let mut fe = frontend(node_port, &["198.18.0.2:80"]);
        fe.plugins = Some(Arc::new(PluginSpec {
            chain: vec![PluginRef {
                name: plugin.into(),
                config: String::new(),
            }],
            failure_policy: FailurePolicy::Open,
        }));
        fe
    }

    #[test]
    fn a_plugin_that_takes_long_to_load_holds_up_neither_the_caller_nor_other_plugins() {
        let files = tempfile::tempdir().expect("dir");
        for name in ["slow", "quick"] {
            std::fs::write(files.path().join(format!("{name}.wasm")), name).expect("file");
        }
        let (release, held) = crossbeam_channel::bounded::<()>(1);
        let (told, dones) = crossbeam_channel::unbounded::<()>();
        let metrics = Arc::new(Metrics::new());
        let rt = Runtime::new(
            RuntimeConfig::default(),
            metrics.plugin_logs_dropped.clone(),
        )
        .expect("runtime");
        // Stands in for a compile: "slow" until the test releases it (bounded, so a broken
        // test ends), then both refuse, naming what they read.
        let load = move |name: &str, bytes: &[u8]| -> Result<Arc<Plugin>, String> {
            if name == "slow" {
                let _ = held.recv_timeout(Duration::from_secs(10));
            }
            Err(format!("read {:?}", String::from_utf8_lossy(bytes)))
        };
        let done = Arc::new(move || {
            let _ = told.send(());
        });
        let mut dir =
            Directory::with_load(rt, files.path().into(), metrics, done, load).expect("threads");

        // Answered at once while the load is out (a blocked caller would see the refusal).
        let slow = naming("slow", 30001);
        assert_eq!(dir.resolve(&slow, None).err(), Some(Unresolved::Pending));
        // Another plugin loads meanwhile, on the other thread.
        let quick = naming("quick", 30002);
        assert_eq!(dir.resolve(&quick, None).err(), Some(Unresolved::Pending));
        assert!(
            dones.recv_timeout(Duration::from_secs(10)).is_ok(),
            "quick loaded"
        );
        match dir.resolve(&quick, None) {
            Err(Unresolved::Refused(e)) => assert!(e.contains("read \"quick\""), "{e}"),
            other => panic!("expected quick's refusal, got {:?}", other.map(|_| ())),
        }
        assert_eq!(dir.resolve(&slow, None).err(), Some(Unresolved::Pending));
        assert!(!dir.wait_idle(Duration::ZERO), "slow is still loading");

        // Its end is told (the control plane then refreshes and resolves again).
        release.send(()).expect("release");
        assert!(
            dones.recv_timeout(Duration::from_secs(10)).is_ok(),
            "slow loaded"
        );
        assert!(
            dir.refresh().is_empty(),
            "a refusal changes no version in force"
        );
        match dir.resolve(&slow, None) {
            Err(Unresolved::Refused(e)) => assert!(e.contains("read \"slow\""), "{e}"),
            other => panic!("expected slow's refusal, got {:?}", other.map(|_| ())),
        }
    }
}
