//! Ports for a test: nodePorts no other test holds (of this process or any other that uses
//! this harness), free and dead (bound, not listening) TCP ports, and whether IPv6 loopback
//! works here.
//!
//! A nodePort cannot be held by a socket while the daemon binds it (its UDP sockets have no
//! SO_REUSEADDR/SO_REUSEPORT), so it is reserved instead: an exclusive `flock` on a file per
//! port in a shared directory, held until the test process exits. Another test process (this
//! worktree or another one on the machine, which raced for the same "free" port before)
//! skips a port whose lock is held. 30000-32767 is below the kernel's ephemeral range here
//! (32768-60999), so no outgoing connection takes a reserved port meanwhile.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::clients::sockaddr;

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

/// Where nodePort reservations are kept (shared by every test process on the machine).
fn reservations() -> PathBuf {
    std::env::temp_dir().join("nodeportd-e2e-ports")
}

/// The reservation locks this process holds (released when it exits).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Reserves `port` for this process: false when another process holds it.
fn reserve(port: u16) -> bool {
    let dir = reservations();
    let _ = std::fs::create_dir_all(&dir);
    let Ok(f) = File::create(dir.join(format!("{port}.lock"))) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return false;
    }
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    true
}

/// A nodePort (30000-32767) reserved for this test process (no other test of any process
/// that uses this harness is given it) and free on loopback (TCP and UDP, both families)
/// when reserved. Processes start at different offsets.
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
        if reserve(port) && port_is_free(port) {
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
