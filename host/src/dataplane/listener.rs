//! nodePort sockets: which node addresses to bind (kube-proxy's --nodeport-addresses) and how.
//! One socket per (protocol, nodePort, bind address), whatever the number of workers: a
//! wildcard address per family by default, so 2,768 ports x 2 protocols x 2 families is
//! 11,072 descriptors on any node, where SO_REUSEPORT per worker would multiply that by cores.
//! Only a Service that asks for it (`nodeportd.dev/spread-udp`) gets a socket per worker for
//! its UDP ports ([`udp_group`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};

use crate::model::Family;

/// Accept queue length: bursts of new connections wait here rather than being dropped.
const BACKLOG: i32 = 4096;

/// The node addresses nodePorts are bound to, per family.
#[derive(Clone, Debug)]
pub struct BindAddresses {
    cidrs: Vec<IpNet>,
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
}

impl BindAddresses {
    /// Empty `cidrs`: every address (a wildcard socket per family). Otherwise the node's
    /// interface addresses inside those CIDRs, read once at start.
    pub fn resolve(cidrs: &[IpNet]) -> io::Result<Self> {
        if cidrs.is_empty() {
            return Ok(Self {
                cidrs: Vec::new(),
                v4: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
                v6: vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
            });
        }
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for ip in node_ips()? {
            // IPv6 link-local addresses need a scope id; kube-proxy skips them as well.
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
            if !link_local && cidrs.iter().any(|c| c.contains(&ip)) {
                let list = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
                if !list.contains(&ip) {
                    list.push(ip);
                }
            }
        }
        Ok(Self {
            cidrs: cidrs.to_vec(),
            v4,
            v6,
        })
    }

    /// Reads the interface addresses again (kube-proxy follows node address changes too):
    /// Some(new set) when it differs. Wildcards never change.
    pub fn refresh(&self) -> io::Result<Option<Self>> {
        if self.cidrs.is_empty() {
            return Ok(None);
        }
        let mut now = Self::resolve(&self.cidrs)?;
        now.v4.sort();
        now.v6.sort();
        let (mut v4, mut v6) = (self.v4.clone(), self.v6.clone());
        v4.sort();
        v6.sort();
        Ok((now.v4 != v4 || now.v6 != v6).then_some(now))
    }

    /// Addresses of one family.
    pub fn of(&self, family: Family) -> &[IpAddr] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

fn socket(addr: &SocketAddr, ty: Type, proto: SockProto) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(*addr),
        ty.nonblocking().cloexec(),
        Some(proto),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if ty == Type::STREAM {
        // SO_REUSEPORT, not SO_REUSEADDR: it still binds over our own TIME_WAIT connections
        // (they inherit the flag, same user), yet a bound-but-not-listening holder keeps
        // ordinary SO_REUSEADDR servers off the nodePort, which SO_REUSEADDR would not.
        s.set_reuse_port(true)?;
        // Accepted connections inherit TCP_NODELAY from their listener: no setsockopt per
        // connection for a relay that must not hold small writes back.
        s.set_tcp_nodelay(true)?;
    }
    Ok(s)
}

/// Sizes socket buffers beyond net.core.{r,w}mem_max where allowed (CAP_NET_ADMIN, as the
/// DaemonSet runs), else as far as the sysctl permits.
fn buffers(s: &Socket, rcv: usize, snd: usize) {
    let set = |opt: libc::c_int, val: usize| {
        let v = val as libc::c_int;
        // SAFETY: setsockopt with a valid c_int option value on an open socket.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(libc::SO_RCVBUFFORCE, rcv) {
        let _ = s.set_recv_buffer_size(rcv);
    }
    if !set(libc::SO_SNDBUFFORCE, snd) {
        let _ = s.set_send_buffer_size(snd);
    }
}

/// Every address on this node's interfaces (read once).
pub fn node_ips() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        if let Some(sin) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(sin.ip()));
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(sin6.ip()));
        }
    }
    Ok(out)
}

/// A TCP socket bound to a nodePort but not listening: it holds the port while the Service
/// has no endpoint, and the kernel answers SYNs with RST (connection refused), as kube-proxy's
/// REJECT rule does. Only another SO_REUSEPORT socket of the same user could share the port.
pub fn tcp_hold(addr: SocketAddr) -> io::Result<Socket> {
    let s = socket(&addr, Type::STREAM, SockProto::TCP)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s)
}

/// Turns a held (or fresh) TCP socket into a listener.
pub fn tcp_listen(s: Socket) -> io::Result<std::net::TcpListener> {
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// A UDP nodePort socket that reports destination addresses (replies leave from them).
pub fn udp_bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    udp_socket(addr, false)
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let s = udp_unbound(addr, reuse_port)?;
    udp_bound(s, addr)
}

/// A UDP nodePort socket of `addr`'s family, not yet bound.
fn udp_unbound(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = socket(&addr, Type::DGRAM, SockProto::UDP)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Bursts from many clients queue here instead of being dropped.
    buffers(&s, 8 << 20, 4 << 20);
    Ok(s)
}

fn udp_bound(s: Socket, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    s.bind(&SockAddr::from(addr))?;
    super::pktinfo::enable(s.as_raw_fd(), addr.is_ipv6())?;
    Ok(s.into())
}

/// A spread UDP nodePort: `members` sockets in one SO_REUSEPORT group, socket `i` for worker
/// `i`, a client's datagrams steered to one of them by its address ([`super::steer`]). The
/// program is attached to the first socket before it binds (the kernel makes the group
/// then), so no datagram is ever spread by the kernel's own 4-tuple hash.
pub fn udp_group(addr: SocketAddr, members: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let members = members.max(1);
    let first = udp_unbound(addr, true)?;
    super::steer::attach(&first, Family::of(&addr.ip()), members as u32)?;
    let mut group = vec![udp_bound(first, addr)?];
    // Port 0 (tests): the rest join the port the first was given.
    let addr = group[0].local_addr()?;
    for _ in 1..members {
        group.push(udp_socket(addr, true)?);
    }
    Ok(group)
}

/// A connected, non-blocking UDP socket towards an endpoint: one per UDP flow, so replies
/// find their flow by socket and the endpoint sees one stable source port per client.
/// With `source`, the socket is transparent and bound to that (client) address.
pub fn udp_upstream(
    endpoint: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(
        Domain::for_address(endpoint),
        Type::DGRAM.nonblocking().cloexec(),
        Some(SockProto::UDP),
    )?;
    buffers(&s, 1 << 20, 4 << 20);
    if let Some(ip) = source {
        super::transparent::bind_as(&s, ip)?;
    }
    s.connect(&SockAddr::from(endpoint))?;
    Ok(s.into())
}

/// Starts a non-blocking TCP connect towards an endpoint; with `source`, from that (client)
/// address through a transparent socket.
pub fn tcp_connect(
    endpoint: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<std::net::TcpStream> {
    let s = Socket::new(
        Domain::for_address(endpoint),
        Type::STREAM.nonblocking().cloexec(),
        Some(SockProto::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    if let Some(ip) = source {
        super::transparent::bind_as(&s, ip)?;
    }
    match s.connect(&SockAddr::from(endpoint)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let held = tcp_hold(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let l = tcp_listen(held).unwrap();
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "Nagle would hold small writes back"
        );
    }

    #[test]
    fn a_spread_group_steers_each_client_address_to_its_member() {
        let group = udp_group(SocketAddr::from(([127, 0, 0, 1], 0)), 2).unwrap();
        let node = group[0].local_addr().unwrap();
        assert_eq!(
            group[1].local_addr().unwrap(),
            node,
            "one port for the group"
        );
        for s in &group {
            // Nodeport sockets are non-blocking: wait for each datagram instead.
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let mut want = [0usize; 2];
        for i in 0..16u8 {
            let ip = IpAddr::from([127, 0, 0, 2 + i]);
            let member = super::super::steer::member_of(ip, 2) as usize;
            // Two source ports per address: the port must not matter.
            for _ in 0..2 {
                let c = std::net::UdpSocket::bind((ip, 0)).unwrap();
                c.send_to(&[i], node).unwrap();
                want[member] += 1;
                let mut buf = [0u8; 4];
                let (n, from) = group[member].recv_from(&mut buf).unwrap();
                assert_eq!((n, buf[0], from.ip()), (1, i, ip), "client {ip}");
            }
        }
        assert!(want.iter().all(|&n| n > 0), "both members used: {want:?}");
        for s in &group {
            s.set_nonblocking(true).unwrap();
            let err = s.recv_from(&mut [0u8; 4]).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::WouldBlock,
                "a datagram went astray"
            );
        }
    }
}
