//! A kernel pipe as the relay's splice buffer, sized for bulk: the socket -> pipe -> socket
//! path of `relay` moves at most a pipe's capacity per system call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Kernel pipe used as a splice buffer; reused across flows through the worker's pool.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes the pipe holds: what F_SETPIPE_SZ granted.
    cap: usize,
    /// Bytes asked for: a pipe granted less is not pooled (see `is_short`).
    asked: usize,
}

/// A new pipe's capacity before F_SETPIPE_SZ: 16 pages.
const DEFAULT_BYTES: usize = 64 * 1024;

/// Pipe size the relay asks for by default. A pipe holds a fixed number of buffers (one
/// page's worth of accounting each), and a splice from TCP fills one per socket-buffer
/// fragment, so a default 64 KiB pipe often moves much less than 64 KiB per call. 256 KiB
/// took one stream from 0.62x to 0.78x of kernel DNAT on the pinned bench; 1 MiB gained
/// nothing more. The pages are the socket buffers' own, referenced, not copied.
pub const PIPE_BYTES: usize = 256 * 1024;

impl Pipe {
    /// A non-blocking pipe of about `bytes` (the kernel rounds up to a power of two pages).
    /// Where the kernel refuses that size the pipe keeps the size it was made with. Without
    /// CAP_SYS_RESOURCE it refuses above /proc/sys/fs/pipe-max-size, and once the user's
    /// pipes hold more than fs/pipe-user-pages-soft pages (16384 by default: 256 pipes of
    /// 256 KiB, counted for every process of the user, idle pooled pipes included), where a
    /// new pipe gets only two pages.
    pub fn new(bytes: usize) -> io::Result<Self> {
        let (read, write) = open()?;
        let fd = write.as_raw_fd();
        let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a pipe descriptor we own; F_SETPIPE_SZ takes an int size and
        // returns the size granted.
        let mut got = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, want) };
        if got <= 0 {
            // Refused: the pipe keeps the size it was made with, which is not 64 KiB for
            // a user over pipe-user-pages-soft (two pages).
            // SAFETY: as above; F_GETPIPE_SZ takes no argument.
            got = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
        }
        Ok(Self {
            read,
            write,
            cap: usize::try_from(got)
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_BYTES),
            asked: bytes,
        })
    }

    /// Bytes the pipe holds.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether the kernel granted less than was asked. Such a pipe serves its flow but is
    /// closed afterwards rather than pooled: pooled, it would keep its quota and its small
    /// size for good, where a pipe made later, with the quota freed, gets the full size.
    pub fn is_short(&self) -> bool {
        self.cap < self.asked
    }

    /// The end splice fills.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// The end splice drains.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// A non-blocking pipe of the kernel's default size: its read and write ends.
fn open() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid two-int array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size the kernel reports for `pipe`.
    fn kernel_size(pipe: &Pipe) -> usize {
        // SAFETY: fcntl on the test's own pipe.
        unsafe { libc::fcntl(pipe.write_fd(), libc::F_GETPIPE_SZ) as usize }
    }

    #[test]
    fn the_size_granted_is_the_size_the_kernel_reports() {
        let pipe = Pipe::new(PIPE_BYTES).unwrap();
        assert_eq!(pipe.capacity(), kernel_size(&pipe));
    }

    #[test]
    fn the_pipe_size_asked_for_is_granted_up_to_the_limit() {
        // 1 MiB is pipe-max-size's default, allowed to any user under its page quota (CI
        // runs as root, which has no quota).
        let pipe = Pipe::new(PIPE_BYTES).unwrap();
        if pipe.is_short() {
            eprintln!("skipped: this user is over its pipe page quota");
            return;
        }
        assert!(pipe.capacity() >= PIPE_BYTES, "got {}", pipe.capacity());
        // Sizes round up to a power of two pages.
        assert_eq!(Pipe::new(100_000).unwrap().capacity(), 128 * 1024);
    }

    #[test]
    fn a_refused_size_keeps_the_pipe_and_marks_it_short() {
        // 2 GiB is refused to every user, root included.
        let pipe = Pipe::new(usize::MAX).unwrap();
        assert_eq!(pipe.capacity(), kernel_size(&pipe));
        assert!(
            pipe.is_short(),
            "granted {} of {}",
            pipe.capacity(),
            usize::MAX
        );
        assert!(!Pipe::new(pipe.capacity()).unwrap().is_short());
    }
}
