//! Harness for the nodeportd end-to-end tests: start the real binary against a manifest
//! directory, real backends on loopback, and clients that talk to its nodePorts.
//!
//! Rules every test follows (and this harness enforces where it can):
//! - traffic goes only to loopback (127.0.0.0/8, ::1) or to 198.18.0.0/15 addresses of
//!   network namespaces a test created itself;
//! - every wait is bounded ([`wait_until`] polls every 20 ms up to a deadline);
//! - everything a test creates (daemon, backend threads, namespaces, temp dirs) is removed in
//!   `Drop`, so also when the test panics.
//!
//! One module per concept, everything re-exported here: `wait` (bounded waits and commands),
//! `daemon` (the process under test), `kube` (a real API server), `metrics` (/metrics and /conntrack answers), `manifests`
//! (the directory and YAML builders), `backends` (TCP and UDP backends), `clients` (HTTP,
//! TCP and UDP clients), `ports` (nodePorts, free and dead ports), `proxy` (the endpoint's side of PROXY v2), `netns` (network
//! namespaces, links between them, values living in them), `lan` (a bridge joining
//! namespaces), `plugins` (built plugins, plugin directories) and `rig` (in-process plugin
//! rigs, a public module).

mod backends;
mod clients;
mod daemon;
mod kube;
mod lan;
mod manifests;
mod metrics;
mod netns;
mod plugins;
mod ports;
mod proxy;
pub mod rig;
mod wait;

use std::time::Duration;

pub use backends::{TcpBackend, UdpBackend};
pub use clients::{
    connect, http_get, http_get_full, lo, pattern, refused, udp_ask, udp_client, udp_client_from,
    who, who_from, Conn,
};
pub use daemon::{binary, Daemon};
pub use kube::{plugin_configmap, ApiServer, Kind, ADMIN_TOKEN, SA_TOKEN};
pub use lan::Lan;
pub use manifests::{
    docs, named_slices, one_tcp_service, slice, slices, Ep, Manifests, Service, SvcPort,
};
pub use metrics::{parse_metric, rows};
pub use netns::{is_root, Netns, Resident};
pub use plugins::{built_plugin, built_plugins, PluginDir};
pub use ports::{dead_tcp_port, free_tcp_port, has_ipv6, node_port};
pub use proxy::read_proxy_v2;
pub use wait::{run_bounded, wait_for, wait_until};

/// Polling step of every wait.
pub const STEP: Duration = Duration::from_millis(20);
/// Default bound for "the daemon should have reacted by now".
pub const SETTLE: Duration = Duration::from_secs(10);
/// Timeout of single socket operations in client helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Namespace of every object the tests write.
pub const NS: &str = "e2e";
/// `--node-name` the daemon gets unless a test passes its own.
pub const NODE: &str = "node-a";

/// Daemon args that keep it on loopback (IPv4).
pub const LO_ONLY: [&str; 2] = ["--nodeport-addresses", "127.0.0.0/8"];
