//! The endpoint's side of the PROXY protocol v2: reads and checks the header nodeportd sends
//! first on a connection, independently of the daemon's encoder (written from the spec).

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Reads a PROXY v2 header (command PROXY, TCP over IPv4 or IPv6) and returns the source
/// (client) and destination (node) addresses it carries.
pub fn read_proxy_v2(s: &mut impl Read) -> io::Result<(SocketAddr, SocketAddr)> {
    let mut head = [0u8; 16];
    s.read_exact(&mut head)?;
    if &head[..12] != SIGNATURE {
        return Err(bad("no PROXY v2 signature"));
    }
    if head[12] != 0x21 {
        return Err(bad("not version 2 / PROXY"));
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match (head[13], len) {
        (0x11, 12..) => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            Ok((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (0x21, 36..) => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Ok((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        (fam, _) => Err(bad(&format!(
            "family/protocol {fam:#x} with {len} address bytes"
        ))),
    }
}
