//! Writing whiteouts and opaque markers into the upper layer, in the
//! mount's one dialect, so that each fact has exactly one marker.

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};

use super::markers::{OCI_OPAQUE, oci_whiteout_name};
use super::upper::{Dialect, Upper};
use super::{LayerError, remove_tree};

fn io(e: rustix::io::Errno) -> LayerError {
    LayerError::Io(e.into())
}

fn oci_name(name: &CStr) -> Result<CString, LayerError> {
    oci_whiteout_name(name)
        .ok_or_else(|| LayerError::Io(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)))
}

/// The workdir's whiteout that the overlay-dialect whiteouts are hard links of.
const SHARED_WHITEOUT: &CStr = c"#whiteout";
/// The workdir's empty file that the OCI-dialect whiteouts are hard links of.
const SHARED_OCI_WHITEOUT: &CStr = c"#whiteout-oci";

fn make_overlay_whiteout(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<()> {
    rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)
}

/// An empty file: an OCI marker.
fn make_empty(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<()> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map(drop)
}

impl Upper {
    /// Hides `name` (absent from upper `dir`) in the layers below.
    pub fn write_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), LayerError> {
        match self.dialect() {
            Dialect::Overlay { .. } => self.new_whiteout(dir, name)?,
            Dialect::Oci => self.new_oci_whiteout(dir, name)?,
        }
        Ok(())
    }

    /// A new overlay whiteout `name` in `dir`, linked to the shared one.
    fn new_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), LayerError> {
        match self.link_shared(SHARED_WHITEOUT, make_overlay_whiteout, dir, name) {
            Err(rustix::io::Errno::EXIST) => Err(io(rustix::io::Errno::EXIST)),
            Ok(()) => {
                if self.shared_whiteout_ino.load(Ordering::Relaxed) == 0
                    && let Ok(st) = super::stat_at(self.work(), SHARED_WHITEOUT)
                    && super::is_overlay_whiteout(self.work(), SHARED_WHITEOUT, &st)
                {
                    self.shared_whiteout_ino.store(st.st_ino, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(_) => make_overlay_whiteout(dir, name).map_err(io),
        }
    }

    /// Whether a directory entry of the upper layer, of type `ftype` and
    /// inode number `ino` (as `getdents` gives them), is an overlay whiteout
    /// this mount made: a link of the shared one.
    pub fn is_shared_whiteout(&self, ftype: FileType, ino: u64) -> bool {
        ftype == FileType::CharacterDevice
            && ino != 0
            && ino == self.shared_whiteout_ino.load(Ordering::Relaxed)
    }

    /// The OCI whiteout of `name` in `dir` (`.wh.NAME`), linked to the
    /// shared one; one already there is kept.
    fn new_oci_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), LayerError> {
        let wh = oci_name(name)?;
        match self.link_shared(SHARED_OCI_WHITEOUT, make_empty, dir, &wh) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(_) => make_empty(dir, &wh).map_err(io),
        }
    }

    /// Makes `name` in `dir` a hard link of the workdir's `shared` marker,
    /// as kernel overlayfs makes its whiteouts: a link costs far less than a
    /// new inode, which after a cache drop means reading the inode tables.
    /// `shared` is made by `make` when missing, and (but for the overlay
    /// dialect's) made anew once it has as many links as the file system
    /// allows.
    fn link_shared(
        &self,
        shared: &CStr,
        make: fn(BorrowedFd<'_>, &CStr) -> rustix::io::Result<()>,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> rustix::io::Result<()> {
        let mut last = rustix::io::Errno::NOENT;
        for _ in 0..3 {
            match rustix::fs::linkat(self.work(), shared, dir, name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::NOENT) => {
                    if let Err(e) = make(self.work(), shared)
                        && e != rustix::io::Errno::EXIST
                    {
                        return Err(e);
                    }
                }
                // The overlay dialect's shared whiteout stays while mounted:
                // its inode number names its links (`is_shared_whiteout`),
                // and an inode number is unique only while its inode lives.
                Err(rustix::io::Errno::MLINK) if shared == SHARED_WHITEOUT => {
                    return Err(rustix::io::Errno::MLINK);
                }
                Err(rustix::io::Errno::MLINK) => {
                    // Those linked so far keep their inode; the next is a new one.
                    let _ = rustix::fs::unlinkat(self.work(), shared, AtFlags::empty());
                    last = rustix::io::Errno::MLINK;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Removes the shared whiteouts (at unmount: the workdir is left clean).
    pub(crate) fn drop_shared_whiteout(&self) {
        self.shared_whiteout_ino.store(0, Ordering::Relaxed);
        for shared in [SHARED_WHITEOUT, SHARED_OCI_WHITEOUT] {
            let _ = rustix::fs::unlinkat(self.work(), shared, AtFlags::empty());
        }
    }

    /// Replaces the upper entry `name` in `dir` by a whiteout, atomically in
    /// the overlay dialect; the old entry (a whole tree for a directory) is
    /// removed from the workdir afterwards.
    pub fn replace_with_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        is_dir: bool,
    ) -> Result<(), LayerError> {
        match self.dialect() {
            Dialect::Overlay { .. } => {
                let tmp = self.temp_name();
                self.new_whiteout(self.work(), &tmp)?;
                let flags = if is_dir {
                    RenameFlags::EXCHANGE
                } else {
                    RenameFlags::empty()
                };
                if let Err(e) = rustix::fs::renameat_with(self.work(), &tmp, dir, name, flags) {
                    self.discard(&tmp);
                    return Err(io(e));
                }
                if is_dir {
                    // The old directory now sits in the workdir under `tmp`.
                    self.discard_later(tmp);
                }
            }
            Dialect::Oci => {
                // The whiteout first: an entry beats an OCI whiteout in its own
                // layer, so the name stays visible until the entry goes.
                self.new_oci_whiteout(dir, name)?;
                self.remove_entry(dir, name, is_dir)?;
            }
        }
        Ok(())
    }

    /// Removes an upper entry; a directory (which may still hold markers) is
    /// first moved into the workdir so that it vanishes at once.
    pub fn remove_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        is_dir: bool,
    ) -> Result<(), LayerError> {
        if !is_dir {
            return rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io);
        }
        let tmp = self.temp_name();
        rustix::fs::renameat_with(dir, name, self.work(), &tmp, RenameFlags::NOREPLACE)
            .map_err(io)?;
        self.discard_later(tmp);
        Ok(())
    }

    /// Removes the OCI whiteout of `name` from `dir`, if there is one (an
    /// upper dir may hold markers of another dialect from an earlier mount).
    pub fn drop_oci_whiteout(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), LayerError> {
        let wh = oci_name(name)?;
        match rustix::fs::unlinkat(dir, &wh, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Marks the (not yet published) directory `dir` opaque.
    pub fn set_opaque(&self, dir: BorrowedFd<'_>) -> Result<(), LayerError> {
        match self.dialect() {
            Dialect::Overlay { trusted } => {
                let attr = if trusted {
                    c"trusted.overlay.opaque"
                } else {
                    c"user.overlay.opaque"
                };
                let path = super::proc_fd_path(dir);
                rustix::fs::setxattr(path.as_c_str(), attr, b"y", rustix::fs::XattrFlags::empty())
                    .map_err(io)
            }
            Dialect::Oci => {
                // A marker file, unlike an xattr, would bump the directory's mtime.
                let st = super::stat_self(dir)?;
                make_empty(dir, OCI_OPAQUE).map_err(io)?;
                super::restore_dir_times(dir, &st)
            }
        }
    }

    /// Moves the workdir entry `tmp` to `name` in `dir`. With `over_whiteout`
    /// (overlay dialect) the whiteout there is replaced atomically; otherwise
    /// the name must be free.
    pub fn publish(
        &self,
        tmp: &CStr,
        dir: BorrowedFd<'_>,
        name: &CStr,
        over_whiteout: bool,
        is_dir: bool,
    ) -> Result<(), LayerError> {
        let result = if over_whiteout && is_dir {
            // rename(2) cannot put a directory over a device: swap, then drop
            // the whiteout that landed in the workdir.
            rustix::fs::renameat_with(self.work(), tmp, dir, name, RenameFlags::EXCHANGE)
        } else if over_whiteout {
            rustix::fs::renameat_with(self.work(), tmp, dir, name, RenameFlags::empty())
        } else {
            rustix::fs::renameat_with(self.work(), tmp, dir, name, RenameFlags::NOREPLACE)
        };
        if let Err(e) = result {
            self.discard(tmp);
            return Err(io(e));
        }
        if over_whiteout && is_dir {
            let _ = remove_tree(self.work(), tmp);
        }
        self.tidy_published(dir, name);
        Ok(())
    }

    /// Gives the [`Upper::tmpfile`] `file` the name `name` in `dir`, which
    /// must be free.
    pub fn publish_file(
        &self,
        file: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(), LayerError> {
        let path = super::proc_fd_path(file);
        rustix::fs::linkat(
            rustix::fs::CWD,
            path.as_c_str(),
            dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(io)?;
        self.tidy_published(dir, name);
        Ok(())
    }

    /// The entry is in place and wins over an OCI whiteout in its own
    /// layer: a stale marker is untidy, not wrong.
    fn tidy_published(&self, dir: BorrowedFd<'_>, name: &CStr) {
        if let Err(e) = self.drop_oci_whiteout(dir, name) {
            tracing::warn!(error = %e, ?name, "cannot remove an OCI whiteout");
        }
    }
}
