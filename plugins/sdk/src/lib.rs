//! The SDK for nodeportd policy plugins.
//!
//! A plugin is a WebAssembly component that nodeportd loads to decide, per Service port,
//! whether a new flow is admitted ([`Admission`]), which endpoint takes it ([`Selection`]),
//! and which flows stick to one endpoint ([`Affinity`]). The contract between host and plugin
//! is the WIT package `nodeport:plugin@0.1.0` (`wit/plugin.wit` in the repository); this
//! crate hides it behind plain Rust types so that a plugin is a `Default` struct, one trait
//! per role it plays, and one [`export!`] call naming those roles. The component then
//! exports `nodeport:plugin/lifecycle@0.1.0` and exactly the chosen role interfaces: the host
//! learns a plugin's roles from its exports.
//!
//! A complete selection plugin: the shipped `consistent-hash` plugin (rendezvous hashing on the
//! flow hash, ready endpoints first, retries walk down the flow's ranking), in full:
//!
//! ```
//! use nodeport_plugin::{export, mix, Backend, Flow, HandleMap, Plugin, Selection};
//!
//! /// Per Service handle: (endpoint identity hash, ready), in the host's index order.
//! #[derive(Default)]
//! pub struct ConsistentHash {
//!     backends: HandleMap<Vec<(u64, bool)>>,
//! }
//!
//! impl Plugin for ConsistentHash {
//!     fn forget(&mut self, handle: u32) {
//!         self.backends.remove(&handle);
//!     }
//! }
//!
//! impl Selection for ConsistentHash {
//!     fn set_backends(&mut self, handle: u32, backends: Vec<Backend>) {
//!         let list = backends.iter().map(|b| (b.key_hash(), b.ready)).collect();
//!         self.backends.insert(handle, list);
//!     }
//!
//!     fn select(&mut self, flow: &Flow, excluded: Option<u32>) -> Option<u32> {
//!         let list = self.backends.get(&flow.handle)?;
//!         // Rank: ready first (top bit), then the flow's score for the endpoint, then index.
//!         let rank = |i: usize| {
//!             list.get(i)
//!                 .map(|&(h, up)| ((up as u64) << 63 | mix(flow.hash ^ h) >> 1, i))
//!         };
//!         // On a retry, every endpoint ranked at or above the one that failed has failed.
//!         let below = excluded.and_then(|e| rank(e as usize));
//!         let mut best = None;
//!         for r in (0..list.len()).filter_map(rank) {
//!             if below.is_none_or(|b| r < b) && best.is_none_or(|b| r > b) {
//!                 best = Some(r);
//!             }
//!         }
//!         best.map(|(_, i)| i as u32)
//!     }
//! }
//!
//! export!(ConsistentHash: selection);
//! # fn main() {}
//! ```
//!
//! Plugins run single-threaded inside their instance, so the SDK keeps one value of the
//! plugin type (created with `Default` on the first call) and hands `&mut self` to every
//! call: no locks or interior mutability needed. A panic traps the instance (the SDK writes
//! the panic message to the daemon log first), so a bad configuration must be an `Err` from
//! [`Plugin::configure`], never a panic, and state should be rebuildable from `configure`
//! and `set_backends`.
//!
//! Outside wasm (a plugin's native `cargo test`) [`export!`] exports nothing and the host
//! functions fall back to local ones ([`now_nanos`], [`random_u64`], logging to stderr), so
//! plugin logic can be unit-tested directly through the traits.
//!
//! Layout: `types` (the data crossing the contract), `roles` (the traits), `host` (clock and
//! randomness), `hash` ([`HandleMap`], [`RandomState`], [`mix`]), `export` (the macro),
//! `convert` (WIT types to the SDK's), and the public modules [`config`], [`log`] and
//! [`testing`]; everything a plugin names is re-exported at the crate root.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod __private;

pub mod config;
mod convert;
mod export;
mod hash;
mod host;
pub mod log;
mod roles;
pub mod testing;
mod types;

pub use hash::{mix, BuildHandleHasher, HandleHasher, HandleMap, RandomState};
pub use host::{now_nanos, random_u64};
pub use roles::{Admission, Affinity, Plugin, Selection};
pub use types::{AffinityKey, Backend, DenyReason, Flow, Protocol, Service, Verdict};
