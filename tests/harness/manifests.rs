//! The manifest directory the daemon reads, and YAML builders for the objects tests write in
//! it: Services (NodePort or LoadBalancer) and EndpointSlices with their endpoints.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::{TcpBackend, NS};

/// A temporary manifest directory; files are written atomically (hidden temp file + rename).
pub struct Manifests {
    dir: tempfile::TempDir,
}

impl Default for Manifests {
    fn default() -> Self {
        Self::new()
    }
}

impl Manifests {
    /// An empty directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("nodeportd-e2e-manifests")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of a file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` atomically: `.name.tmp` first (hidden: the daemon ignores it), then rename.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).expect("write manifest");
        std::fs::rename(&tmp, self.file(name)).expect("rename manifest");
    }

    /// Deletes `name`.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.file(name)).expect("remove manifest");
    }
}

/// Joins YAML documents into one multi-document file.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// One port of a Service.
#[derive(Clone, Debug)]
pub struct SvcPort {
    /// Port name (also the EndpointSlice port name).
    pub name: String,
    /// TCP or UDP.
    pub protocol: String,
    /// Service port.
    pub port: u16,
    /// nodePort (not checked here: tests write out-of-range ones on purpose).
    pub node_port: u32,
}

/// A Service of type NodePort (or LoadBalancer), built up and rendered as YAML.
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    ty: String,
    ports: Vec<SvcPort>,
    local: bool,
    affinity: Option<u32>,
    families: Vec<String>,
    health_check: Option<u16>,
    annotations: Vec<(String, String)>,
}

impl Service {
    /// A NodePort Service named `name` in [`NS`] without ports.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            ty: "NodePort".into(),
            ports: Vec::new(),
            local: false,
            affinity: None,
            families: Vec::new(),
            health_check: None,
            annotations: Vec::new(),
        }
    }

    /// metadata.name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// metadata.annotations[key] = value.
    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// `nodeportd.dev/plugins: chain`.
    pub fn plugins(self, chain: &str) -> Self {
        self.annotate("nodeportd.dev/plugins", chain)
    }

    /// `nodeportd.dev/config.<plugin>: config`.
    pub fn plugin_config(self, plugin: &str, config: &str) -> Self {
        self.annotate(&format!("nodeportd.dev/config.{plugin}"), config)
    }

    /// `nodeportd.dev/failure-policy: closed`.
    pub fn fail_closed(self) -> Self {
        self.annotate("nodeportd.dev/failure-policy", "closed")
    }

    /// spec.healthCheckNodePort (served for LoadBalancer Services with Local policy).
    pub fn health_check(mut self, port: u16) -> Self {
        self.health_check = Some(port);
        self
    }

    /// type: LoadBalancer.
    pub fn load_balancer(mut self) -> Self {
        self.ty = "LoadBalancer".into();
        self
    }

    /// Adds a TCP port.
    pub fn tcp(self, name: &str, node_port: u16) -> Self {
        self.port(name, "TCP", node_port as u32)
    }

    /// Adds a UDP port.
    pub fn udp(self, name: &str, node_port: u16) -> Self {
        self.port(name, "UDP", node_port as u32)
    }

    /// Adds a port with any protocol and nodePort value.
    pub fn port(mut self, name: &str, protocol: &str, node_port: u32) -> Self {
        let port = 80 + self.ports.len() as u16;
        self.ports.push(SvcPort {
            name: name.into(),
            protocol: protocol.into(),
            port,
            node_port,
        });
        self
    }

    /// externalTrafficPolicy: Local.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// sessionAffinity: ClientIP with this timeout.
    pub fn affinity(mut self, seconds: u32) -> Self {
        self.affinity = Some(seconds);
        self
    }

    /// spec.ipFamilies.
    pub fn families(mut self, families: &[&str]) -> Self {
        self.families = families.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The YAML document.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "apiVersion: v1\nkind: Service");
        let _ = writeln!(y, "metadata:\n  name: {}\n  namespace: {NS}", self.name);
        if !self.annotations.is_empty() {
            let _ = writeln!(y, "  annotations:");
            for (k, v) in &self.annotations {
                let _ = writeln!(
                    y,
                    "    {k}: {}",
                    serde_json::to_string(v).unwrap_or_default()
                );
            }
        }
        let _ = writeln!(y, "spec:\n  type: {}", self.ty);
        if self.local {
            let _ = writeln!(y, "  externalTrafficPolicy: Local");
        }
        if let Some(p) = self.health_check {
            let _ = writeln!(y, "  healthCheckNodePort: {p}");
        }
        if let Some(s) = self.affinity {
            let _ = writeln!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {s}"
            );
        }
        if !self.families.is_empty() {
            let _ = writeln!(y, "  ipFamilyPolicy: RequireDualStack\n  ipFamilies:");
            for f in &self.families {
                let _ = writeln!(y, "  - {f}");
            }
        }
        let _ = writeln!(y, "  ports:");
        for p in &self.ports {
            let _ = writeln!(
                y,
                "  - name: {}\n    protocol: {}\n    port: {}\n    targetPort: {}\n    nodePort: {}",
                p.name, p.protocol, p.port, p.port, p.node_port
            );
        }
        y
    }
}

/// One endpoint of an EndpointSlice; conditions left None are omitted (API defaults apply).
#[derive(Clone, Debug)]
pub struct Ep {
    /// Address.
    pub ip: IpAddr,
    /// conditions.ready.
    pub ready: Option<bool>,
    /// conditions.serving.
    pub serving: Option<bool>,
    /// conditions.terminating.
    pub terminating: Option<bool>,
    /// nodeName.
    pub node: Option<String>,
}

impl Ep {
    /// A ready endpoint.
    pub fn ready(ip: IpAddr) -> Self {
        Self {
            ip,
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            node: None,
        }
    }

    /// An endpoint with explicit conditions.
    pub fn with(ip: IpAddr, ready: bool, serving: bool, terminating: bool) -> Self {
        Self {
            ip,
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
            node: None,
        }
    }

    /// Sets nodeName.
    pub fn on(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }
}

/// An EndpointSlice with one port and its endpoints (all on that port), as YAML.
pub fn slice(
    name: &str,
    service: &str,
    port_name: &str,
    protocol: &str,
    port: u16,
    eps: &[Ep],
) -> String {
    let family = match eps.first().map(|e| e.ip) {
        Some(IpAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    };
    let mut y = String::new();
    let _ = writeln!(y, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice");
    let _ = writeln!(
        y,
        "metadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    kubernetes.io/service-name: {service}"
    );
    let _ = writeln!(y, "addressType: {family}");
    let _ = writeln!(
        y,
        "ports:\n- name: {port_name}\n  protocol: {protocol}\n  port: {port}"
    );
    if eps.is_empty() {
        let _ = writeln!(y, "endpoints: []");
    } else {
        let _ = writeln!(y, "endpoints:");
    }
    for e in eps {
        let _ = writeln!(y, "- addresses: [\"{}\"]", e.ip);
        let mut conds = Vec::new();
        for (k, v) in [
            ("ready", e.ready),
            ("serving", e.serving),
            ("terminating", e.terminating),
        ] {
            if let Some(v) = v {
                conds.push(format!("{k}: {v}"));
            }
        }
        if !conds.is_empty() {
            let _ = writeln!(y, "  conditions: {{{}}}", conds.join(", "));
        }
        if let Some(n) = &e.node {
            let _ = writeln!(y, "  nodeName: {n}");
        }
    }
    y
}

/// A manifests directory with one TCP Service `name` (port "http" on `node_port`) whose only
/// endpoint is `backend`: the setup most single-Service tests start from.
pub fn one_tcp_service(name: &str, node_port: u16, backend: &TcpBackend) -> Manifests {
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &docs(&[
            Service::new(name).tcp("http", node_port).yaml(),
            slices(name, "http", "TCP", &[backend.addr()]),
        ]),
    );
    m
}

/// One slice per backend address (each backend listens on its own port), all ready:
/// `{service}-{i}` for the i-th address.
pub fn slices(service: &str, port_name: &str, protocol: &str, backends: &[SocketAddr]) -> String {
    named_slices(service, service, port_name, protocol, backends)
}

/// Like [`slices`], named `{prefix}-{i}` (for Services with several ports).
pub fn named_slices(
    prefix: &str,
    service: &str,
    port_name: &str,
    protocol: &str,
    backends: &[SocketAddr],
) -> String {
    let parts: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, a)| {
            slice(
                &format!("{prefix}-{i}"),
                service,
                port_name,
                protocol,
                a.port(),
                &[Ep::ready(a.ip())],
            )
        })
        .collect();
    docs(&parts)
}
