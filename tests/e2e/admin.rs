//! The admin split, with the real defaults: the daemon runs in a network namespace of its own
//! (so 10256 and 10249 are its own there) with no admin flag at all. Health answers on the
//! namespace's non-loopback address; /metrics and /conntrack (every flow's client address)
//! are not reachable there, neither on their own port nor on the health port, and answer on
//! the namespace's loopback, where `nodeportd conntrack` finds them by default.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nodeportd_e2e::*;

/// `nodeportd run` inside a namespace; killed on drop, its log printed when the test failed.
struct InNamespace {
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl InNamespace {
    fn start(ns: &Netns, manifests: &Manifests) -> InNamespace {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("nodeportd.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let only = format!("{}/32", ns.ns_ip());
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(binary())
            .args(["run", "--manifests"])
            .arg(manifests.path())
            .args(["--node-name", NODE, "--preserve-source", "off"])
            .args(["--nodeport-addresses", &only])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start nodeportd in the namespace");
        InNamespace {
            child,
            log,
            _dir: dir,
        }
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- nodeportd log -----\n{log}\n----- end -----");
        }
    }
}

#[test]
fn by_default_health_is_reachable_on_the_node_address_and_metrics_and_conntrack_only_on_loopback() {
    if !is_root() {
        eprintln!("SKIP: network namespaces need root");
        return;
    }
    let ns = Netns::new("npadm").expect("create network namespace");
    let m = Manifests::new();
    m.write(
        "svc.yaml",
        &Service::new("web").tcp("http", node_port()).yaml(),
    );
    let _d = InNamespace::start(&ns, &m);
    let node = IpAddr::V4(ns.ns_ip());
    let health = SocketAddr::new(node, 10256);
    wait_for(
        Duration::from_secs(20),
        "/readyz on the node address :10256",
        || matches!(http_get(health, "/readyz"), Ok((200, _))),
    );
    for path in ["/healthz", "/livez"] {
        assert_eq!(http_get(health, path).expect(path).0, 200, "{path}");
    }
    for path in ["/metrics", "/conntrack"] {
        let (status, _) = http_get(health, path).expect(path);
        assert_eq!(status, 404, "{path} served on the health address");
        let r = http_get(SocketAddr::new(node, 10249), path);
        assert!(
            refused(&r),
            "{path} reachable on the node address: {:?}",
            r.map(|(s, _)| s)
        );
    }
    // On the namespace's loopback both answer, and the conntrack command finds them there.
    let (metrics, conntrack) = ns.run(|| {
        let lo = SocketAddr::from(([127, 0, 0, 1], 10249));
        (
            http_get(lo, "/metrics").map(|r| r.0),
            http_get(lo, "/conntrack").map(|r| r.0),
        )
    });
    assert_eq!(metrics.expect("/metrics on loopback"), 200);
    assert_eq!(conntrack.expect("/conntrack on loopback"), 200);
    let bin = binary().display().to_string();
    let out = ns.exec(&[&bin, "conntrack"]);
    assert!(
        out.status.success(),
        "nodeportd conntrack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
