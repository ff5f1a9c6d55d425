//! Clients of the nodePorts: a minimal HTTP GET, TCP connections (also from a chosen source
//! address) that ask which backend answered, UDP request/reply, and transfer-check data.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use crate::IO_TIMEOUT;

/// A minimal HTTP/1.0 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    http_get_full(addr, path).map(|(status, _, body)| (status, body))
}

/// A minimal HTTP/1.0 GET: status code, header block (lowercased names) and body.
pub fn http_get_full(addr: SocketAddr, path: &str) -> io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
    let headers = head
        .lines()
        .skip(1)
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}:{v}", k.to_ascii_lowercase()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((status, headers, body.to_string()))
}

/// A TCP connection through a nodePort to a [`TcpBackend`].
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The backend id that answered the first line.
    pub backend: String,
}

impl Conn {
    /// Connects to `addr`, sends a line and reads the backend id.
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        Self::open_from(None, addr)
    }

    /// Like [`Conn::open`] from a chosen source address (e.g. 127.0.0.2).
    pub fn open_from(source: Option<IpAddr>, addr: SocketAddr) -> io::Result<Conn> {
        let stream = connect(source, addr)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        (&stream).write_all(b"hello\n")?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed before the backend answered (got {line:?})"),
            ));
        }
        Ok(Conn {
            stream,
            reader,
            backend: line.trim_end().to_string(),
        })
    }

    /// The local (client) address.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Sends `msg` and reads the echo of it.
    pub fn echo(&mut self, msg: &[u8]) -> io::Result<Vec<u8>> {
        (&self.stream).write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        self.reader.read_exact(&mut got)?;
        Ok(got)
    }
}

/// Connects with a bounded timeout, optionally from a given source address.
pub fn connect(source: Option<IpAddr>, addr: SocketAddr) -> io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect_timeout(&addr, IO_TIMEOUT);
    };
    // std cannot bind before connect: do it by hand with a blocking socket.
    // SAFETY: socket/bind/connect on a descriptor we own; sockaddr built for its family.
    unsafe {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let (sa, len) = sockaddr(SocketAddr::new(src, 0));
        if libc::bind(fd, (&sa as *const libc::sockaddr_storage).cast(), len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let (da, dlen) = sockaddr(addr);
        if libc::connect(fd, (&da as *const libc::sockaddr_storage).cast(), dlen) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpStream::from(owned))
    }
}

pub(crate) fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr structures are valid; we copy at most their own size.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let mut sin: libc::sockaddr_in = std::mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                std::ptr::copy_nonoverlapping(
                    (&sin as *const libc::sockaddr_in).cast::<u8>(),
                    (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                );
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let mut sin6: libc::sockaddr_in6 = std::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                std::ptr::copy_nonoverlapping(
                    (&sin6 as *const libc::sockaddr_in6).cast::<u8>(),
                    (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                    std::mem::size_of::<libc::sockaddr_in6>(),
                );
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
}

/// Which backend answers a fresh connection to `addr` (the connection is then closed).
pub fn who(addr: SocketAddr) -> io::Result<String> {
    Conn::open(addr).map(|c| c.backend)
}

/// Like [`who`] from a chosen source address.
pub fn who_from(source: IpAddr, addr: SocketAddr) -> io::Result<String> {
    Conn::open_from(Some(source), addr).map(|c| c.backend)
}

/// The nodePort address on 127.0.0.1.
pub fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A connected UDP client on 127.0.0.1 (or ::1 for an IPv6 target) with a read timeout.
pub fn udp_client(target: SocketAddr, read_timeout: Duration) -> UdpSocket {
    let source = if target.is_ipv4() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
    };
    udp_client_from(source, target, read_timeout)
}

/// Like [`udp_client`], from `source` (any port).
pub fn udp_client_from(source: IpAddr, target: SocketAddr, read_timeout: Duration) -> UdpSocket {
    let s = UdpSocket::bind((source, 0)).expect("bind UDP client");
    s.connect(target).expect("connect UDP client");
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// Sends `payload` and waits for one reply.
pub fn udp_ask(s: &UdpSocket, payload: &str) -> io::Result<String> {
    s.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// True when `r` failed with ECONNREFUSED.
pub fn refused<T>(r: &io::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Deterministic pseudo-random bytes (xorshift), for transfer checks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
