//! Batched UDP I/O: recvmmsg/sendmmsg over buffers allocated once per worker. At a gigabit of
//! datagrams the per-syscall cost dominates a userspace proxy; batching 32 at a time cuts it
//! to a few percent and leaves the cores to the endpoints. Destination addresses come with
//! every received datagram (pktinfo), as in `pktinfo`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;

use super::pktinfo::{self, Received};

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest datagram carried.
pub const DATAGRAM: usize = 65536;
const CMSG_BYTES: usize = 64;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Cmsg([u8; CMSG_BYTES]);

/// One worker's datagram batch: received datagrams stay here until they are sent on.
pub struct Batch {
    data: Box<[u8]>,
    lens: [usize; BATCH],
    names: Box<[libc::sockaddr_storage]>,
    cmsgs: Box<[Cmsg]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    out_name: Box<libc::sockaddr_storage>,
    out_cmsg: Box<Cmsg>,
}

// SAFETY: the raw pointers in the headers only ever point into this Batch's own heap
// buffers, are rewritten before every system call, and the Batch is used by one thread at a
// time (the worker that owns it).
unsafe impl Send for Batch {}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// Allocates the batch (2 MiB of datagram space).
    pub fn new() -> Self {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let (names, iovs, hdrs, out_name) = unsafe {
            (
                vec![zeroed::<libc::sockaddr_storage>(); BATCH].into_boxed_slice(),
                vec![zeroed::<libc::iovec>(); BATCH].into_boxed_slice(),
                vec![zeroed::<libc::mmsghdr>(); BATCH].into_boxed_slice(),
                Box::new(zeroed::<libc::sockaddr_storage>()),
            )
        };
        Self {
            data: vec![0u8; BATCH * DATAGRAM].into_boxed_slice(),
            lens: [0; BATCH],
            names,
            cmsgs: vec![Cmsg([0; CMSG_BYTES]); BATCH].into_boxed_slice(),
            iovs,
            hdrs,
            out_name,
            out_cmsg: Box::new(Cmsg([0; CMSG_BYTES])),
        }
    }

    /// Receives up to BATCH datagrams without blocking; returns how many.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.data[i * DATAGRAM..].as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_BYTES as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Sender, destination and length of received datagram `i`.
    pub fn meta(&self, i: usize) -> Option<Received> {
        let from = pktinfo::from_storage(&self.names[i])?;
        // SAFETY: the header was filled by recvmmsg and its control buffer is still ours.
        let to = unsafe { pktinfo::destination(&self.hdrs[i].msg_hdr) };
        Some(Received {
            len: self.lens[i],
            from,
            to,
        })
    }

    /// Payload of received datagram `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        &self.data[i * DATAGRAM..i * DATAGRAM + self.lens[i]]
    }

    /// Bytes in datagrams `range`.
    pub fn bytes(&self, range: Range<usize>) -> u64 {
        self.lens[range].iter().map(|l| *l as u64).sum()
    }

    /// Sends datagrams `range` on a connected socket, or to `to` from `from` (pktinfo) when
    /// given. Returns how many left; the rest were refused (socket buffer full).
    pub fn send(
        &mut self,
        fd: RawFd,
        range: Range<usize>,
        to: Option<&SocketAddr>,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        let (name, namelen) = match to {
            Some(addr) => {
                let (ss, len) = pktinfo::to_storage(addr);
                *self.out_name = ss;
                (
                    (&mut *self.out_name as *mut libc::sockaddr_storage).cast(),
                    len,
                )
            }
            None => (std::ptr::null_mut(), 0),
        };
        let controllen = match from {
            // SAFETY: out_cmsg is aligned and large enough for one pktinfo message.
            Some(ip) => unsafe { pktinfo::write_source(&mut self.out_cmsg.0, ip) },
            None => 0,
        };
        let count = range.len();
        for (k, i) in range.enumerate() {
            self.iovs[k] = libc::iovec {
                iov_base: self.data[i * DATAGRAM..].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let h = &mut self.hdrs[k].msg_hdr;
            h.msg_name = name;
            h.msg_namelen = namelen;
            h.msg_iov = &mut self.iovs[k];
            h.msg_iovlen = 1;
            h.msg_control = if controllen > 0 {
                self.out_cmsg.0.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
            h.msg_controllen = controllen as _;
            h.msg_flags = 0;
        }
        // SAFETY: the first `count` headers point into buffers owned by self.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                count as _,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}
