//! Network namespaces joined to the root namespace by a veth pair on 198.18.0.0/15, for
//! multi-node and source-address tests, or isolated (loopback only) and joined to other
//! namespaces by veth pairs of their own; values whose sockets live in a namespace
//! ([`Resident`]); each namespace is deleted on drop.
//!
//! The root links take /30s of 198.18.0.0/17 only (8192 of them); addresses a test gives
//! links between its own namespaces (198.19.0.0/16, say) exist only inside them.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::ops::Deref;
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

/// A network namespace, joined to the root namespace by a veth pair on a /30 of
/// 198.18.0.0/15 (root side `.1`, namespace side `.2`) unless made [`Netns::isolated`].
/// Deleted on drop (with every interface in it: the veth pairs it shares go too).
pub struct Netns {
    name: String,
    root: Option<RootLink>,
}

/// The veth pair to the root namespace.
struct RootLink {
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
        let name = format!("{prefix}-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let veth = format!("np{}x{n}", pid % 1_000_000);
        let peer = format!("np{}y{n}", pid % 1_000_000);
        let mut ns = Self::create(prefix, name)?;
        // From here on, Drop cleans up whatever was made.
        ip_cmd(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ns.root = Some(RootLink {
            veth: veth.clone(),
            root_ip,
            ns_ip,
        });
        ip_cmd(&["link", "set", &peer, "netns", &ns.name])?;
        ip_cmd(&["addr", "add", &format!("{root_ip}/30"), "dev", &veth])?;
        ip_cmd(&["link", "set", &veth, "up"])?;
        ns.exec_ok(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &peer])?;
        ns.exec_ok(&["ip", "link", "set", &peer, "up"])?;
        Ok(ns)
    }

    /// Creates `{prefix}-{pid}-i{n}` with loopback only: no link to the root namespace, so
    /// nothing in it reaches the root namespace (or beyond) and the root namespace reaches
    /// nothing in it. Join it to other namespaces with [`Netns::link`] or a [`crate::Lan`].
    pub fn isolated(prefix: &str) -> io::Result<Netns> {
        static COUNTER: AtomicU16 = AtomicU16::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Self::create(prefix, format!("{prefix}-{}-i{n}", std::process::id()))
    }

    /// `ip netns add name` with loopback up, after removing stale ones of `prefix`.
    fn create(prefix: &str, name: String) -> io::Result<Netns> {
        Self::remove_stale(prefix);
        ip_cmd(&["netns", "add", &name])?;
        let ns = Netns { name, root: None };
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

    fn root_link(&self) -> &RootLink {
        self.root.as_ref().unwrap_or_else(|| {
            panic!(
                "namespace {} is isolated: it has no link to the root namespace",
                self.name
            )
        })
    }

    /// The root namespace's address on the link (reachable from inside).
    pub fn root_ip(&self) -> Ipv4Addr {
        self.root_link().root_ip
    }

    /// The namespace's own address on the link to the root namespace.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.root_link().ns_ip
    }

    /// A veth pair between this namespace (interface `dev`) and `peer` (`peer_dev`), both
    /// ends up, no address. It goes when either namespace is deleted.
    pub fn veth(&self, dev: &str, peer: &Netns, peer_dev: &str) -> io::Result<()> {
        // Made inside the namespaces directly: nothing is ever left in the root namespace.
        ip_cmd(&[
            "-n", &self.name, "link", "add", dev, "type", "veth", "peer", "name", peer_dev,
            "netns", &peer.name,
        ])?;
        self.exec_ok(&["ip", "link", "set", dev, "up"])?;
        peer.exec_ok(&["ip", "link", "set", peer_dev, "up"])
    }

    /// A point-to-point link: [`Netns::veth`] with address `cidr` (e.g. `198.19.1.1/30`) on
    /// `dev` here and `peer_cidr` on `peer_dev` there.
    pub fn link(
        &self,
        dev: &str,
        cidr: &str,
        peer: &Netns,
        peer_dev: &str,
        peer_cidr: &str,
    ) -> io::Result<()> {
        self.veth(dev, peer, peer_dev)?;
        self.exec_ok(&["ip", "addr", "add", cidr, "dev", dev])?;
        peer.exec_ok(&["ip", "addr", "add", peer_cidr, "dev", peer_dev])
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`), bounded to 10 s.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .args(cmd)
            .stdin(Stdio::null());
        run_bounded(c, Duration::from_secs(10))
    }

    /// [`Netns::exec`], Ok when it exited 0, else an error naming it with its stderr.
    pub fn exec_ok(&self, cmd: &[&str]) -> io::Result<()> {
        succeeded(
            &self.exec(cmd),
            &format!("{}: {}", self.name, cmd.join(" ")),
        )
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

    /// Makes a value inside the namespace (on a thread that joined it: servers whose sockets
    /// and threads belong there) that is dropped inside it too, see [`Resident`].
    pub fn resident<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> T + Send + 'static,
    ) -> Resident<T> {
        Resident {
            path: format!("/var/run/netns/{}", self.name),
            value: Some(self.run(make)),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the peer end, and with it the root end.
        if let Some(link) = &self.root {
            let _ = ip_cmd(&["link", "del", &link.veth]);
        }
        let _ = ip_cmd(&["netns", "del", &self.name]);
    }
}

/// A value that lives in a network namespace (a [`crate::TcpBackend`] on a pod address, say),
/// made by [`Netns::resident`]: dropped on a thread that joined the namespace, so whatever
/// its teardown sends (TcpBackend wakes its accept by connecting to itself) stays inside.
/// Drop it before its namespace (declare it after); if the namespace is gone by then, the
/// value is leaked rather than dropped anywhere else.
pub struct Resident<T: Send + 'static> {
    path: String,
    value: Option<T>,
}

impl<T: Send + 'static> Deref for Resident<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .expect("a Resident holds its value until dropped")
    }
}

impl<T: Send + 'static> Drop for Resident<T> {
    fn drop(&mut self) {
        let (Some(value), path) = (self.value.take(), self.path.clone()) else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let joined = File::open(&path).is_ok_and(|f| {
                // SAFETY: setns on a namespace file descriptor, affecting this thread only.
                unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) == 0 }
            });
            if joined {
                drop(value);
            } else {
                std::mem::forget(value);
            }
        })
        .join();
    }
}
