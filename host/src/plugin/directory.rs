//! The plugin directory (`--plugin-dir`): plugins are found by name as `<name>.wasm`, loaded
//! on first use, and reloaded when their file changes. It also resolves a Service port's
//! annotated chain into a [`Chain`], once each plugin's `configure` accepted the port's
//! config on a probe instance ([`super::probe`]: on probe threads, outcomes remembered per
//! plugin digest and config), so a refused config never reaches the workers and a plugin
//! whose `configure` hangs never holds up the control plane.
//!
//! A plugin that fails to (re)load leaves every Service on what it had: the previous version
//! of that plugin, or the native default if there was none. The reason is logged and counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;

use super::chain::{Chain, Link};
use super::contract::Plugin;
use super::probe::{Checked, Prober};
use super::runtime::Runtime;
use super::wire;
use crate::metrics::Metrics;
use crate::model::Frontend;

/// How long file events settle before plugins are re-read (a copy in progress is not loaded).
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Entry {
    /// (modified, length) when last read.
    stamp: Option<(SystemTime, u64)>,
    /// Last version that loaded.
    good: Option<Arc<Plugin>>,
    /// Why the last read did not load, if it did not.
    error: Option<String>,
}

/// Why a frontend's chain cannot be built now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// A probe of one of its configs is running: the frontend keeps what it runs until the
    /// probe's result comes in (the `probed` callback of [`Directory::new`]).
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
}

impl Directory {
    /// A directory of plugins; nothing is read until a Service names a plugin. Starts the
    /// probe threads; `probed` is called (on one of them) after each probe's result.
    pub fn new(
        runtime: Arc<Runtime>,
        dir: PathBuf,
        metrics: Arc<Metrics>,
        probed: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<Self> {
        Ok(Self {
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

    /// Waits, at most `bound`, until no probe runs; false when some still does.
    pub fn wait_probes(&mut self, bound: Duration) -> bool {
        self.prober.wait_idle(bound)
    }

    /// The runtime plugins are loaded with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.wasm"))
    }

    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Reads `name` again if its file changed. True when the version in force changed.
    fn read(&mut self, name: &str) -> bool {
        let path = self.path(name);
        let stamp = Self::stamp(&path);
        let entry = self.entries.entry(name.to_string()).or_default();
        if entry.stamp.is_some() && entry.stamp == stamp {
            return false;
        }
        let first = entry.stamp.is_none() && entry.good.is_none() && entry.error.is_none();
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => self.runtime.load(name, &bytes),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
        let entry = self.entries.entry(name.to_string()).or_default();
        entry.stamp = stamp;
        match loaded {
            Ok(p) => {
                entry.error = None;
                if entry.good.as_ref().is_some_and(|g| g.digest == p.digest) {
                    return false;
                }
                tracing::info!(plugin = name, digest = %&p.digest[..12], roles = %p.roles, "plugin loaded");
                entry.good = Some(p);
                true
            }
            Err(e) => {
                let e = format!("plugin {name} ({}): {e}", path.display());
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
                false
            }
        }
    }

    /// The version of `name` in force (loading it on first use), or why there is none.
    pub fn get(&mut self, name: &str) -> Result<Arc<Plugin>, String> {
        if !self.entries.contains_key(name) {
            self.read(name);
        }
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| format!("plugin {name}: not loaded"))?;
        match (&entry.good, &entry.error) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(e)) => Err(e.clone()),
            (None, None) => Err(format!("plugin {name}: not loaded")),
        }
    }

    /// Re-reads every plugin in use; returns the names whose version in force changed (a new
    /// file that loads, or the first good version of one that had failed).
    pub fn refresh(&mut self) -> Vec<String> {
        let names: Vec<String> = self.entries.keys().cloned().collect();
        let changed: Vec<String> = names.into_iter().filter(|n| self.read(n)).collect();
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
            let plugin = self.get(&r.name).map_err(Unresolved::Refused)?;
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

    /// [`Directory::resolve`], waiting (at most `bound`) for the probes it starts: for tools,
    /// tests and benchmarks that resolve one chain at a time, never for the control plane.
    pub fn resolve_wait(
        &mut self,
        fe: &Frontend,
        previous: Option<&Arc<Chain>>,
        bound: Duration,
    ) -> Result<Option<Arc<Chain>>, Unresolved> {
        match self.resolve(fe, previous) {
            Err(Unresolved::Pending) => {
                self.wait_probes(bound);
                self.resolve(fe, previous)
            }
            other => other,
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
