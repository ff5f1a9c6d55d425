//! The admin side: HTTP endpoints for probes, metrics and the conntrack dump.

pub mod metrics;
pub mod server;
