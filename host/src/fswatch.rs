//! Content-only watching of one directory (the manifests directory, `--plugin-dir`), with
//! inotify directly. The watch mask asks the kernel for content changes only: a file created
//! (`IN_CREATE`), written and closed (`IN_CLOSE_WRITE`), moved in or out (`IN_MOVED_TO`,
//! `IN_MOVED_FROM`: also a ConfigMap volume's `..data` symlink swap) or deleted
//! (`IN_DELETE`), and the directory itself going away. Opens, reads, `IN_MODIFY` (a write
//! still in progress: its `IN_CLOSE_WRITE` follows) and attribute changes are never asked
//! for, so nobody's reads (the daemon's own, an `ls`, a monitoring agent) wake the daemon:
//! notify's inotify backend asks for `IN_OPEN` and `IN_ATTRIB`, which made the manifests
//! source re-read its files after each of its own reads, and so it is not used.
//!
//! Bursts are coalesced: [`DirWatch::next`] returns once no event arrived for a settle time
//! (bounded, so a writer that never stops is still seen).

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};

/// A coalesced burst of changes may be delayed at most this long by a writer that never
/// pauses for the settle time.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// What the kernel is asked to report: content changes only.
pub fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// What one inotify event means for a watcher of the directory's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The entry `name` of the directory changed (created, written, moved, deleted).
    Entry {
        /// Its file name.
        name: OsString,
        /// It is a directory (a ConfigMap volume's timestamped data directory).
        dir: bool,
    },
    /// Events were lost (queue overflow): everything must be read again.
    Overflow,
    /// The watched directory itself was removed or moved: nothing more will be reported.
    Gone,
}

/// Classifies one event by its mask; None for what is not a content change (opens, reads,
/// attributes: never asked for, but a mask added by someone else's watch on the same inode
/// must not count either; and `IN_IGNORED` that follows `Gone`).
pub fn classify(mask: EventMask, name: Option<&std::ffi::OsStr>) -> Option<Change> {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Some(Change::Overflow);
    }
    if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
        return Some(Change::Gone);
    }
    let content = EventMask::CREATE
        | EventMask::CLOSE_WRITE
        | EventMask::MOVED_TO
        | EventMask::MOVED_FROM
        | EventMask::DELETE;
    if !mask.intersects(content) {
        return None;
    }
    Some(Change::Entry {
        name: name?.to_os_string(),
        dir: mask.contains(EventMask::ISDIR),
    })
}

/// A burst of changes, coalesced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Burst {
    /// Paths (in the watched directory) of the entries that changed, sorted, without repeats.
    pub paths: Vec<PathBuf>,
    /// Some changed entry is a directory.
    pub dirs: bool,
    /// Events were lost: everything must be read again.
    pub overflow: bool,
    /// The directory went away.
    pub gone: bool,
}

impl Burst {
    fn add(&mut self, dir: &Path, change: Change) {
        match change {
            Change::Entry { name, dir: is_dir } => {
                self.dirs |= is_dir;
                self.paths.push(dir.join(name));
            }
            Change::Overflow => self.overflow = true,
            Change::Gone => self.gone = true,
        }
    }

    fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.overflow && !self.gone
    }
}

/// A content-only watch of one directory.
pub struct DirWatch {
    inotify: Inotify,
    dir: PathBuf,
    buffer: Vec<u8>,
}

impl DirWatch {
    /// Watches `dir` (not its subdirectories). Fails when it is not a watchable directory.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let inotify = Inotify::init()?;
        inotify.watches().add(dir, mask())?;
        Ok(Self {
            inotify,
            dir: dir.to_path_buf(),
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Blocks until something changed, then until no event came for `settle` (at most
    /// [`MAX_DELAY`] in all); returns the burst. Err only for a failing inotify descriptor.
    pub fn next(&mut self, settle: Duration) -> io::Result<Burst> {
        let mut burst = Burst::default();
        while burst.is_empty() {
            self.wait(None)?;
            self.drain(&mut burst)?;
        }
        let deadline = Instant::now() + MAX_DELAY;
        while !burst.gone {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait(Some(settle.min(left)))? {
                break;
            }
            self.drain(&mut burst)?;
        }
        burst.paths.sort();
        burst.paths.dedup();
        Ok(burst)
    }

    /// Waits until the descriptor is readable (true) or `timeout` passed (false).
    fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = timeout.map_or(-1, |t| {
            i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX)
        });
        let mut pfd = libc::pollfd {
            fd: self.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 {
                return Ok(n > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reads every queued event into `burst` (non-blocking).
    fn drain(&mut self, burst: &mut Burst) -> io::Result<()> {
        loop {
            match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => {
                    let mut any = false;
                    for ev in events {
                        any = true;
                        if let Some(c) = classify(ev.mask, ev.name) {
                            burst.add(&self.dir, c);
                        }
                    }
                    if !any {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn entry(name: &str, dir: bool) -> Option<Change> {
        Some(Change::Entry {
            name: name.into(),
            dir,
        })
    }

    #[test]
    fn content_changes_count_and_opens_reads_and_attributes_do_not() {
        let n = Some(OsStr::new("web.yaml"));
        for m in [
            EventMask::CREATE,
            EventMask::CLOSE_WRITE,
            EventMask::MOVED_TO,
            EventMask::MOVED_FROM,
            EventMask::DELETE,
        ] {
            assert_eq!(classify(m, n), entry("web.yaml", false), "{m:?}");
        }
        for m in [
            EventMask::OPEN,
            EventMask::ACCESS,
            EventMask::CLOSE_NOWRITE,
            EventMask::ATTRIB,
            EventMask::MODIFY,
            EventMask::IGNORED,
            EventMask::OPEN | EventMask::ISDIR,
        ] {
            assert_eq!(classify(m, n), None, "{m:?}");
        }
    }

    #[test]
    fn a_configmap_swap_names_its_data_link_and_directories() {
        let swap = classify(EventMask::MOVED_TO, Some(OsStr::new("..data")));
        assert_eq!(swap, entry("..data", false));
        let made = classify(
            EventMask::CREATE | EventMask::ISDIR,
            Some(OsStr::new("..2026_12_03_18_00_00.1")),
        );
        assert_eq!(made, entry("..2026_12_03_18_00_00.1", true));
    }

    #[test]
    fn overflow_and_the_directory_going_away_are_their_own_changes() {
        assert_eq!(
            classify(EventMask::Q_OVERFLOW, None),
            Some(Change::Overflow)
        );
        assert_eq!(classify(EventMask::DELETE_SELF, None), Some(Change::Gone));
        assert_eq!(classify(EventMask::MOVE_SELF, None), Some(Change::Gone));
    }

    #[test]
    fn reads_and_attribute_changes_never_wake_a_watch_and_a_write_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, "a: 1\n").expect("write");
        let mut w = DirWatch::new(dir.path()).expect("watch");
        // Reads, a listing, a metadata read and a chmod: none is a change.
        for _ in 0..10 {
            std::fs::read(&file).expect("read");
            std::fs::read_dir(dir.path()).expect("list").for_each(drop);
            std::fs::metadata(&file).expect("stat");
        }
        let perms = std::fs::metadata(&file).expect("stat").permissions();
        std::fs::set_permissions(&file, perms).expect("chmod");
        assert!(!w.wait(Some(Duration::from_millis(100))).expect("poll"));
        let mut quiet = Burst::default();
        w.drain(&mut quiet).expect("drain");
        assert!(quiet.is_empty(), "{quiet:?}");

        // A write (queued before `next` asks, so it returns without waiting).
        std::fs::write(&file, "a: 2\n").expect("write");
        let burst = w
            .next(Duration::from_millis(20))
            .expect("a write is reported");
        assert_eq!(burst.paths, vec![dir.path().join("web.yaml")]);
        assert!(!burst.overflow && !burst.gone && !burst.dirs);
    }

    #[test]
    fn a_watch_of_a_missing_directory_fails() {
        assert!(DirWatch::new(Path::new("/nonexistent/nodeportd-watch")).is_err());
    }
}
