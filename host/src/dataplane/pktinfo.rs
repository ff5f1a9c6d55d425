//! UDP on wildcard or multi-address sockets: learn which node address a datagram was sent to
//! (IP_PKTINFO / IPV6_PKTINFO) and send the reply from that same address, so the client sees
//! the answer come from where it sent. The control-message and address helpers here serve the
//! batched I/O in `batch`, whose buffers are allocated once: nothing per datagram.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Asks the kernel to report destination addresses on this socket.
pub fn enable(fd: RawFd, v6: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt with a valid c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Converts a kernel socket address.
pub fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Converts to a kernel socket address and its length.
pub fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// One received datagram: its length, sender, and the local address it was sent to.
pub struct Received {
    /// Payload length.
    pub len: usize,
    /// Client address.
    pub from: SocketAddr,
    /// Node address the client sent to (None if the kernel did not say).
    pub to: Option<IpAddr>,
}

/// The destination address carried by a received message's pktinfo, if any.
///
/// # Safety
/// `msg` must have been filled by recvmsg/recvmmsg and its control buffer still be valid.
pub unsafe fn destination(msg: &libc::msghdr) -> Option<IpAddr> {
    let mut to = None;
    let mut c = libc::CMSG_FIRSTHDR(msg);
    while !c.is_null() {
        let h = &*c;
        if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
            let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
            to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                info.ipi_addr.s_addr,
            ))));
        } else if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
            let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
            to = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
        }
        c = libc::CMSG_NXTHDR(msg, c);
    }
    to
}

/// Writes a pktinfo control message choosing `src` as the source address; returns its
/// length (the msg_controllen to use).
///
/// # Safety
/// `buf` must be 8-byte aligned and at least CMSG_SPACE(in6_pktinfo) long.
pub unsafe fn write_source(buf: &mut [u8], src: IpAddr) -> usize {
    buf.fill(0);
    let mut msg: libc::msghdr = zeroed();
    msg.msg_control = buf.as_mut_ptr().cast();
    msg.msg_controllen = buf.len() as _;
    let c = libc::CMSG_FIRSTHDR(&msg);
    match src {
        IpAddr::V4(src) => {
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let mut info: libc::in_pktinfo = zeroed();
            info.ipi_spec_dst.s_addr = u32::from(src).to_be();
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize
        }
        IpAddr::V6(src) => {
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
            let mut info: libc::in6_pktinfo = zeroed();
            info.ipi6_addr.s6_addr = src.octets();
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::batch::Batch;
    use std::os::fd::AsRawFd;

    #[test]
    fn wildcard_socket_learns_and_answers_from_destination() {
        let server = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        enable(server.as_raw_fd(), false).unwrap();
        let port = server.local_addr().unwrap().port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(("127.0.0.3", port)).unwrap();
        client.send(b"ping").unwrap();
        client.send(b"pong?").unwrap();
        let mut batch = Batch::new();
        let mut got = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got < 2 && std::time::Instant::now() < deadline {
            got += batch.recv(server.as_raw_fd()).unwrap_or(0);
        }
        assert_eq!(got, 2, "both datagrams arrive in one batch or two");
        let r = batch.meta(0).unwrap();
        assert_eq!(batch.payload(0), b"ping");
        assert_eq!(r.to, Some("127.0.0.3".parse().unwrap()));
        let sent = batch
            .send(server.as_raw_fd(), 0..1, Some(&r.from), r.to)
            .unwrap();
        assert_eq!(sent, 1);
        // The client is connected to 127.0.0.3: it only accepts the reply if it came from there.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
    }
}
