//! Network namespaces joined to the root namespace by a veth pair on 198.18.0.0/15, for
//! multi-node and source-address tests; each is deleted on drop.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::run_bounded;

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
    succeeded(
        &run_bounded(cmd, Duration::from_secs(10)),
        &format!("ip {}", args.join(" ")),
    )
}

/// Ok when the command exited 0, else an error with `what` and its stderr.
fn succeeded(out: &Output, what: &str) -> io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
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
        succeeded(&self.exec(cmd), &cmd.join(" "))
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
