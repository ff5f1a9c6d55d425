//! The admin side: HTTP endpoints for probes, metrics and the conntrack dump.

pub mod health;
pub mod histogram;
pub mod metrics;
pub mod server;
