//! The PROXY protocol v2 header (HAProxy's `send-proxy-v2`, section 2.2 of the protocol
//! spec) that starts a TCP connection to an endpoint of a Service annotated
//! `nodeportd.dev/proxy-protocol: v2`: the client's address and port and the node address and
//! nodePort it reached. Built on the stack: no allocation per connection.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
/// AF_INET / AF_INET6, STREAM.
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
/// The longest header: 16 bytes, then two IPv6 addresses and two ports.
pub(super) const MAX: usize = 16 + 36;

/// A header ready to send.
pub(super) struct ProxyHeader {
    buf: [u8; MAX],
    len: usize,
}

impl ProxyHeader {
    /// The header for a connection from `client` to `node`. Mixed families (an IPv4 client on
    /// an IPv6 socket) are sent as IPv6, the IPv4 address mapped.
    pub(super) fn v2(client: SocketAddr, node: SocketAddr) -> Self {
        let mut buf = [0u8; MAX];
        buf[..12].copy_from_slice(&SIGNATURE);
        buf[12] = V2_PROXY;
        let len = match (client.ip(), node.ip()) {
            (IpAddr::V4(c), IpAddr::V4(n)) => {
                buf[13] = TCP4;
                buf[16..20].copy_from_slice(&c.octets());
                buf[20..24].copy_from_slice(&n.octets());
                12
            }
            (c, n) => {
                buf[13] = TCP6;
                buf[16..32].copy_from_slice(&v6(c).octets());
                buf[32..48].copy_from_slice(&v6(n).octets());
                36
            }
        };
        buf[14..16].copy_from_slice(&(len as u16).to_be_bytes());
        let ports = 16 + len - 4;
        buf[ports..ports + 2].copy_from_slice(&client.port().to_be_bytes());
        buf[ports + 2..ports + 4].copy_from_slice(&node.port().to_be_bytes());
        Self { buf, len: 16 + len }
    }

    /// The bytes to send.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_byte_exact() {
        let client: SocketAddr = "198.18.0.2:40000".parse().expect("addr");
        let node: SocketAddr = "198.18.0.1:30080".parse().expect("addr");
        let h = ProxyHeader::v2(client, node);
        let mut want = SIGNATURE.to_vec();
        want.extend([0x21, 0x11, 0x00, 0x0c]);
        want.extend([198, 18, 0, 2, 198, 18, 0, 1]);
        want.extend(40000u16.to_be_bytes());
        want.extend(30080u16.to_be_bytes());
        assert_eq!(h.bytes(), &want[..]);
    }

    #[test]
    fn ipv6_and_mixed_headers_carry_both_addresses() {
        let client: SocketAddr = "[2001:db8::2]:40000".parse().expect("addr");
        let node: SocketAddr = "[2001:db8::1]:30080".parse().expect("addr");
        let h = ProxyHeader::v2(client, node);
        let b = h.bytes();
        assert_eq!(b.len(), MAX);
        assert_eq!(&b[12..16], &[0x21, 0x21, 0x00, 36]);
        assert_eq!(
            b[16..32],
            "2001:db8::2".parse::<Ipv6Addr>().expect("ip").octets()
        );
        assert_eq!(
            b[32..48],
            "2001:db8::1".parse::<Ipv6Addr>().expect("ip").octets()
        );
        assert_eq!(&b[48..52], &[0x9c, 0x40, 0x75, 0x80]);
        let mixed = ProxyHeader::v2("198.18.0.2:1".parse().expect("addr"), node);
        let m = mixed.bytes();
        assert_eq!(m[13], TCP6);
        assert_eq!(
            m[16..32],
            "::ffff:198.18.0.2"
                .parse::<Ipv6Addr>()
                .expect("ip")
                .octets()
        );
    }
}
