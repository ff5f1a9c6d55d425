//! Services as nodeportd needs them: the nodePorts to listen on and how to pick endpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Identity of a Service (`namespace/name`): labels metrics, logs and errors.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key; an empty namespace means `default`, as kubectl does.
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        let namespace = match namespace {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => "default".to_string(),
        };
        Self {
            namespace,
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a nodePort: the same number on TCP and UDP is two listeners.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Stream, relayed per connection.
    Tcp,
    /// Datagrams, tracked per client address.
    Udp,
}

impl Protocol {
    /// Parses a Kubernetes protocol string (`TCP` when absent, as the API defaults it).
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            other => Err(format!(
                "protocol {other} is not supported (TCP and UDP are)"
            )),
        }
    }

    /// Lowercase name used in metrics and the conntrack dump.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IP family: dual-stack Services listen on the node addresses of each family they have.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &std::net::IpAddr) -> Self {
        if ip.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }
}

/// externalTrafficPolicy: Local keeps traffic on this node's endpoints.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    Cluster,
    /// Only endpoints on this node; none means the flow is refused.
    Local,
}

/// One port of a Service that has a nodePort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name; matched against EndpointSlice port names (empty for a single unnamed port).
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The Service (cluster) port.
    pub port: u16,
    /// The port opened on every node.
    pub node_port: u16,
    /// targetPort as written; used only when a slice does not list its ports.
    pub target_port: TargetPort,
}

/// targetPort of a Service port: kube-proxy resolves endpoints through slice port names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A number: the endpoint port when the slice names none.
    Number(u16),
    /// A container port name, resolved only through EndpointSlice ports.
    Name(String),
}

/// A Service that nodeportd serves, reduced to what the dataplane needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// namespace/name.
    pub key: ServiceKey,
    /// Ports with a nodePort.
    pub ports: Vec<ServicePort>,
    /// Families to listen on (spec.ipFamilies, IPv4 when unset).
    pub families: Vec<Family>,
    /// externalTrafficPolicy.
    pub traffic_policy: TrafficPolicy,
    /// sessionAffinity ClientIP timeout, None without affinity.
    pub affinity: Option<Duration>,
    /// healthCheckNodePort (LoadBalancer + Local).
    pub health_check_node_port: Option<u16>,
    /// Annotations as written.
    pub annotations: BTreeMap<String, String>,
    /// The WASM plugin chain its annotations name (None: the native default decides).
    pub plugins: Option<std::sync::Arc<super::PluginSpec>>,
    /// `nodeportd.dev/proxy-protocol: v2`: TCP connections to endpoints start with a PROXY
    /// protocol v2 header carrying the client's address.
    pub proxy_protocol: bool,
    /// `nodeportd.dev/spread-udp: "true"`: each UDP nodePort is served by every worker.
    pub spread_udp: bool,
}
