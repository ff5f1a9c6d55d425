//! The command line: `nodeportd run` (the daemon) and `nodeportd conntrack` (the dump).

pub mod conntrack;
pub mod plugin;
pub mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

/// Kubernetes NodePort dataplane with its own conntrack.
#[derive(Parser, Debug)]
#[command(name = "nodeportd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start
pub enum Command {
    /// Run the node daemon.
    Run(RunArgs),
    /// Print the conntrack table of a running daemon, like `conntrack -L`.
    Conntrack(ConntrackArgs),
    /// Check or benchmark a WASM plugin component.
    Plugin(PluginArgs),
}

/// Limits of the plugin runtime, shared by `run` and `plugin bench`.
#[derive(Args, Debug, Clone)]
pub struct PluginLimits {
    /// Longest a per-flow plugin call (admit, select, affinity-key) may run before it is
    /// interrupted; a miss is a plugin failure.
    #[arg(long = "plugin-deadline", default_value = "5ms", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Longest configure or set-backends may run.
    #[arg(long = "plugin-setup-deadline", default_value = "100ms", value_parser = parse_duration)]
    pub setup_deadline: Duration,
    /// Linear memory cap per plugin instance, in MiB.
    #[arg(long = "plugin-memory-mib", default_value_t = 64)]
    pub memory_mib: usize,
    /// Plugin instances that may exist at once (one per plugin per worker, plus probes).
    /// At most 2^20: the pool sizes its tables and memories from it.
    #[arg(long = "plugin-max-instances", default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(2..=1 << 20))]
    pub max_instances: u32,
    /// Directory for precompiled plugins (by content digest), so restarts skip compiling.
    #[arg(long = "plugin-cache-dir")]
    pub cache_dir: Option<PathBuf>,
    /// Bounds-check every plugin memory access instead of reserving 4 GiB of address space
    /// (not memory) per instance memory; for hosts that limit address space. Slower calls.
    #[arg(long = "plugin-explicit-bounds-checks")]
    pub explicit_bounds_checks: bool,
}

impl PluginLimits {
    /// The runtime settings these flags give.
    pub fn runtime(&self) -> crate::plugin::RuntimeConfig {
        crate::plugin::RuntimeConfig {
            deadline: self.deadline,
            setup_deadline: self.setup_deadline,
            memory_limit: self.memory_mib.max(1) << 20,
            max_instances: self.max_instances.max(2),
            cache_dir: self.cache_dir.clone(),
            explicit_bounds_checks: self.explicit_bounds_checks,
            ..Default::default()
        }
    }
}

/// `nodeportd plugin`.
#[derive(Args, Debug)]
pub struct PluginArgs {
    /// What to do with the plugin.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// `nodeportd plugin` subcommands.
#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Print the roles a component implements and its imports, or exactly what does not match
    /// the contract (exit status 1).
    Check {
        /// The component (.wasm).
        file: PathBuf,
        /// Runtime limits (the engine is built as the daemon would build it).
        #[command(flatten)]
        limits: PluginLimits,
    },
    /// Measure a plugin the same way for every plugin: compile and instantiation time,
    /// per-call latency p50/p99 of each role it implements, and memory.
    Bench {
        /// The component (.wasm).
        file: PathBuf,
        /// Endpoints given to set-backends.
        #[arg(long, default_value_t = 16)]
        backends: usize,
        /// Calls per role.
        #[arg(long, default_value_t = 100_000)]
        flows: usize,
        /// The config string given to configure.
        #[arg(long, default_value = "")]
        config: String,
        /// A calibration plugin whose every call answers at once (the project's
        /// `target/plugins/fixtures/empty.wasm`): its calls, interleaved with the plugin's,
        /// give the boundary cost of each role, reported with the plugin's own cost above it.
        #[arg(long)]
        boundary: Option<PathBuf>,
        /// Runtime limits.
        #[command(flatten)]
        limits: PluginLimits,
    },
}

/// How the relay moves bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RelayMode {
    /// splice(2) through a pipe, falling back to copy where unsupported.
    Splice,
    /// read/write through a userspace buffer.
    Copy,
}

/// Whether Local flows keep the client's source address.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PreserveSource {
    /// On when the node allows it, else a warning.
    Auto,
    /// Required: start fails without it.
    On,
    /// Endpoints see the node's address.
    Off,
}

/// Log output format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or("expected FROM-TO, for example 30000-32767")?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s} is not a valid port range"));
    }
    Ok((a, b))
}

/// `nodeportd run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Standalone mode: a directory of Kubernetes manifests (Services, EndpointSlices),
    /// watched for changes. Without it, the Kubernetes API is the source.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig file for the API server (default: KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (kube-proxy's flag; --node-name is the same): externalTrafficPolicy
    /// Local uses endpoints with this nodeName, and its Node object gives the zone.
    #[arg(long = "hostname-override", alias = "node-name", env = "NODE_NAME")]
    pub node_name: String,
    /// This node's zone, for topology hints (default with the API source: the Node's
    /// topology.kubernetes.io/zone label).
    #[arg(long, env = "NODE_ZONE")]
    pub node_zone: Option<String>,
    /// Serve the Services whose service.kubernetes.io/service-proxy-name label is this
    /// (default: only Services without the label, as kube-proxy).
    #[arg(long, value_name = "NAME")]
    pub proxy_name: Option<String>,
    /// With the API source and --plugin-dir: the namespace of the ConfigMaps whose binaryData
    /// `<name>.wasm` keys are written into --plugin-dir.
    #[arg(long, default_value = "kube-system")]
    pub plugin_namespace: String,
    /// Label selector of those ConfigMaps.
    #[arg(long, default_value = "nodeportd.dev/plugins=true")]
    pub plugin_configmap_selector: String,
    /// Node addresses to serve nodePorts on, as CIDRs (default: all addresses).
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
    pub nodeport_addresses: Vec<IpNet>,
    /// Allowed nodePort range.
    #[arg(long, default_value = "30000-32767", value_parser = parse_range)]
    pub nodeport_range: (u16, u16),
    /// Health server address (/healthz, /livez, /readyz), where load balancers and probes
    /// reach it (kube-proxy's flag and default).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Metrics server address (/metrics, /conntrack with every flow's client address, and the
    /// health routes): loopback by default, as kube-proxy's.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Deprecated: serves health, /metrics and /conntrack on this one address (overrides
    /// both flags above). Use --healthz-bind-address and --metrics-bind-address.
    #[arg(long, hide = true)]
    pub admin_address: Option<SocketAddr>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Time allowed for one connect to an endpoint before another is tried.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Endpoints tried per TCP connection before the client is reset.
    #[arg(long, default_value_t = 3)]
    pub connect_attempts: usize,
    /// UDP flow idle timeout until the endpoint answers (kernel nf_conntrack_udp_timeout).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub udp_timeout: Duration,
    /// UDP flow idle timeout once the endpoint has answered (nf_conntrack_udp_timeout_stream).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub udp_stream_timeout: Duration,
    /// TCP idle timeout, 0 for none (kube-proxy sets 24h for established flows).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// Conntrack entries per worker; new flows beyond it are refused and counted.
    #[arg(long, default_value_t = 262_144)]
    pub max_flows_per_worker: usize,
    /// externalTrafficPolicy Local: endpoints see the client's address, as with kube-proxy.
    /// Programs an nftables mark rule and a policy route in this network namespace (needs
    /// CAP_NET_ADMIN, nft, ip) and removes them on exit. auto: on where possible, with a
    /// warning where not; on: refuse to start without it.
    #[arg(long, value_enum, default_value_t = PreserveSource::Auto)]
    pub preserve_source: PreserveSource,
    /// How TCP payload is relayed.
    #[arg(long, value_enum, default_value_t = RelayMode::Splice)]
    pub relay: RelayMode,
    /// Size of each splice pipe, in KiB (rounded up to a power of two pages). Bigger pipes
    /// move more per system call on bulk flows. Without CAP_SYS_RESOURCE the kernel caps a
    /// pipe at /proc/sys/fs/pipe-max-size and all of the user's pipes together at
    /// fs/pipe-user-pages-soft (256 pipes of 256 KiB by default); a refused pipe keeps the
    /// size it got and is closed, not pooled, when its flow ends.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(4..=1 << 20))]
    pub splice_pipe_kib: u32,
    /// On SIGTERM, how long flows may finish after listeners close.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Directory of WASM plugins (`<name>.wasm`), watched for changes. Without it, Services
    /// that name plugins are served by the native default (with an error logged).
    #[arg(long)]
    pub plugin_dir: Option<PathBuf>,
    /// Plugin runtime limits.
    #[command(flatten)]
    pub plugin_limits: PluginLimits,
}

/// `nodeportd conntrack`.
#[derive(Args, Debug)]
pub struct ConntrackArgs {
    /// Metrics address of the running daemon (its --metrics-bind-address).
    #[arg(long, alias = "admin-address", default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_served_where_load_balancers_reach_it_and_metrics_on_loopback_by_default() {
        let args = ["nodeportd", "run", "--manifests", "/m", "--node-name", "n"];
        let cli =
            Cli::try_parse_from(["nodeportd", "run", "--hostname-override", "n"]).expect("parse");
        let Command::Run(run) = cli.command else {
            panic!("run");
        };
        assert_eq!(
            (run.node_name.as_str(), run.manifests),
            ("n", None),
            "the API source"
        );
        assert!(Cli::try_parse_from([
            "nodeportd",
            "run",
            "--node-name",
            "n",
            "--manifests",
            "/m",
            "--kubeconfig",
            "/k"
        ])
        .is_err());
        let cli = Cli::try_parse_from(args).expect("parse");
        let Command::Run(run) = cli.command else {
            panic!("run");
        };
        assert_eq!(run.healthz_bind_address.to_string(), "0.0.0.0:10256");
        assert_eq!(run.metrics_bind_address.to_string(), "127.0.0.1:10249");
        assert_eq!(run.admin_address, None);
        let cli = Cli::try_parse_from(["nodeportd", "conntrack"]).expect("parse");
        let Command::Conntrack(ct) = cli.command else {
            panic!("conntrack");
        };
        assert_eq!(ct.metrics_bind_address.to_string(), "127.0.0.1:10249");
    }
}
