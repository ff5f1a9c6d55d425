//! Client source preservation for externalTrafficPolicy Local, as kube-proxy gives it: the
//! upstream socket is transparent (IP_TRANSPARENT) and bound to the client's address, so the
//! endpoint sees the client, not the node. The endpoint's replies are addressed to the client
//! and pass through this node (a Local endpoint is on it); a mark rule in nftables
//! (`socket transparent 1`) and a policy route deliver them to nodeportd's socket instead of
//! forwarding them. `install` programs both, `Drop` removes them.
//!
//! Endpoints in the node's own network namespace (host-network pods) cannot be reached this
//! way: their replies never pass prerouting. Flows to them keep the node address.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Firewall mark of replies to transparent sockets.
pub const MARK: u32 = 0x4e50;
/// Routing table (and rule priority) that delivers marked packets locally.
pub const TABLE: u32 = 4950;
const NFT_TABLE: &str = "nodeportd_tproxy";

/// The installed routing and nftables state; removed when dropped.
pub struct Transparent {
    v6: bool,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Transparent {
    /// Programs the mark rule and policy routes. Needs CAP_NET_ADMIN, `ip` and `nft`.
    pub fn install() -> Result<Self, String> {
        let mark = format!("{MARK:#x}");
        let table = TABLE.to_string();
        let script = format!(
            "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n\
             table inet {NFT_TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n    \
             meta l4proto {{ tcp, udp }} socket transparent 1 meta mark set {mark} accept\n  }}\n}}\n"
        );
        nft(&script)?;
        // From here on, dropping `me` (on an error) removes whatever was installed.
        let mut me = Self { v6: false };
        for fam in ["-4", "-6"] {
            let any = if fam == "-4" { "0.0.0.0/0" } else { "::/0" };
            let _ = run(&["ip", fam, "rule", "del", "fwmark", &mark, "lookup", &table]);
            let r = run(&[
                "ip", fam, "rule", "add", "fwmark", &mark, "lookup", &table, "pref", &table,
            ])
            .and_then(|_| {
                run(&[
                    "ip", fam, "route", "replace", "local", any, "dev", "lo", "table", &table,
                ])
            });
            match r {
                Ok(()) => me.v6 = fam == "-6",
                Err(e) if fam == "-4" => return Err(e),
                Err(e) => tracing::warn!(error = %e, "no IPv6 source preservation"),
            }
        }
        Ok(me)
    }

    /// Whether IPv6 flows can keep their source too (IPv6 routing may be unavailable).
    pub fn covers_v6(&self) -> bool {
        self.v6
    }
}

impl Drop for Transparent {
    fn drop(&mut self) {
        let mark = format!("{MARK:#x}");
        let table = TABLE.to_string();
        for fam in ["-4", "-6"] {
            let _ = run(&["ip", fam, "rule", "del", "fwmark", &mark, "lookup", &table]);
            let _ = run(&["ip", fam, "route", "flush", "table", &table]);
        }
        let _ = run(&["nft", "delete", "table", "inet", NFT_TABLE]);
    }
}

/// Makes a socket transparent and binds it to the client's address (port chosen by the
/// kernel), before it connects to the endpoint.
pub fn bind_as(s: &socket2::Socket, client: IpAddr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, opt) = match client {
        IpAddr::V4(_) => (libc::SOL_IP, libc::IP_TRANSPARENT),
        IpAddr::V6(_) => (libc::SOL_IPV6, libc::IPV6_TRANSPARENT),
    };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid c_int option value on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.bind(&socket2::SockAddr::from(std::net::SocketAddr::new(
        client, 0,
    )))
}
