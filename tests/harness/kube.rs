//! A real Kubernetes API server for a test: etcd and kube-apiserver (built by
//! `scripts/kube-apiserver.sh build` into target/kube-apiserver/) started on free loopback
//! ports (or the API server on an address of the test's choice, for clients in other
//! network namespaces: [`ApiServer::start_on`]) in a temp directory of the test's own, with
//! RBAC authorization and two static tokens: an admin (system:masters) and one that
//! authenticates as the ServiceAccount kube-system/nodeportd (so the deploy/ ClusterRole
//! decides what it may do). The API server can be killed and started again over the same
//! etcd, and etcd compacted, so the next watch from an old resource version gets 410 Gone.
//! Everything is killed on drop.
//!
//! Objects are written with server-side apply (create or update, idempotent) from the YAML the
//! manifests builders make; requests go through curl, bounded in time.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{run_bounded, wait_until, NS};

/// The admin token (system:masters).
pub const ADMIN_TOKEN: &str = "nodeportd-e2e-admin";
/// The token of the ServiceAccount kube-system/nodeportd.
pub const SA_TOKEN: &str = "nodeportd-e2e-serviceaccount";

/// Where the built API server is: `$KAPI_DIR`, else target/kube-apiserver of this checkout.
fn built() -> PathBuf {
    let dir = std::env::var_os("KAPI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("kube-apiserver")
        });
    assert!(
        dir.join("bin/kube-apiserver").is_file() && dir.join("root/usr/bin/etcd").is_file(),
        "no API server in {}: run `scripts/kube-apiserver.sh build` first (.ci/run does)",
        dir.display()
    );
    dir
}

fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

fn free_port_on(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
}

/// The kinds the tests write, and where they live in the API.
#[derive(Copy, Clone, Debug)]
pub enum Kind {
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice (the CRD stand-in on 1.20).
    EndpointSlice,
    /// core/v1 ConfigMap.
    ConfigMap,
}

impl Kind {
    fn collection(self, ns: &str) -> String {
        match self {
            Self::Service => format!("/api/v1/namespaces/{ns}/services"),
            Self::EndpointSlice => {
                format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
            }
            Self::ConfigMap => format!("/api/v1/namespaces/{ns}/configmaps"),
        }
    }
}

/// etcd plus kube-apiserver, killed on drop.
pub struct ApiServer {
    dir: tempfile::TempDir,
    built: PathBuf,
    etcd: Child,
    etcd_port: u16,
    apiserver: Option<Child>,
    port: u16,
    second: Option<(u16, Child)>,
    range: String,
    host: Ipv4Addr,
}

impl ApiServer {
    /// Starts etcd and the API server, waits for /readyz, installs the EndpointSlice v1
    /// stand-in and creates the test namespace.
    pub fn start() -> ApiServer {
        Self::start_with_range("30000-32767")
    }

    /// Like [`ApiServer::start`], allocating nodePorts from `range` (`--service-node-port-range`).
    pub fn start_with_range(range: &str) -> ApiServer {
        Self::start_at(Ipv4Addr::LOCALHOST, range)
    }

    /// Like [`ApiServer::start`] with the API server bound on `host` (its --bind-address and
    /// --advertise-address) instead of 127.0.0.1, for clients in other network namespaces
    /// (the root side of a veth reaches them). Its self-signed certificate covers that
    /// address (kube-apiserver puts --advertise-address and --bind-address in it), so
    /// clients verify it with the kubeconfig's CA. etcd stays on loopback.
    pub fn start_on(host: Ipv4Addr) -> ApiServer {
        Self::start_at(host, "30000-32767")
    }

    fn start_at(host: Ipv4Addr, range: &str) -> ApiServer {
        let built = built();
        let dir = tempfile::Builder::new()
            .prefix("nodeportd-e2e-kapi")
            .tempdir()
            .expect("tempdir");
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).expect("mkdir pki");
        let key = pki.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .expect("openssl (apt install openssl)");
        assert!(status.success(), "openssl genrsa");
        std::fs::write(
            pki.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n\
                 {SA_TOKEN},system:serviceaccount:kube-system:nodeportd,sa-uid,\"system:serviceaccounts,system:serviceaccounts:kube-system\"\n"
            ),
        )
        .expect("tokens.csv");
        let etcd_port = free_port();
        let peer = free_port();
        let log = File::create(dir.path().join("etcd.log")).expect("etcd.log");
        let etcd = Command::new(built.join("root/usr/bin/etcd"))
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let mut api = ApiServer {
            dir,
            built,
            etcd,
            etcd_port,
            apiserver: None,
            port: 0,
            second: None,
            range: range.to_string(),
            host,
        };
        assert!(
            wait_until(Duration::from_secs(20), || api
                .etcd("/health", None)
                .is_some_and(|b| b.contains("true"))),
            "etcd did not become healthy: {}",
            api.file("etcd.log")
        );
        api.start_apiserver();
        let crd = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/endpointslice-crd.json"),
        )
        .expect("endpointslice-crd.json");
        let (code, body) = api.request(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            &crd,
        );
        assert_eq!(code, 201, "EndpointSlice v1 stand-in: {body}");
        assert!(
            wait_until(Duration::from_secs(20), || api
                .get("/apis/discovery.k8s.io/v1/endpointslices")
                .0
                == 200),
            "discovery.k8s.io/v1 not served"
        );
        for ns in [NS, "kube-system"] {
            let (code, body) = api.request(
                "POST",
                "/api/v1/namespaces",
                "application/json",
                &format!(
                    r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}"}}}}"#
                ),
            );
            assert!(code == 201 || code == 409, "namespace {ns}: {code} {body}");
        }
        api
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn spawn(&self, port: u16) -> Child {
        let pki = self.dir.path().join("pki");
        let log = File::create(self.dir.path().join(format!("apiserver-{port}.log"))).expect("log");
        Command::new(self.built.join("bin/kube-apiserver"))
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .arg("--runtime-config=discovery.k8s.io/v1beta1=false")
            .arg(format!("--bind-address={}", self.host))
            .arg(format!("--advertise-address={}", self.host))
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", pki.display()))
            .arg(format!(
                "--token-auth-file={}",
                pki.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg(format!("--service-node-port-range={}", self.range))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg("--endpoint-reconciler-type=none")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--enable-priority-and-fairness=false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver")
    }

    /// Starts an API server process on `port` (0: a free one) and waits for its /readyz.
    fn launch(&self, mut port: u16) -> (u16, Child) {
        let fixed = port != 0;
        for _ in 0..3 {
            if !fixed {
                port = free_port_on(self.host);
            }
            let mut child = self.spawn(port);
            let exited = |c: &mut Child| c.try_wait().ok().flatten().is_some();
            let up = wait_until(Duration::from_secs(60), || {
                exited(&mut child) || get(self.host, port, "/readyz").0 == 200
            });
            if up && !exited(&mut child) {
                return (port, child);
            }
            // Its port may have been taken between choosing and binding: another port.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "kube-apiserver did not start on {port}: {}",
            self.file(&format!("apiserver-{port}.log"))
        );
    }

    /// Starts the API server the daemon talks to (again: same port, same etcd).
    pub fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "API server already running");
        let (port, child) = self.launch(self.port);
        self.port = port;
        self.apiserver = Some(child);
    }

    /// Starts a second API server over the same etcd, on a port of its own: requests go
    /// there while the first is down (changes made while the daemon's API server is away).
    pub fn start_second(&mut self) {
        if self.second.is_none() {
            self.second = Some(self.launch(0));
        }
    }

    /// The port requests go to: the daemon's API server, or the second one while it is down.
    fn live_port(&self) -> u16 {
        match (&self.apiserver, &self.second) {
            (None, Some((p, _))) => *p,
            _ => self.port,
        }
    }

    /// Kills kube-apiserver (SIGKILL; etcd keeps the data).
    pub fn kill_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The API server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// A kubeconfig for `token` (the CA is the API server's self-signed one).
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{}", &token[13..]));
        let ca = self.dir.path().join("pki/apiserver.crt");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: e2e, cluster: {{server: \"https://{}:{}\", certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: e2e, user: {{token: {token}}}}}]\n\
                 contexts: [{{name: e2e, context: {{cluster: e2e, user: e2e}}}}]\n\
                 current-context: e2e\n",
                self.host,
                self.port,
                ca.display()
            ),
        )
        .expect("kubeconfig");
        path
    }

    /// An admin request: (HTTP status, body); status 0 when the server did not answer.
    pub fn request(&self, method: &str, path: &str, ctype: &str, body: &str) -> (u16, String) {
        self.request_as(ADMIN_TOKEN, method, path, ctype, body)
    }

    /// A request with `token`.
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        ctype: &str,
        body: &str,
    ) -> (u16, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("body");
        std::fs::write(&input, body).expect("body");
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-m", "10", "-X", method, "-w", "\n%{http_code}"])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg("-H")
            .arg(format!("Content-Type: {ctype}"))
            .arg(format!("https://{}:{}{path}", self.host, self.live_port()));
        if !body.is_empty() {
            cmd.arg("--data-binary")
                .arg(format!("@{}", input.display()));
        }
        let out = run_bounded(cmd, Duration::from_secs(15));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// An admin GET.
    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.host, self.live_port(), path)
    }

    /// Creates or updates an object (server-side apply) in namespace `ns` from its YAML.
    pub fn apply_in(&self, ns: &str, kind: Kind, name: &str, yaml: &str) {
        let path = format!("{}/{name}?fieldManager=e2e&force=true", kind.collection(ns));
        let (code, body) = self.request("PATCH", &path, "application/apply-patch+yaml", yaml);
        assert!(
            code == 200 || code == 201,
            "apply {kind:?} {ns}/{name}: {code} {body}"
        );
    }

    /// [`ApiServer::apply_in`] the test namespace.
    pub fn apply(&self, kind: Kind, name: &str, yaml: &str) {
        self.apply_in(NS, kind, name, yaml);
    }

    /// Deletes an object of the test namespace.
    pub fn delete(&self, kind: Kind, name: &str) {
        self.delete_in(NS, kind, name);
    }

    /// Deletes an object of namespace `ns`.
    pub fn delete_in(&self, ns: &str, kind: Kind, name: &str) {
        let path = format!("{}/{name}", kind.collection(ns));
        let (code, body) = self.request("DELETE", &path, "application/json", "");
        assert_eq!(code, 200, "delete {kind:?} {ns}/{name}: {body}");
    }

    /// Creates one object of the kinds deploy/ holds (ServiceAccount, ClusterRole(Binding),
    /// Role(Binding)) from its YAML document, as `kubectl create` would.
    pub fn create_any(&self, doc: &str) {
        let field = |indent: &str, key: &str| {
            doc.lines()
                .find_map(|l| l.strip_prefix(indent)?.strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        let kind = field("", "kind").expect("kind");
        let ns = field("  ", "namespace").unwrap_or_else(|| "default".into());
        let rbac = "/apis/rbac.authorization.k8s.io/v1";
        let path = match kind.as_str() {
            "ServiceAccount" => format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            "ClusterRole" => format!("{rbac}/clusterroles"),
            "ClusterRoleBinding" => format!("{rbac}/clusterrolebindings"),
            "Role" => format!("{rbac}/namespaces/{ns}/roles"),
            "RoleBinding" => format!("{rbac}/namespaces/{ns}/rolebindings"),
            other => panic!("create_any: kind {other} not supported"),
        };
        let (code, body) = self.request("POST", &path, "application/yaml", doc);
        assert_eq!(code, 201, "create {kind}: {body}");
    }

    /// A request to etcd's v3 JSON gateway (None: no answer).
    fn etcd(&self, path: &str, body: Option<&str>) -> Option<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "-m", "5"])
            .arg(format!("http://127.0.0.1:{}{path}", self.etcd_port));
        if let Some(b) = body {
            cmd.args(["-X", "POST", "-d", b]);
        }
        let out = run_bounded(cmd, Duration::from_secs(10));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Compacts etcd to its current revision (physically): a watch or list from an older
    /// resource version then gets 410 Gone.
    pub fn compact(&self) {
        let range = self
            .etcd("/v3/kv/range", Some(r#"{"key":"AA=="}"#))
            .expect("etcd range");
        let v: serde_json::Value = serde_json::from_str(&range).expect("etcd JSON");
        let rev = v["header"]["revision"]
            .as_str()
            .expect("revision")
            .to_string();
        let out = self
            .etcd(
                "/v3/kv/compaction",
                Some(&format!(r#"{{"revision":"{rev}","physical":true}}"#)),
            )
            .expect("etcd compaction");
        assert!(!out.contains("error"), "compaction: {out}");
    }
}

/// An admin GET to the API server on `host:port`: (status, body), status 0 without an answer.
fn get(host: Ipv4Addr, port: u16, path: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-m", "5", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg(format!("https://{host}:{port}{path}"));
    let out = run_bounded(cmd, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill_apiserver();
        if let Some((_, mut c)) = self.second.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

/// A ConfigMap carrying plugins (`<name>.wasm` binaryData keys), labelled for nodeportd.
pub fn plugin_configmap(name: &str, plugins: &[(&str, &[u8])]) -> String {
    use base64::Engine;
    let mut y = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: kube-system\n  labels:\n    nodeportd.dev/plugins: \"true\"\nbinaryData:\n"
    );
    for (plugin, bytes) in plugins {
        let b = base64::engine::general_purpose::STANDARD.encode(bytes);
        y.push_str(&format!("  {plugin}.wasm: {b}\n"));
    }
    y
}
