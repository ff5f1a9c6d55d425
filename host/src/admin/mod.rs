//! The admin side, on top of everything: HTTP endpoints for probes, health check node ports,
//! metrics and the conntrack dump. It reads the rest of the daemon; nothing imports it but
//! the CLI that wires it.

pub mod health;
pub mod server;
