//! What each plugin instance's store carries: its memory limiter, its log budget and its
//! random generator. These back the `host` imports, the only things a plugin can call.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::bindings::host::{self, Level};

/// Caps linear memory (and tables) of one instance and remembers that it refused a growth,
/// so the trap that follows is reported as "memory limit" rather than a plain trap.
#[derive(Debug)]
pub struct Limits {
    /// Bytes of linear memory allowed.
    pub memory: usize,
    /// Set when a growth was refused since the last call began.
    pub hit: bool,
    /// Bytes of linear memory in use (the last growth allowed).
    pub used: usize,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory;
        self.hit |= !ok;
        if ok {
            self.used = desired;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= 100_000;
        self.hit |= !ok;
        Ok(ok)
    }
}

/// A token bucket for log lines: a plugin that logs in a loop costs a counter increment per
/// line, not a write to the daemon's log.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    tokens: u32,
    refilled: Instant,
    /// Lines dropped because the budget was spent.
    pub dropped: Counter,
}

impl LogBudget {
    /// `per_second` lines, with a burst of as many.
    pub fn new(per_second: u32, dropped: Counter) -> Self {
        Self {
            per_second,
            tokens: per_second,
            refilled: Instant::now(),
            dropped,
        }
    }

    fn take(&mut self) -> bool {
        if self.tokens == 0 {
            let now = Instant::now();
            if now.duration_since(self.refilled).as_secs() >= 1 {
                self.tokens = self.per_second;
                self.refilled = now;
            }
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.dropped.inc();
            false
        }
    }
}

/// The data of one instance's store.
pub struct HostState {
    /// Plugin name, for log lines.
    pub plugin: Arc<str>,
    /// Worker index (or usize::MAX for the control plane's probe instances).
    pub worker: usize,
    /// Memory cap and its "was hit" flag.
    pub limits: Limits,
    /// Log rate limit.
    pub log: LogBudget,
    /// Backs `random-u64`.
    pub rng: fastrand::Rng,
    /// Origin of `now-nanos`, shared by every instance.
    pub origin: Instant,
    /// The epoch clock, woken before each call.
    pub ticker: std::sync::Arc<super::ticker::Ticker>,
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if !self.log.take() {
            return;
        }
        // Bounded so a plugin cannot write megabyte lines either.
        let msg = super::text::bounded(message);
        let (plugin, worker) = (&*self.plugin, self.worker);
        match level {
            Level::Error => tracing::error!(plugin, worker, "{msg}"),
            Level::Warn => tracing::warn!(plugin, worker, "{msg}"),
            Level::Info => tracing::info!(plugin, worker, "{msg}"),
            Level::Debug => tracing::debug!(plugin, worker, "{msg}"),
        }
    }

    fn now_nanos(&mut self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn random_u64(&mut self) -> u64 {
        self.rng.u64(..)
    }
}

impl super::bindings::types::Host for HostState {}
