//! The `nodeportd` process under test: finding the binary, starting it on a manifest
//! directory or an API server (in the test's network namespace or in one it made), reading
//! its admin server and log, signalling it, and killing it on drop.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use crate::{free_tcp_port, http_get, parse_metric, run_bounded, wait_until, Netns, NODE};

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

/// A running `nodeportd run`, killed on drop (its log is printed when the test failed).
pub struct Daemon {
    child: Child,
    /// The metrics address (every admin route).
    admin: SocketAddr,
    /// The health address (/healthz, /livez, /readyz only).
    health: SocketAddr,
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
    /// Starts nodeportd on `manifests` with free metrics and health ports on 127.0.0.1 (health
    /// where `extra` gives `--healthz-bind-address`) and `extra` args
    /// (`--node-name` defaults to [`NODE`] unless it or `--hostname-override` is given), and
    /// waits until /readyz is 200.
    pub fn start(manifests: &Path, extra: &[&str]) -> Daemon {
        Self::start_on(
            None,
            &["--manifests".as_ref(), manifests.as_os_str()],
            extra,
        )
    }

    /// Like [`Daemon::start`] with the Kubernetes API as the source (`--kubeconfig`).
    pub fn start_kube(kubeconfig: &Path, extra: &[&str]) -> Daemon {
        Self::start_on(
            None,
            &["--kubeconfig".as_ref(), kubeconfig.as_os_str()],
            extra,
        )
    }

    /// Like [`Daemon::start_kube`] inside `ns` (a node host of its own), through
    /// `ip netns exec`, which execs the binary (the child is nodeportd itself). Its metrics
    /// and health servers listen on the namespace's address of its link to the root
    /// namespace, on kube-proxy's ports 10249 and 10256 (nothing else runs there), so the
    /// test reaches them from the root namespace.
    pub fn start_kube_in(ns: &Netns, kubeconfig: &Path, extra: &[&str]) -> Daemon {
        Self::start_on(
            Some(ns),
            &["--kubeconfig".as_ref(), kubeconfig.as_os_str()],
            extra,
        )
    }

    fn start_on(ns: Option<&Netns>, source: &[&OsStr], extra: &[&str]) -> Daemon {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(ns, source, extra) {
                Ok(d) => return d,
                // Another process may have taken the admin port between probe and bind.
                Err(e) => last = e,
            }
        }
        panic!("nodeportd did not become ready: {last}");
    }

    fn try_start(ns: Option<&Netns>, source: &[&OsStr], extra: &[&str]) -> Result<Daemon, String> {
        let logs = tempfile::Builder::new()
            .prefix("nodeportd-e2e-log")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log_path = logs.path().join("nodeportd.log");
        let log = File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        // In a namespace of its own the daemon has the ports to itself; here, free ones.
        let (ip, admin_port, health_port) = match ns {
            Some(ns) => (IpAddr::V4(ns.ns_ip()), 10249, 10256),
            None => (IpAddr::from([127, 0, 0, 1]), free_tcp_port(), 0),
        };
        let admin = SocketAddr::new(ip, admin_port);
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name()]).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("run")
            .args(source)
            .arg("--metrics-bind-address")
            .arg(admin.to_string());
        // Health beside the metrics unless the test puts it somewhere (never the
        // 0.0.0.0:10256 default in the test's own namespace: tests run side by side).
        let health = match extra.iter().position(|a| *a == "--healthz-bind-address") {
            Some(i) => extra
                .get(i + 1)
                .and_then(|a| a.parse().ok())
                .ok_or("--healthz-bind-address needs an address")?,
            None => {
                let port = match health_port {
                    0 => free_tcp_port(),
                    p => p,
                };
                let h = SocketAddr::new(ip, port);
                cmd.arg("--healthz-bind-address").arg(h.to_string());
                h
            }
        };
        if !extra
            .iter()
            .any(|a| *a == "--node-name" || *a == "--hostname-override")
        {
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
            health,
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

    /// Metrics server address (/metrics, /conntrack and the health routes).
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Health server address (/healthz, /livez, /readyz).
    pub fn health(&self) -> SocketAddr {
        self.health
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

    /// `nodeportd conntrack --metrics-bind-address ADDR [args]`: its output.
    pub fn conntrack_cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary());
        cmd.arg("conntrack")
            .arg("--metrics-bind-address")
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
