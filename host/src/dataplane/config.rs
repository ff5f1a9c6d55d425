//! The dataplane's settings, as the CLI (or a test) sets them.

use std::sync::Arc;
use std::time::Duration;

use super::listener::BindAddresses;

/// Dataplane settings (from the CLI).
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Worker threads.
    pub workers: usize,
    /// Time allowed for one connect to an endpoint.
    pub connect_timeout: Duration,
    /// Endpoints tried per TCP flow before the client is reset.
    pub connect_attempts: usize,
    /// UDP idle timeout before the endpoint has answered.
    pub udp_timeout: Duration,
    /// UDP idle timeout once the endpoint has answered.
    pub udp_stream_timeout: Duration,
    /// TCP idle timeout (zero: none).
    pub tcp_idle_timeout: Duration,
    /// Conntrack shard size per worker.
    pub max_flows_per_worker: usize,
    /// Relay with splice(2) (else copy through userspace).
    pub splice: bool,
    /// Bytes each splice pipe asks for (see `relay::PIPE_BYTES`).
    pub pipe_bytes: usize,
    /// Node addresses to bind.
    pub bind: BindAddresses,
    /// Local-policy IPv4 flows reach endpoints from the client's address (see `transparent`).
    pub preserve_source_v4: bool,
    /// The same for IPv6.
    pub preserve_source_v6: bool,
    /// This node's own addresses: endpoints there (host-network pods) keep the node address,
    /// since their replies would never pass prerouting.
    pub node_ips: Vec<std::net::IpAddr>,
    /// The plugin runtime workers instantiate from (None: plugins are off).
    pub plugins: Option<Arc<crate::plugin::Runtime>>,
}

impl DataplaneConfig {
    /// Longest a new flow waits for its plugin's setup (see `parked`): twice the setup
    /// deadline, so a setup that runs into its deadline is booked before flows give up.
    pub fn park_limit(&self) -> Duration {
        (self.plugins.as_ref()).map_or(Duration::ZERO, |rt| rt.config().setup_deadline * 2)
    }

    /// The CLI's defaults (kube-proxy's and the kernel's timeouts) on `bind`, one worker,
    /// plugins off: what tests and benchmarks start from.
    pub fn new(bind: BindAddresses) -> Self {
        Self {
            workers: 1,
            connect_timeout: Duration::from_secs(2),
            connect_attempts: 3,
            udp_timeout: Duration::from_secs(30),
            udp_stream_timeout: Duration::from_secs(120),
            tcp_idle_timeout: Duration::from_secs(86_400),
            max_flows_per_worker: 262_144,
            splice: true,
            pipe_bytes: super::relay::PIPE_BYTES,
            bind,
            preserve_source_v4: false,
            preserve_source_v6: false,
            node_ips: Vec::new(),
            plugins: None,
        }
    }
}
