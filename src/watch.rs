//! Waking the feed when the database's files are written, instead of polling.
//!
//! Another process commits by writing the database's write-ahead log (`<db>-wal`), or the
//! database file itself in rollback-journal mode. On Linux the kernel reports those writes
//! through inotify, so the feed can sleep until something was written and then look, rather
//! than asking SQLite every few milliseconds whether anything changed. An idle daemon's feed
//! then wakes only for its backstop look (see the store's feed), and a lone change is seen as
//! soon as it is written.
//!
//! A [`Watch`] watches the database's directory (the log is created and removed beside the
//! database) and wakes for writes to any file whose name starts with the database's. It also
//! holds a pipe: [`Waker::wake`] writes to it, which is how the feed learns, while it sleeps
//! in `poll`, that its bus closed. Where inotify is missing (another system than Linux) or refused (the per-user
//! limit of watches or instances reached), [`Watch::new`] fails and the feed polls instead.

#[cfg(target_os = "linux")]
pub use linux::Watch;
#[cfg(not(target_os = "linux"))]
pub use other::{Waker, Watch};

/// What ended a [`Watch::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A file of the database was written (or the kernel's event queue overflowed, which may
    /// hide such a write).
    Written,
    /// [`Waker::wake`] was called.
    Called,
    /// The timeout passed first.
    TimedOut,
}

#[cfg(target_os = "linux")]
mod linux {
    use super::Woken;
    use std::ffi::{CString, OsString};
    use std::fs::File;
    use std::io::{self, Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// The database's files, watched through inotify.
    pub struct Watch {
        inotify: File,
        wake: io::PipeReader,
        waker: Waker,
        /// The database file's name: events for other files of the directory are ignored.
        name: OsString,
    }

    /// Wakes a [`Watch`] from another thread. Cheap to clone.
    #[derive(Clone)]
    pub struct Waker(Arc<Mutex<io::PipeWriter>>);

    impl Waker {
        /// Makes the watch's current or next [`Watch::wait`] return [`Woken::Called`].
        pub fn wake(&self) {
            let mut pipe = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A full pipe already holds a wake-up: nothing is lost when this write fails.
            let _ = pipe.write(&[1]);
        }
    }

    impl Watch {
        /// Watches the directory of `database` (followed through symbolic links) for writes to
        /// the database's files.
        pub fn new(database: &Path) -> io::Result<Watch> {
            let real = std::fs::canonicalize(database)?;
            let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
                return Err(io::Error::other("the database path has no directory"));
            };
            let dir = CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| io::Error::other("the database path holds a NUL byte"))?;
            // SAFETY: inotify_init1 takes flags only; a non-negative result is a descriptor we
            // now own, which File closes.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let inotify = unsafe { File::from_raw_fd(fd) };
            let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO;
            // SAFETY: `dir` is a NUL-terminated string that outlives the call.
            if unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), mask) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let (wake, writer) = io::pipe()?;
            set_nonblocking(&wake)?;
            set_nonblocking(&writer)?;
            Ok(Watch {
                inotify,
                wake,
                waker: Waker(Arc::new(Mutex::new(writer))),
                name: name.to_owned(),
            })
        }

        /// A handle that wakes this watch.
        pub fn waker(&self) -> Waker {
            self.waker.clone()
        }

        /// Sleeps until a file of the database is written, the waker is called or `timeout`
        /// passes. Writes that happened since the last wait count: the kernel queues them.
        pub fn wait(&self, timeout: Duration) -> io::Result<Woken> {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Woken::TimedOut);
                }
                let mut fds = [
                    libc::pollfd {
                        fd: self.inotify.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: self.wake.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // Rounded up, so that a wait never ends early and spins.
                let millis = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
                // SAFETY: `fds` is a live array of two pollfd structures for the whole call.
                if unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) } < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if fds[1].revents != 0 {
                    drain(&self.wake)?;
                    return Ok(Woken::Called);
                }
                // Writes to other files of the directory wake the poll, not the caller.
                if fds[0].revents != 0 && self.drain_events()? {
                    return Ok(Woken::Written);
                }
            }
        }

        /// Reads every queued event; answers whether one concerns the database's files.
        fn drain_events(&self) -> io::Result<bool> {
            let mut buffer = [0u8; 4096];
            let mut ours = false;
            loop {
                let n = match (&self.inotify).read(&mut buffer) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ours),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                ours |= concerns(&buffer[..n], self.name.as_bytes());
            }
        }
    }

    /// Whether the inotify events in `events` include one for a file whose name starts with
    /// `name` (the database, its log, its journal), or an overflow that may have hidden one.
    pub(super) fn concerns(mut events: &[u8], name: &[u8]) -> bool {
        // struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
        const HEADER: usize = 16;
        let mut ours = false;
        while events.len() >= HEADER {
            let field = |at: usize| u32::from_ne_bytes(events[at..at + 4].try_into().unwrap());
            let mask = field(4);
            let len = field(12) as usize;
            let end = (HEADER + len).min(events.len());
            let file = &events[HEADER..end];
            let file = &file[..file.iter().position(|b| *b == 0).unwrap_or(file.len())];
            ours |= mask & libc::IN_Q_OVERFLOW != 0 || file.starts_with(name);
            events = &events[end..];
        }
        ours
    }

    fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor this module owns, reading then setting its status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn drain(mut pipe: &io::PipeReader) -> io::Result<()> {
        let mut buffer = [0u8; 64];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Elsewhere there is no watch: the feed polls.
#[cfg(not(target_os = "linux"))]
mod other {
    use super::Woken;
    use std::io;
    use std::path::Path;
    use std::time::Duration;

    pub struct Watch;

    #[derive(Clone)]
    pub struct Waker;

    impl Waker {
        pub fn wake(&self) {}
    }

    impl Watch {
        pub fn new(_database: &Path) -> io::Result<Watch> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub fn waker(&self) -> Waker {
            Waker
        }

        pub fn wait(&self, _timeout: Duration) -> io::Result<Woken> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::*;
    use super::*;
    use std::time::{Duration, Instant};

    fn event(mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        padded.resize(name.len().div_ceil(16).max(1) * 16, 0);
        let mut e = Vec::new();
        e.extend_from_slice(&1i32.to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&0u32.to_ne_bytes());
        e.extend_from_slice(&(padded.len() as u32).to_ne_bytes());
        e.extend_from_slice(&padded);
        e
    }

    #[test]
    fn only_the_databases_files_and_overflows_concern_it() {
        let name = b"sync.db";
        assert!(concerns(&event(libc::IN_MODIFY, "sync.db-wal"), name));
        assert!(concerns(&event(libc::IN_MODIFY, "sync.db"), name));
        assert!(!concerns(&event(libc::IN_MODIFY, "other.log"), name));
        assert!(!concerns(&event(libc::IN_MODIFY, "sync.d"), name));
        assert!(concerns(&event(libc::IN_Q_OVERFLOW, ""), name));
        let mut two = event(libc::IN_MODIFY, "other.log");
        two.extend(event(libc::IN_MODIFY, "sync.db-shm"));
        assert!(concerns(&two, name), "the second event of a read counts");
        assert!(!concerns(&[], name));
    }

    #[test]
    fn wakes_for_writes_to_the_databases_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sync.db");
        std::fs::write(&db, b"").unwrap();
        let watch = Watch::new(&db).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(watch.wait(ms(20)).unwrap(), Woken::TimedOut);

        std::fs::write(dir.path().join("unrelated"), b"x").unwrap();
        assert_eq!(watch.wait(ms(20)).unwrap(), Woken::TimedOut);

        std::fs::write(dir.path().join("sync.db-wal"), b"x").unwrap();
        let started = Instant::now();
        assert_eq!(watch.wait(Duration::from_secs(10)).unwrap(), Woken::Written);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(watch.wait(ms(20)).unwrap(), Woken::TimedOut, "drained");

        let waker = watch.waker();
        std::thread::spawn(move || waker.wake());
        assert_eq!(watch.wait(Duration::from_secs(10)).unwrap(), Woken::Called);
    }

    #[test]
    fn a_missing_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Watch::new(&dir.path().join("absent.db")).is_err());
    }
}
