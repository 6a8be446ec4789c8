//! The writable layer: the upper directory, its workdir, and the marker
//! dialect this mount writes.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};

use super::reaper::{Reaper, remove_logged};
use super::{Layer, LayerError, remove_tree};

/// Whiteout and opaque markers this mount writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// char device 0/0 whiteouts; opaque via `<ns>.overlay.opaque=y`.
    Overlay { trusted: bool },
    /// `.wh.NAME` whiteouts and `.wh..wh..opq` opaque markers.
    Oci,
}

/// What the user asked for; `Auto` picks overlay when mknod 0/0 works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DialectChoice {
    #[default]
    Overlay,
    Oci,
}

const LOCK_NAME: &CStr = c".stratafs.lock";
/// Copies of lower files with several names, by lower inode: kept across
/// mounts (not scratch), so that every name finds the one copy.
const INDEX_NAME: &CStr = c"stratafs-index";

/// The upper layer's companions: workdir fd (held locked for the life of
/// the mount), the dialect and the private xattr namespace.
#[derive(Debug)]
pub struct Upper {
    work: OwnedFd,
    /// Made on first use, so that a workdir holds only the lock until a
    /// lower file with several names is copied up.
    index: std::sync::OnceLock<OwnedFd>,
    _lock: OwnedFd,
    dialect: Dialect,
    /// `trusted.stratafs.` when trusted xattrs can be written, else `user.stratafs.`.
    private_ns: &'static str,
    volatile: bool,
    /// Whether files made here get no xattrs of their own (no LSM labels
    /// them): a copy then has exactly the xattrs copied onto it.
    bare_new_files: bool,
    /// Scratch names: this process's id (read once; getpid is a syscall)
    /// and a counter.
    pid: u32,
    counter: AtomicU64,
    /// The inode of the shared whiteout the overlay-dialect whiteouts are
    /// links of while it is in the workdir (0 otherwise): a directory entry
    /// with that inode number is one of them, known without a stat.
    pub(super) shared_whiteout_ino: AtomicU64,
    /// Cleared once the filesystem refuses O_TMPFILE.
    tmpfiles: AtomicBool,
    reaper: Reaper,
}

impl Drop for Upper {
    fn drop(&mut self) {
        self.reaper.finish();
        self.drop_shared_whiteout();
    }
}

fn io(e: rustix::io::Errno) -> LayerError {
    LayerError::Io(e.into())
}

fn tagged(path: &Path, msg: impl Into<String>) -> LayerError {
    LayerError::open(path, std::io::Error::other(msg.into()))
}

impl Upper {
    /// Opens the workdir beside `upper`: same filesystem, not in use by
    /// another live mount, cleaned of anything a crash left behind.
    pub fn open(
        upper: &Layer,
        work_path: &Path,
        choice: DialectChoice,
        volatile: bool,
    ) -> Result<Upper, LayerError> {
        let work = Layer::open(work_path)?;
        if work.dev() != upper.dev() {
            return Err(tagged(
                work_path,
                format!(
                    "workdir must be on the same filesystem as the upper dir {}",
                    upper.path().display()
                ),
            ));
        }
        let ust = super::stat_self(upper.root().as_fd())?;
        let wst = super::stat_self(work.root().as_fd())?;
        if ust.st_ino == wst.st_ino {
            return Err(tagged(
                work_path,
                "workdir and upper dir must be different directories",
            ));
        }
        let work_fd = rustix::fs::openat(
            work.root().as_fd(),
            c".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let lock = rustix::fs::openat(
            &work_fd,
            LOCK_NAME,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| LayerError::open(work_path, e.into()))?;
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(tagged(
                work_path,
                "workdir is in use by another live stratafs mount",
            ));
        }
        clean_workdir(work_fd.as_fd())?;
        let index = std::sync::OnceLock::new();
        if let Ok(fd) = super::open_subdir(work_fd.as_fd(), INDEX_NAME) {
            let _ = index.set(fd);
        }
        let dialect = match choice {
            DialectChoice::Oci => Dialect::Oci,
            DialectChoice::Overlay if can_mknod_whiteout(work_fd.as_fd()) => Dialect::Overlay {
                trusted: can_set_trusted(work_fd.as_fd()),
            },
            DialectChoice::Overlay => {
                tracing::warn!("mknod 0/0 refused in the workdir: writing OCI whiteouts instead");
                Dialect::Oci
            }
        };
        let private_ns = if can_set_trusted(work_fd.as_fd()) {
            "trusted.stratafs."
        } else {
            "user.stratafs."
        };
        let bare_new_files = super::read_sized(|buf| {
            if buf.is_empty() {
                rustix::fs::flistxattr_query(&lock)
            } else {
                rustix::fs::flistxattr(&lock, buf)
            }
            .map_err(std::io::Error::from)
        })
        .is_ok_and(|names| {
            names
                .split(|b| *b == 0)
                .all(|n| n.is_empty() || super::is_private_xattr(n))
        });
        let reaper_work = work_fd
            .try_clone()
            .map_err(|e| LayerError::open(work_path, e))?;
        Ok(Upper {
            work: work_fd,
            index,
            _lock: lock,
            dialect,
            private_ns,
            volatile,
            bare_new_files,
            pid: std::process::id(),
            counter: AtomicU64::new(0),
            shared_whiteout_ino: AtomicU64::new(0),
            tmpfiles: AtomicBool::new(true),
            reaper: Reaper::new(reaper_work),
        })
    }

    pub fn work(&self) -> BorrowedFd<'_> {
        self.work.as_fd()
    }

    /// The index of copied-up lower files that have several names, if any
    /// was made.
    pub fn index(&self) -> Option<BorrowedFd<'_>> {
        self.index.get().map(|fd| fd.as_fd())
    }

    /// The index, made if needed.
    pub fn make_index(&self) -> Result<BorrowedFd<'_>, LayerError> {
        if let Some(fd) = self.index.get() {
            return Ok(fd.as_fd());
        }
        match rustix::fs::mkdirat(&self.work, INDEX_NAME, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(e)),
        }
        let fd = super::open_subdir(self.work.as_fd(), INDEX_NAME)?;
        // A racing caller may have set it first: either fd names the same directory.
        let _ = self.index.set(fd);
        self.index
            .get()
            .map(|fd| fd.as_fd())
            .ok_or_else(|| io(rustix::io::Errno::NOENT))
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn volatile(&self) -> bool {
        self.volatile
    }

    /// The full name of private xattr `key` (e.g. `origin`) in this mount's namespace.
    pub fn private_xattr(&self, key: &str) -> CString {
        CString::new(format!("{}{key}", self.private_ns)).unwrap_or_default()
    }

    /// A fresh name for a scratch entry in the workdir.
    pub fn temp_name(&self) -> CString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#{}.{n}", self.pid)).unwrap_or_default()
    }

    /// Whether a file made in the workdir starts with no visible xattrs.
    pub fn bare_new_files(&self) -> bool {
        self.bare_new_files
    }

    /// A nameless file in the workdir, for a copy whose name appears only
    /// once it is complete ([`Upper::publish_file`]); `None` where the
    /// filesystem has no O_TMPFILE. Syncing a file that has never had a name
    /// writes only the file: ext4 without a journal also writes the
    /// directory of a freshly made name, here the workdir, which the copy
    /// is about to leave.
    pub fn tmpfile(&self) -> Option<OwnedFd> {
        if !self.tmpfiles.load(Ordering::Relaxed) {
            return None;
        }
        match rustix::fs::openat(
            self.work(),
            c".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => Some(fd),
            Err(
                e @ (rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::ISDIR
                | rustix::io::Errno::INVAL),
            ) => {
                tracing::debug!(error = %e, "no O_TMPFILE in the workdir; copies are made under a name");
                self.tmpfiles.store(false, Ordering::Relaxed);
                None
            }
            // (ENOSPC and the like: the named copy meets them too and reports them.)
            Err(_) => None,
        }
    }

    /// fsync, unless the mount is volatile.
    pub fn sync(&self, fd: BorrowedFd<'_>) -> Result<(), LayerError> {
        if self.volatile {
            return Ok(());
        }
        rustix::fs::fsync(fd).map_err(io)
    }

    /// fsync of a directory given as an O_PATH handle.
    pub fn sync_dir(&self, dir: BorrowedFd<'_>) -> Result<(), LayerError> {
        if self.volatile {
            return Ok(());
        }
        let fd = rustix::fs::openat(
            dir,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        rustix::fs::fsync(&fd).map_err(io)
    }

    /// Removes a scratch entry (file or tree) from the workdir.
    pub fn discard(&self, name: &CStr) {
        remove_logged(self.work(), name);
    }

    /// [`Upper::discard`], done by another thread: for a directory taken out
    /// of the tree, whose contents nobody can reach any more.
    pub fn discard_later(&self, name: CString) {
        self.reaper.remove(name);
    }
}

fn clean_workdir(work: BorrowedFd<'_>) -> Result<(), LayerError> {
    let mut names = Vec::new();
    super::read_dir(work, |name, _, _| {
        if name != LOCK_NAME && name != INDEX_NAME {
            names.push(name.to_owned());
        }
        Ok(())
    })?;
    for name in names {
        remove_tree(work, &name)?;
    }
    Ok(())
}

fn can_mknod_whiteout(work: BorrowedFd<'_>) -> bool {
    let probe = c"#whiteout-probe";
    let ok = rustix::fs::mknodat(work, probe, FileType::CharacterDevice, Mode::empty(), 0).is_ok();
    let _ = rustix::fs::unlinkat(work, probe, AtFlags::empty());
    ok
}

fn can_set_trusted(work: BorrowedFd<'_>) -> bool {
    let path = super::proc_fd_path(work);
    let name = c"trusted.stratafs.probe";
    let ok =
        rustix::fs::setxattr(path.as_c_str(), name, b"1", rustix::fs::XattrFlags::empty()).is_ok();
    let _ = rustix::fs::removexattr(path.as_c_str(), name);
    ok
}
