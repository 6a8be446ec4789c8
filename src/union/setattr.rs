//! chmod, chown, truncate and utimes. The entry is copied up first (data is
//! skipped when truncating to zero), then changed in the upper layer.

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, Gid, OFlags, Timespec, Timestamps, Uid};

use super::Union;
use super::attr::{Attr, Kind};
use super::error::{Error, Result};
use crate::{layer, sys};

/// A time to set: a value, or the current time.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At { sec: i64, nsec: u32 },
}

/// The changes one setattr asks for; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr<'a> {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// An open handle, when the change comes through one (ftruncate).
    pub fh: Option<u64>,
    /// A truncation by a caller without CAP_FSETID also clears setuid/setgid;
    /// then this holds the caller's groups.
    pub drop_setid: Option<&'a [u32]>,
}

impl SetAttr<'_> {
    /// Whether this only sets times to what `attr` already has: what the
    /// kernel's writeback cache sends to flush a ctime it changed.
    fn changes_nothing_of(&self, attr: &Attr) -> bool {
        let same = |t: Option<SetTime>, now: super::attr::Time| match t {
            None => true,
            Some(SetTime::At { sec, nsec }) => sec == now.sec && nsec == now.nsec,
            Some(SetTime::Now) => false,
        };
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && same(self.atime, attr.atime)
            && same(self.mtime, attr.mtime)
    }
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At { sec, nsec }) => Timespec {
            tv_sec: sec,
            tv_nsec: nsec.into(),
        },
    }
}

impl Union {
    pub fn setattr(&self, ino: u64, set: SetAttr<'_>) -> Result<Attr> {
        self.check_writable()?;
        let node = self.nodes.get(ino)?;
        // After an unlink the kernel's writeback cache flushes the ctime it
        // changed; on a file no name leads to any more, that is not worth
        // copying it up for (rm -rf of a lower tree did, file by file).
        let attr = node.attr();
        if node.is_detached() && set.changes_nothing_of(&attr) {
            return Ok(attr);
        }
        let uid = set
            .uid
            .map(|u| self.view.disk_uid(u).ok_or(Error::UnmappedOwner))
            .transpose()?;
        let gid = set
            .gid
            .map(|g| self.view.disk_gid(g).ok_or(Error::UnmappedOwner))
            .transpose()?;
        let fd = if node.is_dir() {
            self.upper_dir(&node)?
        } else {
            match set.size {
                None => self.copy_up_meta(&node)?,
                Some(size) => self.copy_up_leaf(&node, size != 0)?,
            }
        };
        let is_link = node.attr().kind == Kind::Symlink;

        let recorded = self.upper_override().is_some()
            && (uid.is_some() || gid.is_some() || set.mode.is_some());
        if recorded {
            // xattr_permissions: owner and mode live in the xattr; the file
            // stays the daemon's, accessible to it.
            let perm = set.mode.filter(|_| !is_link);
            if let Err(e) = self.set_override(fd.as_fd(), uid, gid, perm) {
                // Symlinks cannot carry user.* xattrs.
                if !is_link {
                    return Err(e);
                }
            }
        } else if set.uid.is_some() || set.gid.is_some() {
            let r = rustix::fs::chownat(
                fd.as_fd(),
                c"",
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            );
            match r {
                // A squashing mount shows one owner whatever the files hold,
                // so, as in fuse-overlayfs, a refused chown is not an error.
                Err(e) if self.view.squashes() => {
                    tracing::debug!(error = %e, "chown refused under squash; ignored");
                }
                r => r?,
            }
        }
        if let Some(mode) = set.mode.filter(|_| !is_link && !recorded) {
            sys::chmod_fd(fd.as_fd(), mode)?;
        }
        if let Some(size) = set.size {
            match set.fh.and_then(|fh| self.files.get(fh).ok()?.fd().ok()) {
                Some(fd) if rustix::fs::ftruncate(fd.as_fd(), size).is_ok() => {}
                _ => {
                    let w = layer::reopen(fd.as_fd(), OFlags::WRONLY)?;
                    rustix::fs::ftruncate(w.as_fd(), size)?;
                }
            }
            if let Some(groups) = set.drop_setid {
                self.drop_setid_of(fd.as_fd(), |g| groups.contains(&g))?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            // Through the O_PATH fd itself: right for symlinks and for every
            // hard link, whichever names remain.
            rustix::fs::utimensat(
                fd.as_fd(),
                c"",
                &times,
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        node.forget_xattrs_for_setattr();
        self.refresh_attr(&node)
    }
}
