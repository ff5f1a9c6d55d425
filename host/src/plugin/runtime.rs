//! The plugin runtime: one wasmtime Engine for the daemon ([`super::engine`]: pooling
//! allocator sized by the limits, guarded memories), the Linker that offers the `host` imports, the epoch clock that enforces call
//! deadlines ([`super::ticker`]), the setup threads ([`super::setup`]) and the limits themselves
//! ([`RuntimeConfig`]). Loading is [`super::loader`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::bindings;
use super::contract::Plugin;
use super::engine::{self, MemoryLayout};
use super::host_state::{HostState, Limits, LogBudget};
use super::loader::{self, CodeCache};
use super::ticker::{Ticker, TICK};

/// Limits and places, from the CLI. The defaults are safe for a node: a plugin call may take
/// at most 5 ms, an instance at most 64 MiB.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Longest a per-flow call (`admit`, `select`, `affinity-key`) may run.
    pub deadline: Duration,
    /// Longest `configure` or `set-backends` may run (they may loop over many endpoints).
    pub setup_deadline: Duration,
    /// Linear memory cap per instance.
    pub memory_limit: usize,
    /// Instances that may exist at once (pooling allocator slots).
    pub max_instances: u32,
    /// Where precompiled components are kept (None: compile in memory only).
    pub cache_dir: Option<PathBuf>,
    /// Log lines per second per instance before lines are dropped.
    pub log_lines_per_second: u32,
    /// Where a worker says that backoff disabled a plugin (for an Event on the Service).
    pub notices: crate::notice::Notices,
    /// Bounds-check every guest memory access instead of reserving 4 GiB of address space
    /// per memory slot (see [`super::engine`]).
    pub explicit_bounds_checks: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(5),
            setup_deadline: Duration::from_millis(100),
            memory_limit: 64 << 20,
            max_instances: 1000,
            cache_dir: None,
            log_lines_per_second: 10,
            notices: crate::notice::Notices::default(),
            explicit_bounds_checks: false,
        }
    }
}

/// The shared runtime. Send + Sync: the control plane loads with it, workers instantiate.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) cfg: RuntimeConfig,
    /// How linear memories are laid out (bounds checks elided or explicit).
    memory: MemoryLayout,
    pub(super) origin: Instant,
    pub(super) code: CodeCache,
    /// Log lines plugins wrote over their budget (all plugins).
    pub logs_dropped: Counter,
    /// Where workers' instances are made, configured and given endpoints.
    pub(super) setup: super::setup::Pool,
    /// The epoch clock (asleep while no plugin runs).
    ticker: Arc<Ticker>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cfg", &self.cfg).finish()
    }
}

impl Runtime {
    /// Builds the engine ([`engine::build`]) and starts the epoch clock;
    /// `logs_dropped` counts log lines over the rate limit (a metric).
    pub fn new(cfg: RuntimeConfig, logs_dropped: Counter) -> anyhow::Result<Arc<Self>> {
        let (engine, memory) = engine::build(&cfg)?;
        let mut linker = Linker::new(&engine);
        bindings::host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        bindings::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        let weak = engine.weak();
        let longest = ticks(cfg.deadline.max(cfg.setup_deadline));
        let ticker = Ticker::start(longest, move || match weak.upgrade() {
            Some(e) => {
                e.increment_epoch();
                true
            }
            None => false,
        })?;
        Ok(Arc::new(Self {
            engine,
            linker,
            code: CodeCache::new(cfg.cache_dir.clone()),
            setup: super::setup::Pool::start()?,
            ticker,
            cfg,
            memory,
            origin: Instant::now(),
            logs_dropped,
        }))
    }

    /// Settings in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// How linear memories are laid out, as built (the fallback may have been taken).
    pub fn memory_layout(&self) -> MemoryLayout {
        self.memory
    }

    /// Epoch ticks for a deadline: rounded up, plus one for the tick already under way.
    pub(super) fn ticks(&self, d: Duration) -> u64 {
        ticks(d)
    }

    /// A fresh store for one instance.
    pub(super) fn store(&self, plugin: &Arc<str>, worker: usize, seed: u64) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState {
                plugin: plugin.clone(),
                worker,
                limits: Limits {
                    memory: self.cfg.memory_limit,
                    hit: false,
                    used: 0,
                },
                log: LogBudget::new(self.cfg.log_lines_per_second, self.logs_dropped.clone()),
                rng: fastrand::Rng::with_seed(seed),
                origin: self.origin,
                ticker: self.ticker.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        // Instantiation (start functions) runs under this deadline next.
        self.ticker.busy();
        store.set_epoch_deadline(self.ticks(self.cfg.setup_deadline));
        store
    }

    /// Loads a plugin: compile (cached), then check it against the contract. Err says exactly
    /// what does not match.
    pub fn load(self: &Arc<Self>, name: &str, bytes: &[u8]) -> Result<Arc<Plugin>, String> {
        loader::load(self, name, bytes)
    }

    /// Forgets compiled code no plugin uses any more (the disk cache stays).
    pub fn retain_compiled(&self, digests: &[&str]) {
        self.code.retain(digests);
    }
}

/// Epoch ticks for a deadline: rounded up, plus one for the tick already under way.
fn ticks(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(TICK.as_nanos()) as u64) + 1
}
