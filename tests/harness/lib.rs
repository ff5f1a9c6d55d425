//! Harness for the nodeportd end-to-end tests: start the real binary against a manifest
//! directory, real backends on loopback, and clients that talk to its nodePorts.
//!
//! Rules every test follows (and this harness enforces where it can):
//! - traffic goes only to loopback (127.0.0.0/8, ::1) or to 198.18.0.0/15 addresses of
//!   network namespaces a test created itself;
//! - every wait is bounded ([`wait_until`] polls every 20 ms up to a deadline);
//! - everything a test creates (daemon, backend threads, namespaces, temp dirs) is removed in
//!   `Drop`, so also when the test panics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `cond` every 20 ms until it is true or `timeout` has passed; returns the last result.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(STEP);
    }
}

/// Like [`wait_until`] but panics with `what` when the condition never held.
#[track_caller]
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, cond),
        "timed out after {timeout:?} waiting for: {what}"
    );
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// The nodeportd binary: `$NODEPORTD_BIN`, else `target/debug/nodeportd` next to the test
/// executable (which lives in `target/debug/deps/`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NODEPORTD_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NODEPORTD_BIN={} does not exist; run `cargo build -p nodeportd` or fix the variable",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("test executable has a directory");
    let candidates = [dir.join("nodeportd"), dir.join("..").join("nodeportd")];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "nodeportd binary not found (looked at {} and {}): run `cargo build -p nodeportd` first, \
         or set NODEPORTD_BIN",
        candidates[0].display(),
        candidates[1].display()
    );
}

// ---------------------------------------------------------------------------------------------
// Plugins
// ---------------------------------------------------------------------------------------------

/// Where `scripts/build-plugins.sh` put the components: `$NODEPORTD_PLUGINS`, else
/// `target/plugins` of this workspace.
pub fn built_plugins() -> PathBuf {
    let dir = std::env::var_os("NODEPORTD_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    assert!(
        dir.join("consistent-hash.wasm").is_file(),
        "plugins not built in {}: run scripts/build-plugins.sh first (or set NODEPORTD_PLUGINS)",
        dir.display()
    );
    dir
}

/// The path of a built plugin (`hostile/<name>` for the test suite's hostile ones).
pub fn built_plugin(name: &str) -> PathBuf {
    let p = built_plugins().join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// A plugin directory of the test's own (so it can add, swap and break files).
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    /// Holds copies of the named built plugins (`hostile/spin` is installed as `spin.wasm`).
    pub fn with(names: &[&str]) -> Self {
        let d = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for n in names {
            d.install(n, n.rsplit('/').next().unwrap_or(n));
        }
        d
    }

    /// The directory, for `--plugin-dir`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies built plugin `built` in as `<name>.wasm` (atomically: written aside, renamed).
    pub fn install(&self, built: &str, name: &str) {
        let bytes = std::fs::read(built_plugin(built)).expect("read built plugin");
        self.write(name, &bytes);
    }

    /// Writes `<name>.wasm` atomically.
    pub fn write(&self, name: &str, bytes: &[u8]) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).expect("write plugin");
        std::fs::rename(&tmp, self.dir.path().join(format!("{name}.wasm"))).expect("rename plugin");
    }

    /// Starts the daemon on `manifests`, loopback only, with this plugin directory and
    /// `extra` arguments.
    pub fn start(&self, manifests: &Manifests, extra: &[&str]) -> Daemon {
        let dir = self.path().display().to_string();
        let mut args = vec!["--nodeport-addresses", "127.0.0.0/8", "--plugin-dir", &dir];
        args.extend_from_slice(extra);
        Daemon::start(manifests.path(), &args)
    }
}

/// In-process plugin rigs (the runtime through the daemon's library), shared by
/// `tests/e2e/plugin_runtime.rs` and `benches/plugins.rs`.
pub mod rig {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use nodeportd::balance::FlowInfo;
    use nodeportd::model::{
        Backend, FailurePolicy, Family, Frontend, FrontendKey, PluginRef, PluginSpec, Protocol,
        ServiceKey, TrafficPolicy,
    };
    use nodeportd::plugin::wire::{address, protocol, types};
    use nodeportd::plugin::Chain;

    /// `n` ready endpoints 198.19.x.y:8080.
    pub fn backends(n: u32) -> Arc<[Backend]> {
        (0..n)
            .map(|i| {
                Backend::ready(SocketAddr::from((
                    [198, 19, (i >> 8) as u8, i as u8 + 1],
                    8080,
                )))
            })
            .collect()
    }

    /// TCP nodePort 30080 of Service `rig/svc` over `backends`, with the one-plugin chain
    /// `plugin` configured with `config` (failure policy open).
    pub fn frontend(plugin: &str, config: &str, backends: &Arc<[Backend]>) -> Frontend {
        Frontend {
            key: FrontendKey {
                protocol: Protocol::Tcp,
                node_port: 30080,
            },
            service: ServiceKey::new(Some("rig"), "svc"),
            port_name: "http".into(),
            families: vec![Family::V4],
            v4: backends.clone(),
            v6: Arc::from(Vec::new()),
            serving: Arc::from(Vec::new()),
            affinity: None,
            policy: TrafficPolicy::Cluster,
            plugins: Some(Arc::new(PluginSpec {
                chain: vec![PluginRef {
                    name: plugin.into(),
                    config: config.into(),
                }],
                failure_policy: FailurePolicy::Open,
            })),
        }
    }

    /// New flow number `i` (from 198.18.x.y) on nodePort 30080.
    pub fn flow(i: u64) -> FlowInfo {
        FlowInfo::new(
            0,
            i,
            FrontendKey {
                protocol: Protocol::Tcp,
                node_port: 30080,
            },
            SocketAddr::from((
                [198, 18, (i >> 8) as u8, i as u8],
                40000 + (i % 20000) as u16,
            )),
            SocketAddr::from(([198, 18, 255, 1], 30080)),
        )
    }

    /// The flow record plugins of `chain` see for `f`.
    pub fn record(chain: &Chain, f: &FlowInfo) -> types::Flow {
        types::Flow {
            id: f.id,
            handle: chain.handle(Family::V4),
            protocol: protocol(f.frontend.protocol),
            client: address(f.client.ip()),
            client_port: f.client.port(),
            node: address(f.node.ip()),
            node_port: f.node.port(),
            hash: f.hash,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

fn ipv6_loopback_works() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// True when `::1` can be bound on this machine.
pub fn has_ipv6() -> bool {
    static CACHE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CACHE.get_or_init(ipv6_loopback_works)
}

fn port_is_free(port: u16) -> bool {
    let v4 = Ipv4Addr::LOCALHOST;
    let mut ok = TcpListener::bind((v4, port)).is_ok() && UdpSocket::bind((v4, port)).is_ok();
    if ok && has_ipv6() {
        let v6 = std::net::Ipv6Addr::LOCALHOST;
        ok = TcpListener::bind((v6, port)).is_ok() && UdpSocket::bind((v6, port)).is_ok();
    }
    ok
}

/// A nodePort (30000-32767) no other test of this process was given and that is free on
/// loopback (TCP and UDP, both families) right now. Processes start at different offsets.
pub fn node_port() -> u16 {
    const LO: u32 = 30000;
    const SPAN: u32 = 32767 - 30000 + 1;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(97)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = (LO + n) as u16;
        if port_is_free(port) {
            return port;
        }
    }
    panic!("no free nodePort in 30000-32767");
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A TCP port on `ip` that is bound but not listening for as long as the returned descriptor
/// lives: connecting to it is refused, and nothing else can take it meanwhile.
pub fn dead_tcp_port(ip: IpAddr) -> (OwnedFd, SocketAddr) {
    let domain = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let (sa, len) = sockaddr(SocketAddr::new(ip, 0));
    // SAFETY: socket/bind on a descriptor we own, with a sockaddr built for its family.
    let fd = unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let owned = OwnedFd::from_raw_fd(fd);
        let rc = libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len);
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        owned
    };
    // A bound, never listening TCP socket: read the port through a std wrapper on a dup.
    let probe = TcpListener::from(fd.try_clone().expect("dup"));
    let addr = probe.local_addr().expect("getsockname");
    drop(probe);
    (fd, addr)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A minimal HTTP/1.0 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    http_get_full(addr, path).map(|(status, _, body)| (status, body))
}

/// A minimal HTTP/1.0 GET: status code, header block (lowercased names) and body.
pub fn http_get_full(addr: SocketAddr, path: &str) -> io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
    let headers = head
        .lines()
        .skip(1)
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}:{v}", k.to_ascii_lowercase()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((status, headers, body.to_string()))
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// A running `nodeportd run`, killed on drop (its log is printed when the test failed).
pub struct Daemon {
    child: Child,
    admin: SocketAddr,
    log_path: PathBuf,
    status: Option<ExitStatus>,
    _logs: tempfile::TempDir,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Daemon {
    /// Starts nodeportd on `manifests` with a free admin port on 127.0.0.1 and `extra` args
    /// (`--node-name` defaults to [`NODE`] unless given), and waits until /readyz is 200.
    pub fn start(manifests: &Path, extra: &[&str]) -> Daemon {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(manifests, extra) {
                Ok(d) => return d,
                // Another process may have taken the admin port between probe and bind.
                Err(e) => last = e,
            }
        }
        panic!("nodeportd did not become ready: {last}");
    }

    fn try_start(manifests: &Path, extra: &[&str]) -> Result<Daemon, String> {
        let logs = tempfile::Builder::new()
            .prefix("nodeportd-e2e-log")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log_path = logs.path().join("nodeportd.log");
        let log = File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--admin-address")
            .arg(admin.to_string());
        if !extra.contains(&"--node-name") {
            cmd.args(["--node-name", NODE]);
        }
        // Source preservation programs the namespace's routing: only the test about it asks.
        if !extra.contains(&"--preserve-source") {
            cmd.args(["--preserve-source", "off"]);
        }
        cmd.args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary().display()))?;
        let mut d = Daemon {
            child,
            admin,
            log_path,
            status: None,
            _logs: logs,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            if d.poll_exit().is_some() {
                return true;
            }
            matches!(http_get(admin, "/readyz"), Ok((200, _)))
        });
        if let Some(st) = d.status {
            return Err(format!("nodeportd exited with {st}; log:\n{}", d.log()));
        }
        if !ready {
            return Err(format!(
                "/readyz never answered 200 within 20 s; log:\n{}",
                d.log()
            ));
        }
        Ok(d)
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Admin server address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET on the admin server, panicking on transport errors.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The /metrics text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// Sum of the samples whose series (`name{labels}`) contains `series` (0 when none does).
    /// Pass the name and some labels, e.g. `nodeportd_flows_total{service="e2e/web"`.
    pub fn metric(&self, series: &str) -> f64 {
        self.metric_opt(series).unwrap_or(0.0)
    }

    /// Like [`Daemon::metric`], None when no series matches.
    pub fn metric_opt(&self, series: &str) -> Option<f64> {
        parse_metric(&self.metrics(), series)
    }

    /// Sum of the series of metric `name` whose line contains every one of `labels`
    /// (e.g. `["plugin=\"pin\"", "role=\"selection\""]`).
    pub fn metric_with(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// The /conntrack rows.
    pub fn conntrack(&self) -> serde_json::Value {
        let (status, body) = self.get("/conntrack");
        assert_eq!(status, 200, "/conntrack: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/conntrack is not JSON ({e}): {body}"))
    }

    /// `nodeportd conntrack --admin-address ADDR [args]`: its output.
    pub fn conntrack_cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary());
        cmd.arg("conntrack")
            .arg("--admin-address")
            .arg(self.admin.to_string())
            .args(args)
            .stdin(Stdio::null());
        run_bounded(cmd, Duration::from_secs(10))
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.poll_exit().is_some());
        self.status
    }

    /// Everything the daemon logged so far (ANSI colours removed).
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill(); // SIGKILL
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- nodeportd log (admin {}) -----\n{}\n----- end of nodeportd log -----",
                self.admin,
                self.log()
            );
        }
    }
}

/// Sum of the samples of `text` whose series contains `series`; None when none matches.
pub fn parse_metric(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if name.contains(series) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    cmd.stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("spawn");
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let s = child.wait().expect("wait");
            panic!("{cmd:?} did not finish within {timeout:?} (killed: {s})");
        }
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// A TCP backend: for each connection it reads one line, answers `"{id}\n"`, then echoes
/// everything until the client's EOF, then closes.
pub struct TcpBackend {
    addr: SocketAddr,
    id: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<BTreeMap<usize, TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

fn serve_tcp_conn(mut s: TcpStream, id: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(60)));
    // The first line, byte by byte so nothing after it is consumed here.
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    if s.write_all(format!("{id}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

impl TcpBackend {
    /// Listens on `addr` (port 0 for a free one) and serves on a thread.
    pub fn start(addr: impl ToSocketAddrs, id: &str) -> Self {
        let listener = TcpListener::bind(addr).expect("bind TCP backend");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Mutex::new(BTreeMap::new()));
        let thread = {
            let (stop, accepted, open, id) =
                (stop.clone(), accepted.clone(), open.clone(), id.to_string());
            std::thread::Builder::new()
                .name(format!("backend-{id}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(s) = conn else { continue };
                        let n = accepted.fetch_add(1, Ordering::SeqCst);
                        // A handle Drop can shut down, removed once the connection is served.
                        if let Ok(c) = s.try_clone() {
                            open.lock().unwrap().insert(n, c);
                        }
                        let (id, open) = (id.clone(), open.clone());
                        let _ = std::thread::Builder::new()
                            .name(format!("backend-{id}-conn"))
                            .spawn(move || {
                                serve_tcp_conn(s, &id);
                                open.lock().unwrap().remove(&n);
                            });
                    }
                })
                .expect("spawn backend")
        };
        Self {
            addr,
            id: id.into(),
            stop,
            accepted,
            open,
            thread: Some(thread),
        }
    }

    /// Listens on a free port of 127.0.0.1.
    pub fn local(id: &str) -> Self {
        Self::start("127.0.0.1:0", id)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id it answers with.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in std::mem::take(&mut *self.open.lock().unwrap()).into_values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A UDP backend answering each datagram with `"{id}:{payload}"`.
pub struct UdpBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
    peers: Arc<Mutex<BTreeMap<SocketAddr, usize>>>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    /// Binds `addr` (port 0 for a free one) and serves on a thread.
    pub fn start(addr: impl ToSocketAddrs, id: &str) -> Self {
        let sock = UdpSocket::bind(addr).expect("bind UDP backend");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(BTreeMap::new()));
        let thread = {
            let (stop, received, peers, id) = (
                stop.clone(),
                received.clone(),
                peers.clone(),
                id.to_string(),
            );
            std::thread::Builder::new()
                .name(format!("udp-backend-{id}"))
                .spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((n, from)) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        received.fetch_add(1, Ordering::SeqCst);
                        *peers.lock().unwrap().entry(from).or_default() += 1;
                        let mut reply = format!("{id}:").into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = sock.send_to(&reply, from);
                    }
                })
                .expect("spawn UDP backend")
        };
        Self {
            addr,
            stop,
            received,
            peers,
            thread: Some(thread),
        }
    }

    /// Binds a free port of 127.0.0.1.
    pub fn local(id: &str) -> Self {
        Self::start("127.0.0.1:0", id)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Source addresses seen (the proxy's upstream sockets) and datagrams from each.
    pub fn peers(&self) -> BTreeMap<SocketAddr, usize> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A TCP connection through a nodePort to a [`TcpBackend`].
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The backend id that answered the first line.
    pub backend: String,
}

impl Conn {
    /// Connects to `addr`, sends a line and reads the backend id.
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        Self::open_from(None, addr)
    }

    /// Like [`Conn::open`] from a chosen source address (e.g. 127.0.0.2).
    pub fn open_from(source: Option<IpAddr>, addr: SocketAddr) -> io::Result<Conn> {
        let stream = connect(source, addr)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        (&stream).write_all(b"hello\n")?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed before the backend answered (got {line:?})"),
            ));
        }
        Ok(Conn {
            stream,
            reader,
            backend: line.trim_end().to_string(),
        })
    }

    /// The local (client) address.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Sends `msg` and reads the echo of it.
    pub fn echo(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        (&self.stream).write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        self.reader.read_exact(&mut got)?;
        Ok(got)
    }
}

/// Connects with a bounded timeout, optionally from a given source address.
pub fn connect(source: Option<IpAddr>, addr: SocketAddr) -> io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect_timeout(&addr, IO_TIMEOUT);
    };
    // std cannot bind before connect: do it by hand with a blocking socket.
    // SAFETY: socket/bind/connect on a descriptor we own; sockaddr built for its family.
    unsafe {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let (sa, len) = sockaddr(SocketAddr::new(src, 0));
        if libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let (da, dlen) = sockaddr(addr);
        if libc::connect(fd, (&da as *const libc::sockaddr_storage).cast(), dlen) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpStream::from(owned))
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr structures are valid; we copy at most their own size.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                std::ptr::copy_nonoverlapping(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                );
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                std::ptr::copy_nonoverlapping(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in6>(),
                );
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
}

/// Which backend answers a fresh connection to `addr` (the connection is then closed).
pub fn who(addr: SocketAddr) -> io::Result<String> {
    Conn::open(addr).map(|c| c.backend)
}

/// Like [`who`] from a chosen source address.
pub fn who_from(source: IpAddr, addr: SocketAddr) -> io::Result<String> {
    Conn::open_from(Some(source), addr).map(|c| c.backend)
}

/// The nodePort address on 127.0.0.1.
pub fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A connected UDP client on 127.0.0.1 (or ::1 for an IPv6 target) with a read timeout.
pub fn udp_client(target: SocketAddr, read_timeout: Duration) -> UdpSocket {
    let bind = if target.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(bind).expect("bind UDP client");
    s.connect(target).expect("connect UDP client");
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// Sends `payload` and waits for one reply.
pub fn udp_ask(s: &UdpSocket, payload: &str) -> io::Result<String> {
    s.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------------

/// True when running as root (namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A network namespace joined to the root namespace by a veth pair on a /30 of
/// 198.18.0.0/15 (root side `.1`, namespace side `.2`). Deleted on drop.
pub struct Netns {
    name: String,
    veth: String,
    root_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

fn ip_cmd(args: &[&str]) -> io::Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdin(Stdio::null());
    let out = run_bounded(cmd, Duration::from_secs(10));
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Netns {
    /// Creates `{prefix}-{pid}-{n}` with its veth pair and addresses.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        static COUNTER: AtomicU16 = AtomicU16::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // 8192 /30 subnets in 198.18.0.0/15; skip any already on an interface.
        let mut subnet = (pid.wrapping_mul(31).wrapping_add(n as u32 * 7)) % 8192;
        let existing = {
            let mut c = Command::new("ip");
            c.args(["-4", "-o", "addr", "show"]);
            String::from_utf8_lossy(&run_bounded(c, Duration::from_secs(10)).stdout).into_owned()
        };
        let mut picked = None;
        for _ in 0..8192 {
            let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + subnet * 4;
            let root_ip = Ipv4Addr::from(base + 1);
            let ns_ip = Ipv4Addr::from(base + 2);
            if !existing.contains(&format!("inet {root_ip}/"))
                && !existing.contains(&format!("inet {ns_ip}/"))
            {
                picked = Some((root_ip, ns_ip));
                break;
            }
            subnet = (subnet + 1) % 8192;
        }
        let (root_ip, ns_ip) = picked.ok_or_else(|| io::Error::other("no free /30"))?;
        Self::remove_stale(prefix);
        let name = format!("{prefix}-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let veth = format!("np{}x{n}", pid % 1_000_000);
        let peer = format!("np{}y{n}", pid % 1_000_000);
        ip_cmd(&["netns", "add", &name])?;
        let ns = Netns {
            name: name.clone(),
            veth: veth.clone(),
            root_ip,
            ns_ip,
        };
        // From here on, Drop cleans up whatever was made.
        ip_cmd(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip_cmd(&["link", "set", &peer, "netns", &name])?;
        ip_cmd(&["addr", "add", &format!("{root_ip}/30"), "dev", &veth])?;
        ip_cmd(&["link", "set", &veth, "up"])?;
        ns.exec_ok(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &peer])?;
        ns.exec_ok(&["ip", "link", "set", &peer, "up"])?;
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Deletes `{prefix}-{pid}-{n}` namespaces left by test processes that no longer exist
    /// (killed before their Drop ran); the veth pair goes with its namespace.
    fn remove_stale(prefix: &str) {
        let mut c = Command::new("ip");
        c.args(["netns", "list"]);
        let list =
            String::from_utf8_lossy(&run_bounded(c, Duration::from_secs(10)).stdout).into_owned();
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
                continue;
            };
            let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip_cmd(&["netns", "del", name]);
            }
        }
    }

    /// Namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root namespace's address on the link (reachable from inside).
    pub fn root_ip(&self) -> Ipv4Addr {
        self.root_ip
    }

    /// The namespace's own address.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`), bounded to 10 s.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null());
        run_bounded(c, Duration::from_secs(10))
    }

    fn exec_ok(&self, cmd: &[&str]) -> io::Result<()> {
        let out = self.exec(cmd);
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{}: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Runs `f` on a fresh thread that has joined the namespace: sockets it creates live in
    /// the namespace (and stay there when handed back).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace file descriptor, affecting this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the peer end, and with it the root end.
        let _ = ip_cmd(&["link", "del", &self.veth]);
        let _ = ip_cmd(&["netns", "del", &self.name]);
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the tests
// ---------------------------------------------------------------------------------------------

/// Daemon args that keep it on loopback (IPv4).
pub const LO_ONLY: [&str; 2] = ["--nodeport-addresses", "127.0.0.0/8"];

/// True when `r` failed with ECONNREFUSED.
pub fn refused<T>(r: &io::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Rows of a /conntrack dump with this protocol ("tcp" or "udp").
pub fn rows(ct: &serde_json::Value, protocol: &str) -> Vec<serde_json::Value> {
    ct.as_array()
        .expect("/conntrack is an array")
        .iter()
        .filter(|r| r["protocol"] == protocol)
        .cloned()
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), for transfer checks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
