//! FUSE passthrough: the kernel reads and writes the real file itself, so
//! file I/O runs at the speed of the layer's own file system.
//!
//! The kernel puts each inode in one I/O mode while it has open files: all
//! through its page cache, or all passed through to one backing file; an open
//! answered in the other mode fails with EIO. So the mode of every open inode
//! is tracked here, by kernel inode (node id). An inode is passed through
//! when its real file cannot change while open: a file of the upper layer,
//! or any file of a read-only mount; and, on the io_uring transport, a lower
//! file opened read-only. A copy-up while that is open makes the next opens
//! reach a different file, which that kernel inode cannot switch to: the
//! open is refused and the adapter gives the name a new kernel inode
//! (`fuse::alias`). On /dev/fuse, which cannot, lower files of a writable
//! mount stay on the page cache.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::reply::Backing;

/// How one open is served.
pub enum Route {
    /// Through the daemon, with the kernel page cache.
    Cached,
    /// By the kernel on this backing file.
    Backed(Arc<Backing>),
    /// Not at all: the kernel inode is passed through to another file (a
    /// lower file copied up while open).
    Refused,
}

/// The real file behind an inode: device and inode number.
type FileKey = (u64, u64);

enum Mode {
    Cached,
    Backed { id: Arc<Backing>, file: FileKey },
}

struct Open {
    mode: Mode,
    handles: usize,
}

#[derive(Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    /// Set once an inode was tracked: from then on every open and release is.
    tracking: AtomicBool,
    /// Opens are answered through io_uring queues (once they are up); the
    /// kernel knows a backing file by the number one transport registered,
    /// which the other cannot send: /dev/fuse then backs no new inode.
    ring: AtomicBool,
    inodes: Mutex<Inodes>,
}

#[derive(Default)]
struct Inodes {
    by_ino: HashMap<u64, Open>,
    /// Every tracked file handle, with its inode.
    by_fh: HashMap<u64, u64>,
}

impl Passthrough {
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        if on {
            self.tracking.store(true, Ordering::Relaxed);
        }
    }

    pub fn use_ring(&self) {
        self.ring.store(true, Ordering::Relaxed);
    }

    /// Picks how handle `fh` of kernel inode `ino` is served. `stable_fd` gives its
    /// real file if that never changes while open (asked only when needed:
    /// opens are a hot path), and whether it is a lower file (one that the
    /// kernel refuses, on a layer it cannot stack on, is refused alone);
    /// `writable` if open for writing;
    /// `open_backing` registers the file with the kernel through the
    /// transport that answers (`ring`: an io_uring queue).
    pub fn route(
        &self,
        ino: u64,
        fh: u64,
        stable_fd: impl FnOnce() -> Option<(Arc<OwnedFd>, bool)>,
        writable: bool,
        ring: bool,
        open_backing: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<Backing>,
    ) -> Route {
        if !self.tracking.load(Ordering::Relaxed) {
            return Route::Cached;
        }
        let mut inodes = self.inodes.lock();
        let route = match inodes.by_ino.get_mut(&ino) {
            Some(open) => {
                let route = match &open.mode {
                    Mode::Cached => Route::Cached,
                    Mode::Backed { id, file }
                        if id.is_ring() == ring
                            && stable_fd().and_then(|(fd, _)| file_key(fd.as_fd()))
                                == Some(*file) =>
                    {
                        Route::Backed(id.clone())
                    }
                    Mode::Backed { .. } => {
                        // Expected on the queues (a copy-up under an open
                        // reader); through /dev/fuse no lower file is passed
                        // through, so it is a bug there.
                        if ring {
                            tracing::debug!(ino, "passed-through inode opened on another file");
                        } else {
                            tracing::error!(ino, "passed-through inode opened on another file");
                        }
                        return Route::Refused;
                    }
                };
                open.handles += 1;
                route
            }
            None => {
                let mode = if ring || !self.ring.load(Ordering::Relaxed) {
                    self.first_mode(stable_fd, writable, open_backing)
                } else {
                    Mode::Cached
                };
                let route = match &mode {
                    Mode::Cached => Route::Cached,
                    Mode::Backed { id, .. } => Route::Backed(id.clone()),
                };
                inodes.by_ino.insert(ino, Open { mode, handles: 1 });
                route
            }
        };
        inodes.by_fh.insert(fh, ino);
        route
    }

    /// The mode of an inode opened for the first time.
    fn first_mode(
        &self,
        stable_fd: impl FnOnce() -> Option<(Arc<OwnedFd>, bool)>,
        writable: bool,
        open_backing: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<Backing>,
    ) -> Mode {
        if !self.enabled.load(Ordering::Relaxed) {
            return Mode::Cached;
        }
        let Some((fd, lower)) = stable_fd() else {
            return Mode::Cached;
        };
        let fd = fd.as_fd();
        let Ok(st) = rustix::fs::fstat(fd) else {
            return Mode::Cached;
        };
        // A passthrough write clears no setuid/setgid bit (the kernel leaves
        // that to the daemon): such files are written through the daemon.
        if writable && st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            return Mode::Cached;
        }
        match open_backing(fd) {
            Ok(id) => Mode::Backed {
                id: Arc::new(id),
                file: (st.st_dev, st.st_ino),
            },
            // A lower layer the kernel cannot stack on (ELOOP) says nothing
            // of the upper layer's files.
            Err(e) if lower && e.raw_os_error() != Some(libc::EPERM) => {
                tracing::debug!(error = %e, "lower file not passed through");
                Mode::Cached
            }
            Err(e) => {
                // Refused for one file, refused for all (no privilege, a
                // stacked layer file system): stop asking.
                tracing::warn!(error = %e, "FUSE passthrough unavailable; file I/O goes through the daemon");
                self.enabled.store(false, Ordering::Relaxed);
                Mode::Cached
            }
        }
    }

    /// Forgets handle `fh`; the last one of an inode frees its backing file.
    pub fn release(&self, fh: u64) {
        if !self.tracking.load(Ordering::Relaxed) {
            return;
        }
        let freed = {
            let mut inodes = self.inodes.lock();
            let Some(ino) = inodes.by_fh.remove(&fh) else {
                return;
            };
            match inodes.by_ino.get_mut(&ino) {
                Some(open) if open.handles > 1 => {
                    open.handles -= 1;
                    None
                }
                Some(_) => inodes.by_ino.remove(&ino),
                None => None,
            }
        };
        // A backing id is closed (an ioctl) outside the lock.
        drop(freed);
    }
}

fn file_key(fd: BorrowedFd<'_>) -> Option<FileKey> {
    rustix::fs::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino))
}
