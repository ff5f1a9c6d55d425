//! WASM plugins: per-Service policy (admission, affinity, endpoint selection) as sandboxed
//! WebAssembly components, run with wasmtime's component model. This module runs plugins and
//! reports what they answered or how they failed; what a failure means for a flow (the
//! Service's failure policy) is decided by its caller, the flow policy.
//!
//! - [`bindings`]: types generated from `wit/plugin.wit` (the contract).
//! - [`runtime`]: the one Engine, its Linker, limits.
//! - [`engine`]: the Engine's settings: pooling slots, guarded memories, call-cost knobs.
//! - [`ticker`]: the epoch clock behind call deadlines, asleep while no plugin runs.
//! - [`loader`]: bytes to a [`Plugin`]: SHA-256 digest, compile cache (memory, `.cwasm`).
//! - [`contract`]: checking a component, its pre-instantiated template, a trial instance.
//! - [`wire`]: every conversion between model types and WIT types (flow record, endpoints).
//! - [`directory`]: plugins by name from `--plugin-dir`, reloads, chain resolution.
//! - [`offload`]: a few threads that run loads and probes off the control-plane thread.
//! - [`probe`]: `configure` probes of Service configs on probe threads, outcomes remembered.
//! - [`chain`]: a Service port's resolved chain, carried in the route to workers.
//! - [`host_state`]: what an instance's store carries (memory limiter, log budget, random).
//! - [`instance`]: one live instance and its typed calls.
//! - [`worker_instances`]: a worker's instances; each call's outcome counted and logged.
//! - [`setup`]: instances made, configured and given endpoints on setup threads.
//! - [`slot`]: one plugin on one worker, and how its failures are booked.
//! - [`backoff`]: failure counting, disable, probation (a pure state machine).
//! - [`failure`]: the ways a call can fail.
//! - [`text`]: plugin-made text (logs, refusals, names in traps), bounded where it enters.

pub mod backoff;
pub mod bindings;
pub mod chain;
pub mod contract;
pub mod directory;
pub mod engine;
pub mod failure;
pub mod host_state;
pub mod instance;
pub mod loader;
pub mod offload;
pub mod probe;
pub mod runtime;
pub mod setup;
pub mod slot;
pub mod text;
pub mod ticker;
pub mod wire;
pub mod worker_instances;

pub use chain::Chain;
pub use contract::{Plugin, Roles};
pub use directory::{Directory, Unresolved};
pub use engine::MemoryLayout;
pub use failure::{Failure, FailureKind};
pub use instance::Instance;
pub use runtime::{Runtime, RuntimeConfig};
pub use worker_instances::WorkerInstances;
