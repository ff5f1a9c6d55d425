//! Shared by the harness-less benches: start the release daemon on a manifests directory (or
//! an API server) and
//! read its memory and descriptors once it is ready.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/release/nodeportd`, next to the bench executable's directory.
pub fn release_binary() -> Result<PathBuf, String> {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("nodeportd")))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            "target/release/nodeportd not found: cargo build --release -p nodeportd".into()
        })
}

/// A running daemon, killed on drop.
pub struct Daemon {
    child: Child,
    /// Time from spawn to /readyz answering 200.
    pub ready_after: Duration,
}

impl Daemon {
    /// Starts `nodeportd run` on `manifests` with `extra` arguments and waits (up to
    /// `timeout`) for readiness on `admin`.
    pub fn start(
        manifests: &Path,
        admin: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<Self, String> {
        Self::start_on(
            &["--manifests".as_ref(), manifests.as_os_str()],
            admin,
            extra,
            timeout,
        )
    }

    /// Like [`Daemon::start`] with `source` (`--manifests DIR` or `--kubeconfig FILE`).
    pub fn start_on(
        source: &[&std::ffi::OsStr],
        admin: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<Self, String> {
        let t0 = Instant::now();
        let child = Command::new(release_binary()?)
            .arg("run")
            .args(source)
            .args([
                "--node-name",
                "node-0",
                "--nodeport-addresses",
                "127.0.0.1/32",
                "--metrics-bind-address",
                admin,
                "--healthz-bind-address",
                "127.0.0.1:0",
            ])
            // Never source preservation: it programs the machine's routing, and the daemon
            // is killed (no cleanup) when the bench ends.
            .args(["--preserve-source", "off"])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut d = Daemon {
            child,
            ready_after: Duration::ZERO,
        };
        while t0.elapsed() < timeout {
            if http_get(admin, "/readyz")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
            {
                d.ready_after = t0.elapsed();
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("daemon not ready within {timeout:?}"))
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The daemon's process id (for /proc readings of its threads).
    #[allow(dead_code)] // not every bench reads it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET; the whole response, or None.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    Some(r)
}
