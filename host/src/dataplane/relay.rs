//! Moving bytes one way between two sockets: through a kernel pipe with splice(2), so payload
//! never enters userspace, or through a buffer where splice is unavailable. The pump is
//! written for edge-triggered readiness: it loops until neither side can make progress.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes a conduit holds at most (a default pipe's capacity).
pub const CONDUIT_BYTES: usize = 64 * 1024;

/// Kernel pipe used as a splice buffer; reused across flows through the worker's pool.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A non-blocking pipe.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds is a valid two-int array for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
        Ok(unsafe {
            Self {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

/// Where one direction's in-flight bytes wait.
pub enum Conduit {
    /// Zero-copy: socket -> pipe -> socket.
    Splice { pipe: Pipe, pending: usize },
    /// Fallback: socket -> buffer -> socket.
    Copy {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

/// Outcome of pumping one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// Bytes delivered to the destination.
    pub bytes: u64,
    /// The source reached end of stream.
    pub eof: bool,
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors owned by the caller; null offsets mean "current".
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes; MSG_NOSIGNAL avoids SIGPIPE on a closed peer.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Conduit {
    /// A splice conduit around a (pooled) pipe.
    pub fn splice(pipe: Pipe) -> Self {
        Self::Splice { pipe, pending: 0 }
    }

    /// A copy conduit with its own buffer.
    pub fn copy() -> Self {
        Self::Copy {
            buf: vec![0u8; CONDUIT_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes read from the source and not yet written to the destination.
    pub fn pending(&self) -> usize {
        match self {
            Self::Splice { pending, .. } => *pending,
            Self::Copy { start, end, .. } => end - start,
        }
    }

    /// Gives the pipe back for reuse when it is empty (a non-empty pipe is just closed).
    pub fn into_pipe(self) -> Option<Pipe> {
        match self {
            Self::Splice { pipe, pending: 0 } => Some(pipe),
            _ => None,
        }
    }

    /// Moves what `src` has into the conduit. Ok(0) is end of stream.
    fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        match self {
            Self::Splice { pipe, pending } => {
                let n = splice(src, pipe.write.as_raw_fd(), CONDUIT_BYTES - *pending)?;
                *pending += n;
                Ok(n)
            }
            Self::Copy { buf, start, end } => {
                if *start == *end {
                    *start = 0;
                    *end = 0;
                }
                let n = read(src, &mut buf[*end..])?;
                *end += n;
                Ok(n)
            }
        }
    }

    /// Moves what the conduit holds into `dst`.
    fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        match self {
            Self::Splice { pipe, pending } => {
                let n = splice(pipe.read.as_raw_fd(), dst, *pending)?;
                *pending -= n;
                Ok(n)
            }
            Self::Copy { buf, start, end } => {
                let n = write(dst, &buf[*start..*end])?;
                *start += n;
                Ok(n)
            }
        }
    }

    fn has_room(&self) -> bool {
        match self {
            Self::Splice { pending, .. } => *pending < CONDUIT_BYTES,
            Self::Copy { end, start, buf } => *end < buf.len() || start == end,
        }
    }

    /// Moves bytes from `src` to `dst` until neither can progress. A full pipe and an empty
    /// socket both answer EAGAIN to splice, so a drain that made room is always followed by
    /// another fill: no readiness edge is lost.
    pub fn pump(&mut self, src: RawFd, dst: RawFd, src_done: bool) -> io::Result<Pumped> {
        let mut out = Pumped {
            bytes: 0,
            eof: src_done,
        };
        loop {
            let mut progressed = false;
            if !out.eof && self.has_room() {
                match self.fill(src) {
                    Ok(0) => out.eof = true,
                    Ok(_) => progressed = true,
                    Err(e) if would_block(&e) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => progressed = true,
                    Err(e) => return Err(e),
                }
            }
            if self.pending() > 0 {
                match self.drain(dst) {
                    Ok(n) => {
                        out.bytes += n as u64;
                        progressed |= n > 0;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => progressed = true,
                    Err(e) => return Err(e),
                }
            }
            if !progressed {
                return Ok(out);
            }
        }
    }
}

/// True when splice(2) cannot serve these descriptors and the copy fallback should be used.
pub fn splice_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn roundtrip(mut conduit: Conduit) {
        // client_w -> proxy_in  ==pump==>  proxy_out -> server_r
        let (mut client_w, proxy_in) = pair();
        let (proxy_out, mut server_r) = pair();
        proxy_in.set_nonblocking(true).unwrap();
        proxy_out.set_nonblocking(true).unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            std::thread::spawn(move || {
                client_w.write_all(&payload).unwrap();
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server_r.read_to_end(&mut got).unwrap();
            got
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut total = 0u64;
        let mut eof = false;
        while !(eof && conduit.pending() == 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "relay stalled at {total} bytes"
            );
            let p = conduit
                .pump(proxy_in.as_raw_fd(), proxy_out.as_raw_fd(), eof)
                .unwrap();
            total += p.bytes;
            eof = p.eof;
            if p.bytes == 0 {
                std::thread::yield_now();
            }
        }
        proxy_out.shutdown(std::net::Shutdown::Write).unwrap();
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), payload);
        assert_eq!(total, payload.len() as u64);
    }

    #[test]
    fn splice_relays_all_bytes_in_order() {
        roundtrip(Conduit::splice(Pipe::new().unwrap()));
    }

    #[test]
    fn copy_relays_all_bytes_in_order() {
        roundtrip(Conduit::copy());
    }
}
