#![warn(missing_docs)]
//! nodeportd: a Kubernetes NodePort dataplane in userspace with its own conntrack.
//!
//! Data flows one way: `source` (manifests) -> `model` (store, frontends) -> `sync` ->
//! `dataplane` (workers, conntrack) ; `admin` serves probes, metrics and the conntrack dump.
//! Selection policy lives in `balance`.

pub mod admin;
pub mod balance;
pub mod cli;
pub mod dataplane;
pub mod model;
pub mod plugin;
pub mod source;
pub mod sync;
