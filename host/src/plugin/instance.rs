//! One live instance of a plugin: its store and typed handles to the roles it exports.
//! Owned by exactly one thread (a worker, or the control plane for probes), so calls take no
//! lock. Every call is armed with a deadline; any error is turned into a [`Failure`].

use wasmtime::component::Instance as Wasm;
use wasmtime::Store;

use super::bindings::{admission, affinity, lifecycle, selection, types};
use super::contract::Plugin;
use super::failure::{Failure, FailureKind};
use super::host_state::HostState;
use super::runtime::Runtime;

/// A plugin instance and its store.
pub struct Instance {
    store: Store<HostState>,
    lifecycle: lifecycle::Guest,
    admission: Option<admission::Guest>,
    selection: Option<selection::Guest>,
    affinity: Option<affinity::Guest>,
    flow_ticks: u64,
    setup_ticks: u64,
}

impl Instance {
    /// Instantiates `plugin` from its template (a pooling-allocator slot, no compilation).
    pub fn new(rt: &Runtime, plugin: &Plugin, worker: usize, seed: u64) -> Result<Self, Failure> {
        let mut store = rt.store(&plugin.name, worker, seed);
        let inst = |e: wasmtime::Error| Failure::new(FailureKind::Instantiate, format!("{e:#}"));
        let wasm: Wasm = plugin.pre.instantiate(&mut store).map_err(inst)?;
        let lifecycle = plugin.lifecycle.load(&mut store, &wasm).map_err(inst)?;
        let admission = plugin
            .admission
            .as_ref()
            .map(|i| i.load(&mut store, &wasm))
            .transpose()
            .map_err(inst)?;
        let selection = plugin
            .selection
            .as_ref()
            .map(|i| i.load(&mut store, &wasm))
            .transpose()
            .map_err(inst)?;
        let affinity = plugin
            .affinity
            .as_ref()
            .map(|i| i.load(&mut store, &wasm))
            .transpose()
            .map_err(inst)?;
        Ok(Self {
            store,
            lifecycle,
            admission,
            selection,
            affinity,
            flow_ticks: rt.ticks(rt.config().deadline),
            setup_ticks: rt.ticks(rt.config().setup_deadline),
        })
    }

    fn arm(&mut self, ticks: u64) {
        self.store.data_mut().limits.hit = false;
        self.store.data().ticker.busy();
        self.store.set_epoch_deadline(ticks);
    }

    fn failure(&self, e: wasmtime::Error) -> Failure {
        let kind = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => FailureKind::Deadline,
            _ if self.store.data().limits.hit => FailureKind::Memory,
            _ => FailureKind::Trap,
        };
        Failure::new(kind, format!("{e:#}"))
    }

    /// Hands the instance a Service handle and its config. The inner Err is the plugin's own
    /// refusal of the config (bounded: it is logged and shown on every retry).
    pub fn configure(
        &mut self,
        service: &types::Service,
        config: &str,
    ) -> Result<Result<(), String>, Failure> {
        self.arm(self.setup_ticks);
        self.lifecycle
            .call_configure(&mut self.store, service, config)
            .map(|r| r.map_err(super::text::bounded))
            .map_err(|e| self.failure(e))
    }

    /// Tells the instance a handle is gone.
    pub fn forget(&mut self, handle: u32) -> Result<(), Failure> {
        self.arm(self.setup_ticks);
        self.lifecycle
            .call_forget(&mut self.store, handle)
            .map_err(|e| self.failure(e))
    }

    /// New endpoint list of a handle (selection plugins only; a no-op otherwise).
    pub fn set_backends(
        &mut self,
        handle: u32,
        backends: &[types::Backend],
    ) -> Result<(), Failure> {
        self.arm(self.setup_ticks);
        let Some(s) = &self.selection else {
            return Ok(());
        };
        s.call_set_backends(&mut self.store, handle, backends)
            .map_err(|e| self.failure(e))
    }

    /// Admission verdict (Allow when the plugin has no admission role).
    pub fn admit(&mut self, flow: types::Flow) -> Result<types::Verdict, Failure> {
        self.arm(self.flow_ticks);
        let Some(a) = &self.admission else {
            return Ok(types::Verdict::Allow);
        };
        a.call_admit(&mut self.store, flow)
            .map_err(|e| self.failure(e))
    }

    /// Selected index (None when the plugin has no selection role or picks nothing).
    pub fn select(
        &mut self,
        flow: types::Flow,
        excluded: Option<u32>,
    ) -> Result<Option<u32>, Failure> {
        self.arm(self.flow_ticks);
        let Some(s) = &self.selection else {
            return Ok(None);
        };
        s.call_select(&mut self.store, flow, excluded)
            .map_err(|e| self.failure(e))
    }

    /// Affinity key (None when the plugin has no affinity role or gives none).
    pub fn affinity_key(&mut self, flow: types::Flow) -> Result<Option<types::Affinity>, Failure> {
        self.arm(self.flow_ticks);
        let Some(a) = &self.affinity else {
            return Ok(None);
        };
        a.call_affinity_key(&mut self.store, flow)
            .map_err(|e| self.failure(e))
    }

    /// Linear memory the instance uses now, in bytes (for `plugin bench`).
    pub fn memory_bytes(&mut self) -> usize {
        self.store.data().limits.used
    }
}
