//! Hard links of lower files kept across copy-up, as overlayfs does with
//! `index=on`. The first copy-up of a lower file with several names also
//! links the copy into `<workdir>/stratafs-index/<lower inode>`; any other
//! name of that lower inode, when looked up or copied up later (in this
//! mount or another), gets a hard link to that copy instead of a copy of
//! its own. The copy records how many lower names have not reached the
//! upper layer yet, so that st_nlink counts every visible name.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, Stat};

use std::sync::Arc;

use super::Union;
use super::error::Result;
use super::inode::{Node, NodeBody};
use crate::layer::{self, Upper};

/// Private xattr on an indexed copy: lower names not yet in the upper layer.
const LOWER_LEFT: &str = "links";

fn index_name(key: u64) -> CString {
    CString::new(key.to_string()).unwrap_or_default()
}

/// Whether a lower entry with this stat shares its inode with other names
/// (kernel whiteouts, also often hard links, are never nodes).
pub(crate) fn has_other_names(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink > 1
}

impl Union {
    /// Whether an earlier copy-up indexed lower inode `key`.
    fn indexed(&self, key: u64) -> bool {
        self.upper
            .as_ref()
            .and_then(|u| u.index())
            .is_some_and(|ix| layer::stat_at(ix, &index_name(key)).is_ok())
    }

    /// Links the fresh copy `tmp` (in the workdir) into the index for lower
    /// inode `key`, `left` of whose lower names are not in upper.
    pub(crate) fn index_copy(&self, upper: &Upper, tmp: &CStr, key: u64, left: u64) -> Result<()> {
        crate::sys::setxattr_at(
            upper.work(),
            tmp,
            &upper.private_xattr(LOWER_LEFT),
            left.to_string().as_bytes(),
        )?;
        let index = upper.make_index()?;
        rustix::fs::linkat(upper.work(), tmp, index, index_name(key), AtFlags::empty())?;
        upper.sync_dir(index)?;
        Ok(())
    }

    /// Gives `name` in upper directory `dir` the indexed copy of lower inode
    /// `key`: one more of its lower names is now in the upper layer.
    fn materialize(&self, upper: &Upper, key: u64, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
        let tmp = upper.temp_name();
        let index = upper.make_index()?;
        rustix::fs::linkat(index, index_name(key), upper.work(), &tmp, AtFlags::empty())?;
        if let Err(e) = upper.publish(&tmp, dir, name, false, false) {
            upper.discard(&tmp);
            return Err(e.into());
        }
        self.one_less_lower_name(upper, dir, name);
        Ok(())
    }

    /// Counts one more lower name of the indexed copy `name` in `dir` as
    /// present in the upper layer.
    pub(crate) fn one_less_lower_name(&self, upper: &Upper, dir: BorrowedFd<'_>, name: &CStr) {
        let x = upper.private_xattr(LOWER_LEFT);
        let Some(left) = read_count(dir, name, &x) else {
            return;
        };
        let v = left.saturating_sub(1).to_string();
        if let Err(e) = crate::sys::setxattr_at(dir, name, &x, v.as_bytes()) {
            tracing::warn!(error = %e, ?name, "cannot update the link count of an indexed copy");
        }
    }

    /// st_nlink of an upper inode as the union shows it: an indexed copy's
    /// index link is not a name, its lower names not yet in upper are.
    pub(crate) fn union_nlink(&self, dir: BorrowedFd<'_>, name: &CStr, st: &mut Stat) {
        let Some(upper) = self.upper.as_ref() else {
            return;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink < 2 {
            return;
        }
        if let Some(left) = read_count(dir, name, &upper.private_xattr(LOWER_LEFT)) {
            st.st_nlink = st.st_nlink - 1 + left;
        }
    }
}

impl Union {
    /// For lower name `name` (of union directory `parent`, lower inode
    /// `key`, lower stat `st`): if another name of the inode was copied up,
    /// gives this name that copy in the upper layer now, and returns its
    /// node body and stat.
    pub(crate) fn shared_copy(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        key: u64,
        st: &Stat,
    ) -> Result<Option<(NodeBody, Stat)>> {
        if !self.is_writable() || !has_other_names(st) || !self.indexed(key) {
            return Ok(None);
        }
        let upper = self.upper()?;
        let dir = self.upper_dir(parent)?;
        let dir_st = layer::stat_self(dir.as_fd())?;
        self.materialize(upper, key, dir.as_fd(), name)?;
        super::copy_up::keep_times(dir.as_fd(), &dir_st);
        let raw = layer::stat_at(dir.as_fd(), name)?;
        let body = self.upper_leaf(parent, dir.as_fd(), name, &raw)?;
        Ok(Some((body, self.logical(0, dir.as_fd(), name, raw))))
    }
}

/// A decimal counter xattr of `name` in `dir` (empty `name`: `dir` itself).
fn read_count(dir: BorrowedFd<'_>, name: &CStr, x: &CStr) -> Option<u64> {
    let mut buf = [0u8; 24];
    let n = crate::sys::getxattr_at(dir, name, x, &mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}
