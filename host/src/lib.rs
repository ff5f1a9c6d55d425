#![warn(missing_docs)]
//! nodeportd: a Kubernetes NodePort dataplane in userspace with its own conntrack.
//!
//! Data flows one way: `source` (manifests) -> `model` -> `sync` -> `dataplane` (routes,
//! workers, conntrack) -> `policy` (the flow-policy seam) -> `plugin` (the WASM runtime).
//! `metrics` sits below everything; `admin` (probes, /metrics, /conntrack) sits on top and
//! only reads; `cli` wires them.

pub mod admin;
pub mod cli;
pub mod dataplane;
pub mod fswatch;
pub mod metrics;
pub mod model;
pub mod notice;
pub mod plugin;
pub mod policy;
pub mod source;
pub mod sync;
