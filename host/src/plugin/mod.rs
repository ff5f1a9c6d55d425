//! WASM plugins: per-Service policy (admission, affinity, endpoint selection) as sandboxed
//! WebAssembly components, run with wasmtime's component model.
//!
//! - [`bindings`]: types generated from `wit/plugin.wit` (the contract).
//! - [`runtime`]: the one Engine, deadlines by epoch, memory caps, compile cache.
//! - [`contract`]: checking a component and making its pre-instantiated template.
//! - [`directory`]: plugins by name from `--plugin-dir`, reloads, chain resolution.
//! - [`chain`]: a Service port's resolved chain, carried in the route to workers.
//! - [`instance`]: one live instance and its typed calls.
//! - [`sandbox`]: a worker's instances, failure containment and backoff.
//! - [`failure`]: the ways a call can fail.

pub mod bindings;
pub mod chain;
pub mod contract;
pub mod directory;
pub mod failure;
pub mod host_state;
pub mod instance;
pub mod runtime;
pub mod sandbox;

pub use chain::Chain;
pub use contract::{Plugin, Roles};
pub use directory::Directory;
pub use failure::{Failure, FailureKind};
pub use instance::Instance;
pub use runtime::{Runtime, RuntimeConfig};
pub use sandbox::{Admit, WorkerPlugins};
