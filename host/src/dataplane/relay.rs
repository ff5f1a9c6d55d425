//! Moving bytes one way between two sockets: through a kernel pipe with splice(2), so payload
//! never enters userspace, or through a buffer where splice is unavailable. The pump is
//! written for edge-triggered readiness: it loops until neither side can make progress.

use std::io;
use std::os::fd::RawFd;

pub use super::pipe::{Pipe, PIPE_BYTES};

/// Bytes a copy conduit holds at most.
pub const CONDUIT_BYTES: usize = 64 * 1024;

/// Buffers for bytes a destination could not take yet, pooled per worker: a flow holds one
/// only while its peer is slow, so idle flows cost no buffer memory.
#[derive(Default)]
pub struct Buffers {
    free: Vec<Box<[u8]>>,
}

impl Buffers {
    /// Most buffers kept for reuse.
    const KEEP: usize = 256;

    fn take(&mut self) -> Box<[u8]> {
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; CONDUIT_BYTES].into_boxed_slice())
    }

    fn give(&mut self, buf: Box<[u8]>) {
        if self.free.len() < Self::KEEP {
            self.free.push(buf);
        }
    }
}

/// Bytes read but not yet written, in a pooled buffer.
pub struct Stash {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// Where one direction's in-flight bytes wait.
pub enum Conduit {
    /// Read into the worker's scratch buffer and written straight through; what the
    /// destination refuses waits in a pooled stash. Best for request/response traffic: a
    /// short read proves the socket drained, saving the EAGAIN round trip.
    Copy {
        /// Unwritten bytes, if any.
        stash: Option<Stash>,
    },
    /// Zero-copy: socket -> pipe -> socket. Best for bulk transfer.
    Splice {
        /// The kernel pipe.
        pipe: Pipe,
        /// Bytes in the pipe.
        pending: usize,
    },
}

/// What readiness has said about the source's end of the stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Nothing yet: a short read drained the socket, and more data raises a new edge.
    #[default]
    No,
    /// Its FIN arrived (EPOLLRDHUP/EPOLLHUP without an error). The kernel marks a socket
    /// shut for reading only once the FIN is in sequence, so every byte before it is queued
    /// already: a short read reached the end of the stream, and reading again for the 0
    /// would be a system call that only confirms it.
    Fin,
    /// It failed: read on until the error (or EOF) shows.
    Error,
}

/// Outcome of pumping one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// Bytes delivered to the destination.
    pub bytes: u64,
    /// The source reached end of stream.
    pub eof: bool,
    /// A read filled the whole scratch buffer: this direction carries bulk data and would
    /// do better with splice.
    pub bulk: bool,
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

/// `last`: nothing follows these bytes but the end of the stream, which the caller sends at
/// once (shutdown or close): MSG_MORE holds them for it, so they leave in one segment with
/// the FIN (the peer then acknowledges both at once) instead of a segment each.
fn write(fd: RawFd, buf: &[u8], last: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if last { libc::MSG_MORE } else { 0 };
    // SAFETY: buf is valid for buf.len() bytes; MSG_NOSIGNAL avoids SIGPIPE on a closed peer.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
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
    /// A copy conduit (holds no buffer until the destination pushes back).
    pub fn copy() -> Self {
        Self::Copy { stash: None }
    }

    /// A splice conduit around a (pooled) pipe.
    pub fn splice(pipe: Pipe) -> Self {
        Self::Splice { pipe, pending: 0 }
    }

    /// True for a splice conduit.
    pub fn is_splice(&self) -> bool {
        matches!(self, Self::Splice { .. })
    }

    /// Bytes read from the source and not yet written to the destination.
    pub fn pending(&self) -> usize {
        match self {
            Self::Splice { pending, .. } => *pending,
            Self::Copy { stash } => stash.as_ref().map_or(0, |s| s.end - s.start),
        }
    }

    /// Returns the pipe or buffer to the worker's pools. A non-empty pipe is just closed, and
    /// so is one the kernel sized short of what was asked (`Pipe::is_short`).
    pub fn release(self, pipes: &mut Vec<Pipe>, buffers: &mut Buffers) {
        match self {
            Self::Splice { pipe, pending: 0 } if pipes.len() < PIPE_POOL && !pipe.is_short() => {
                pipes.push(pipe)
            }
            Self::Copy { stash: Some(s) } => buffers.give(s.buf),
            _ => {}
        }
    }

    /// Moves bytes from `src` to `dst` until neither can progress (edge-triggered safe).
    /// `src_closed`: what readiness said about the source's end (a FIN that came with the
    /// last data raises no further edge, so it must be remembered).
    pub fn pump(
        &mut self,
        src: RawFd,
        dst: RawFd,
        src_done: bool,
        src_closed: Closed,
        scratch: &mut [u8],
        buffers: &mut Buffers,
    ) -> io::Result<Pumped> {
        match self {
            Self::Copy { stash } => {
                pump_copy(stash, src, dst, src_done, src_closed, scratch, buffers)
            }
            Self::Splice { pipe, pending } => pump_splice(pipe, pending, src, dst, src_done),
        }
    }
}

/// Most pipes a worker keeps for reuse.
pub const PIPE_POOL: usize = 1024;

fn retry(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINTR)
}

fn pump_copy(
    stash: &mut Option<Stash>,
    src: RawFd,
    dst: RawFd,
    src_done: bool,
    src_closed: Closed,
    scratch: &mut [u8],
    buffers: &mut Buffers,
) -> io::Result<Pumped> {
    let mut out = Pumped {
        bytes: 0,
        eof: src_done,
        bulk: false,
    };
    loop {
        if let Some(s) = stash.as_mut() {
            match write(dst, &s.buf[s.start..s.end], false) {
                Ok(n) => {
                    out.bytes += n as u64;
                    s.start += n;
                    if s.start < s.end {
                        return Ok(out);
                    }
                    if let Some(s) = stash.take() {
                        buffers.give(s.buf);
                    }
                }
                Err(e) if would_block(&e) => return Ok(out),
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        if out.eof {
            return Ok(out);
        }
        let n = match read(src, scratch) {
            Ok(0) => {
                out.eof = true;
                return Ok(out);
            }
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(out),
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        };
        // A short read up to a known FIN is the stream's last data (see below).
        let last = n < scratch.len() && src_closed == Closed::Fin;
        let mut written = 0;
        while written < n {
            match write(dst, &scratch[written..n], last) {
                Ok(w) => written += w,
                Err(e) if would_block(&e) => break,
                Err(e) if retry(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        out.bytes += written as u64;
        if written < n {
            let mut buf = buffers.take();
            buf[..n - written].copy_from_slice(&scratch[written..n]);
            *stash = Some(Stash {
                buf,
                start: 0,
                end: n - written,
            });
            return Ok(out);
        }
        if n < scratch.len() {
            match src_closed {
                // A short read drained the socket: more data will raise a new edge.
                Closed::No => return Ok(out),
                // ... up to the FIN: the stream ends here.
                Closed::Fin => {
                    out.eof = true;
                    return Ok(out);
                }
                Closed::Error => {}
            }
        }
        if n == scratch.len() {
            out.bulk = true;
        }
    }
}

/// A full pipe and an empty socket both answer EAGAIN to splice, so a drain that made room
/// is always followed by another fill: no readiness edge is lost.
fn pump_splice(
    pipe: &mut Pipe,
    pending: &mut usize,
    src: RawFd,
    dst: RawFd,
    src_done: bool,
) -> io::Result<Pumped> {
    let mut out = Pumped {
        bytes: 0,
        eof: src_done,
        bulk: true,
    };
    loop {
        let mut progressed = false;
        if !out.eof && *pending < pipe.capacity() {
            match splice(src, pipe.write_fd(), pipe.capacity() - *pending) {
                Ok(0) => out.eof = true,
                Ok(n) => {
                    *pending += n;
                    progressed = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) if retry(&e) => progressed = true,
                Err(e) => return Err(e),
            }
        }
        if *pending > 0 {
            match splice(pipe.read_fd(), dst, *pending) {
                Ok(n) => {
                    *pending -= n;
                    out.bytes += n as u64;
                    progressed |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(e) if retry(&e) => progressed = true,
                Err(e) => return Err(e),
            }
        }
        if !progressed {
            return Ok(out);
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
    use std::os::fd::AsRawFd;

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
        let mut scratch = vec![0u8; CONDUIT_BYTES];
        let mut buffers = Buffers::default();
        let mut total = 0u64;
        let mut eof = false;
        while !(eof && conduit.pending() == 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "relay stalled at {total} bytes"
            );
            let p = conduit
                .pump(
                    proxy_in.as_raw_fd(),
                    proxy_out.as_raw_fd(),
                    eof,
                    Closed::No,
                    &mut scratch,
                    &mut buffers,
                )
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
        roundtrip(Conduit::splice(Pipe::new(CONDUIT_BYTES).unwrap()));
    }

    #[test]
    fn a_large_pipe_relays_all_bytes_in_order() {
        roundtrip(Conduit::splice(Pipe::new(PIPE_BYTES).unwrap()));
    }

    #[test]
    fn a_pipe_sized_short_of_the_ask_is_not_pooled() {
        let (mut pipes, mut buffers) = (Vec::new(), Buffers::default());
        // Refused to every user: the pipe keeps its first size, short of the ask.
        Conduit::splice(Pipe::new(usize::MAX).unwrap()).release(&mut pipes, &mut buffers);
        assert!(
            pipes.is_empty(),
            "a short pipe would keep its size in the pool"
        );
        Conduit::splice(Pipe::new(CONDUIT_BYTES).unwrap()).release(&mut pipes, &mut buffers);
        assert_eq!(pipes.len(), 1, "a pipe granted its size is reused");
    }

    /// A socket that received `data` and then the peer's FIN, both queued.
    fn sent_then_closed(data: &[u8]) -> (TcpStream, TcpStream) {
        let (mut w, r) = pair();
        r.set_nonblocking(true).unwrap();
        w.write_all(data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
        let mut fd = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fd, 1, 5_000) };
        assert_eq!(n, 1, "the FIN did not arrive");
        (w, r)
    }

    #[test]
    fn a_short_read_up_to_a_known_fin_is_the_end_of_stream() {
        let (proxy_out, mut server_r) = pair();
        let dst = proxy_out.as_raw_fd();
        let (mut scratch, mut buffers) = (vec![0u8; CONDUIT_BYTES], Buffers::default());
        let pump = |src: &TcpStream, closed, scratch: &mut [u8], buffers: &mut Buffers| {
            let mut c = Conduit::copy();
            c.pump(src.as_raw_fd(), dst, false, closed, scratch, buffers)
                .unwrap()
        };
        // Without word of the FIN, a short read only says the socket is drained.
        let (_w1, open) = sent_then_closed(b"hello");
        let p = pump(&open, Closed::No, &mut scratch, &mut buffers);
        assert_eq!((p.bytes, p.eof), (5, false));
        // With it, the same read ends the stream: no second read (nor edge) is needed.
        let (_w2, fin) = sent_then_closed(b"world");
        let p = pump(&fin, Closed::Fin, &mut scratch, &mut buffers);
        assert_eq!((p.bytes, p.eof), (5, true));
        drop(proxy_out);
        let mut got = Vec::new();
        server_r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"helloworld");
    }

    /// Segments `s` has sent (TCP_INFO), pure ACKs included.
    fn segments_sent(s: &TcpStream) -> u32 {
        // SAFETY: tcp_info is plain old data, so all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: info and len are valid for the call and len is info's size.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info.tcpi_segs_out
    }

    #[test]
    fn the_last_data_before_a_known_fin_leaves_with_the_fin_in_one_segment() {
        let (proxy_out, mut server_r) = pair();
        proxy_out.set_nodelay(true).unwrap();
        let (_w, fin) = sent_then_closed(b"bye");
        let (mut scratch, mut buffers) = (vec![0u8; CONDUIT_BYTES], Buffers::default());
        let before = segments_sent(&proxy_out);
        let p = Conduit::copy()
            .pump(
                fin.as_raw_fd(),
                proxy_out.as_raw_fd(),
                false,
                Closed::Fin,
                &mut scratch,
                &mut buffers,
            )
            .unwrap();
        assert_eq!((p.bytes, p.eof), (3, true));
        // What the flow does next with a drained direction.
        proxy_out.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server_r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
        assert_eq!(
            segments_sent(&proxy_out) - before,
            1,
            "data and FIN in one segment (a segment each costs the peer an ACK too)"
        );
    }

    #[test]
    fn copy_relays_all_bytes_in_order() {
        roundtrip(Conduit::copy());
    }
}
