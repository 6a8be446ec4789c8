//! `xattr_permissions`: where a rootless daemon cannot chown, owner and mode
//! live in an xattr, in fuse-overlayfs' format, so that an upper directory
//! written by one can be read by the other. The value is `UID:GID:MODE`
//! (decimal ids, octal mode; fuse-overlayfs 1.10 sometimes includes the file
//! type bits in MODE, so only the permission bits are taken).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::Stat;

use super::Union;
use super::error::Result;
use super::view::OverrideStat;
use crate::layer::{self, Layer};
use crate::sys;

pub(crate) const PRIVILEGED: &CStr = c"security.fuseoverlayfs.override_stat";
pub(crate) const USER: &CStr = c"user.fuseoverlayfs.override_stat";
/// Written by containers/storage; read, never written.
const CONTAINERS: &CStr = c"user.containers.override_stat";

/// Logical owner and permission bits of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Override {
    pub uid: u32,
    pub gid: u32,
    pub perm: u32,
}

impl Override {
    fn parse(value: &[u8]) -> Option<Override> {
        let text = std::str::from_utf8(value).ok()?.trim_end_matches('\0');
        let mut fields = text.split(':');
        let uid = fields.next()?.trim().parse().ok()?;
        let gid = fields.next()?.trim().parse().ok()?;
        let mode = u32::from_str_radix(fields.next()?.trim(), 8).ok()?;
        Some(Override {
            uid,
            gid,
            perm: mode & 0o7777,
        })
    }

    fn format(&self) -> String {
        format!("{}:{}:{:o}", self.uid, self.gid, self.perm)
    }

    pub fn of(st: &Stat) -> Override {
        Override {
            uid: st.st_uid,
            gid: st.st_gid,
            perm: st.st_mode & 0o7777,
        }
    }

    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_mode = (st.st_mode & !0o7777) | self.perm;
    }
}

pub(crate) fn xattr_name(mode: OverrideStat) -> &'static CStr {
    match mode {
        OverrideStat::Privileged => PRIVILEGED,
        OverrideStat::User => USER,
    }
}

/// The override xattr a layer uses, told by its root directory carrying one.
pub(crate) fn detect(layer: &Layer) -> Option<&'static CStr> {
    [PRIVILEGED, CONTAINERS, USER]
        .into_iter()
        .find(|x| sys::getxattr_at(layer.root().as_fd(), c".", x, &mut []).is_ok())
}

/// Reads the override of `name` in `dir`; an empty `name` means `dir` itself
/// (any fd, O_PATH included).
pub(crate) fn read(dir: BorrowedFd<'_>, name: &CStr, xattr: &CStr) -> Option<Override> {
    let mut buf = [0u8; 64];
    let n = sys::getxattr_at(dir, name, xattr, &mut buf).ok()?;
    Override::parse(&buf[..n])
}

/// Records `o` on `name` in `dir` (empty `name`: `dir` itself).
pub(crate) fn write(dir: BorrowedFd<'_>, name: &CStr, xattr: &CStr, o: Override) -> Result<()> {
    sys::setxattr_at(dir, name, xattr, o.format().as_bytes())?;
    Ok(())
}

/// The permission bits a backing file needs so that the daemon, its owner,
/// can always use it whatever its logical mode says (the kernel enforces
/// the logical one).
pub(crate) fn backing_perm(perm: u32, is_dir: bool) -> u32 {
    perm | if is_dir { 0o700 } else { 0o600 }
}

impl Union {
    /// The override xattr of layer `layer`, if that layer keeps owners so.
    pub(crate) fn override_of(&self, layer: usize) -> Option<&'static CStr> {
        self.overrides.get(layer).copied().flatten()
    }

    /// The override xattr the upper layer writes, when `xattr_permissions` is on.
    pub(crate) fn upper_override(&self) -> Option<&'static CStr> {
        self.view
            .override_stat
            .filter(|_| self.upper.is_some())
            .map(xattr_name)
    }

    /// `st` of `name` in `dir` of layer `layer`, with the layer's recorded
    /// owner and mode where it keeps them in an xattr.
    pub(crate) fn logical(
        &self,
        layer: usize,
        dir: BorrowedFd<'_>,
        name: &CStr,
        mut st: Stat,
    ) -> Stat {
        if let Some(x) = self.override_of(layer)
            && let Some(o) = read(dir, name, x)
        {
            o.apply(&mut st);
        }
        if self.is_upper(layer) {
            self.union_nlink(dir, name, &mut st);
        }
        st
    }

    /// Changes owner and/or mode of upper entry `fd` in the override xattr
    /// instead of on the file.
    pub(crate) fn set_override(
        &self,
        fd: BorrowedFd<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
        perm: Option<u32>,
    ) -> Result<()> {
        let Some(x) = self.upper_override() else {
            return Ok(());
        };
        let st = layer::stat_self(fd)?;
        let mut o = read(fd, c"", x).unwrap_or_else(|| Override::of(&st));
        o.uid = uid.unwrap_or(o.uid);
        o.gid = gid.unwrap_or(o.gid);
        if let Some(p) = perm {
            o.perm = p & 0o7777;
        }
        write(fd, c"", x, o)
    }
}

/// Marks a fresh upper root with its own owner and mode, as fuse-overlayfs
/// does, so that either program recognises the layer's convention.
pub(crate) fn mark_root(root: BorrowedFd<'_>, xattr: &CStr) -> Result<()> {
    if read(root, c".", xattr).is_some() {
        return Ok(());
    }
    let st = layer::stat_self(root)?;
    write(root, c".", xattr, Override::of(&st))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_fuse_overlayfs_spellings() {
        let a = Override::parse(b"0:0:100755").unwrap();
        assert_eq!((a.uid, a.gid, a.perm), (0, 0, 0o755));
        let b = Override::parse(b"5:6:4710\0").unwrap();
        assert_eq!((b.uid, b.gid, b.perm), (5, 6, 0o4710));
        assert!(Override::parse(b"5:6").is_none());
        assert_eq!(b.format(), "5:6:4710");
    }
}
