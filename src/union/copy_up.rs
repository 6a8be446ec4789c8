//! Copy-up: the first change to a lower entry copies it into the upper layer,
//! parents first. Each copy is built in the workdir — data, then owner, mode,
//! times, xattrs and the origin record — synced, and renamed into place, so
//! the merged view shows either the old entry or the complete new one.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};

use super::Union;
use super::error::{Error, Result};
use super::inode::{LayerDir, Node, NodeBody};
use super::override_stat;
use super::xattr::is_private_xattr;
use crate::layer::{self, Upper};
use crate::sys;

const ORIGIN: &str = "origin";

/// Removes a workdir scratch entry unless disarmed.
struct Scratch<'a> {
    upper: &'a Upper,
    name: CString,
    armed: bool,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.upper.discard(&self.name);
        }
    }
}

impl Union {
    /// The upper layer, or EROFS for a read-only union.
    pub(crate) fn upper(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Error::ReadOnly)
    }

    pub(crate) fn is_upper(&self, layer: usize) -> bool {
        self.upper.is_some() && layer == 0
    }

    /// The union inode number recorded on a copied-up entry.
    pub(crate) fn read_origin(&self, dir: BorrowedFd<'_>, name: &CStr) -> Option<u64> {
        let upper = self.upper.as_ref()?;
        for attr in [
            upper.private_xattr(ORIGIN),
            other_ns(&upper.private_xattr(ORIGIN)),
        ] {
            let mut buf = [0u8; 24];
            if let Ok(n) = sys::getxattr_at(dir, name, &attr, &mut buf) {
                return std::str::from_utf8(&buf[..n]).ok()?.parse().ok();
            }
        }
        None
    }

    /// The upper inode of any node (O_PATH fd), copying it up if needed.
    pub(crate) fn copy_up_any(&self, node: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        if node.is_dir() {
            self.upper_dir(node)
        } else {
            self.copy_up_leaf(node, true)
        }
    }

    /// The upper directory of union directory `node`, copied up (with its
    /// parents) if it has none yet.
    pub(crate) fn upper_dir(&self, node: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        let upper = self.upper()?;
        if let Some(fd) = self.existing_upper_dir(node)? {
            return Ok(fd);
        }
        let parent = node.parent().ok_or(Error::NotFound)?;
        let parent_fd = self.upper_dir(&parent)?;
        let _guard = node.copy_up.lock();
        if let Some(fd) = self.existing_upper_dir(node)? {
            return Ok(fd);
        }
        let (name, lower, lower_layer) = {
            let state = node.state();
            let NodeBody::Dir { layers } = &state.body else {
                return Err(Error::NotDir);
            };
            (state.name.clone(), layers[0].fd.clone(), layers[0].layer)
        };
        let st = self.logical(
            lower_layer,
            lower.as_fd(),
            c".",
            layer::stat_self(lower.as_fd())?,
        );
        let tmp = self.scratch(upper);
        rustix::fs::mkdirat(upper.work(), &tmp.name, Mode::from_raw_mode(0o700))?;
        let made = Arc::new(layer::open_subdir(upper.work(), &tmp.name)?);
        self.finish_copy(
            upper,
            made.as_fd(),
            &tmp.name,
            lower.as_fd(),
            c".",
            &st,
            node.ino(),
        )?;
        upper.sync_dir(made.as_fd())?;
        let mut tmp = tmp;
        tmp.armed = false;
        let parent_st = layer::stat_self(parent_fd.as_fd())?;
        upper.publish(&tmp.name, parent_fd.as_fd(), &name, false, true)?;
        let fd = Arc::new(layer::open_subdir(parent_fd.as_fd(), &name)?);
        // Moving a directory rewrites its `..`; neither it nor its parent changed
        // for the user.
        // Published: from here on, failures must not leave the node pointing
        // at the lower layer, so the times are best effort.
        keep_times(fd.as_fd(), &st);
        keep_times(parent_fd.as_fd(), &parent_st);
        node.update(|s| {
            if let NodeBody::Dir { layers } = &mut s.body {
                layers.insert(
                    0,
                    LayerDir {
                        layer: 0,
                        fd: fd.clone(),
                    },
                );
            }
        });
        node.forget_xattrs();
        Ok(fd)
    }

    fn existing_upper_dir(&self, node: &Node) -> Result<Option<Arc<OwnedFd>>> {
        match &node.state().body {
            NodeBody::Dir { layers } if self.is_upper(layers[0].layer) => {
                Ok(Some(layers[0].fd.clone()))
            }
            NodeBody::Dir { .. } => Ok(None),
            _ => Err(Error::NotDir),
        }
    }

    /// The upper O_PATH fd of non-directory `node`, copied up if it is still
    /// in a lower layer; `with_data` false leaves the copy empty (O_TRUNC).
    /// A node whose name was removed while it stayed open is copied into the
    /// workdir and unlinked there: it lives on through its fds only.
    pub(crate) fn copy_up_leaf(&self, node: &Arc<Node>, with_data: bool) -> Result<Arc<OwnedFd>> {
        let upper = self.upper()?;
        if let NodeBody::Upper { fd } = &node.state().body {
            return Ok(fd.clone());
        }
        // The lock comes first: an unlink of this name holds it while it
        // decides, so the parent read below is current. Lock order is always
        // child before parent (upper_dir takes the parent's).
        let _guard = node.copy_up.lock();
        let parent_fd = match node.parent() {
            Some(parent) => Some(self.upper_dir(&parent)?),
            None => None,
        };
        let (name, layer, dir, lname) = {
            let state = node.state();
            match &state.body {
                NodeBody::Upper { fd } => return Ok(fd.clone()),
                NodeBody::Dir { .. } => return Err(Error::IsDir),
                NodeBody::Lower { layer, dir, name } => {
                    (state.name.clone(), *layer, dir.clone(), name.clone())
                }
            }
        };
        let st = self.logical(
            layer,
            dir.as_fd(),
            &lname,
            layer::stat_at(dir.as_fd(), &lname)?,
        );
        let tmp = self.scratch(upper);
        let work = upper.work();
        let mut data_fd = None;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let dst = rustix::fs::openat(
                    work,
                    &tmp.name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                if with_data {
                    let src = layer::open_file(dir.as_fd(), &lname)?;
                    layer::copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64)?;
                }
                data_fd = Some(dst);
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir.as_fd(), lname.as_c_str(), Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), work, &tmp.name)?;
            }
            ft => {
                rustix::fs::mknodat(
                    work,
                    &tmp.name,
                    ft,
                    Mode::from_raw_mode(st.st_mode & 0o7777),
                    st.st_rdev,
                )?;
            }
        }
        let made = layer::open_path(work, &tmp.name)?;
        self.finish_copy(
            upper,
            made.as_fd(),
            &tmp.name,
            dir.as_fd(),
            &lname,
            &st,
            node.ino(),
        )?;
        // Data and metadata reach the disk before the name makes them visible.
        if let Some(dst) = &data_fd {
            upper.sync(dst.as_fd())?;
        }
        let mut tmp = tmp;
        let fd = match parent_fd {
            Some(parent_fd) => {
                tmp.armed = false;
                let parent_st = layer::stat_self(parent_fd.as_fd())?;
                upper.publish(&tmp.name, parent_fd.as_fd(), &name, false, false)?;
                keep_times(parent_fd.as_fd(), &parent_st);
                Arc::new(layer::open_path(parent_fd.as_fd(), &name)?)
            }
            // The scratch name goes with `tmp`; the inode stays through `made`.
            None => Arc::new(made),
        };
        node.update(|s| s.body = NodeBody::Upper { fd: fd.clone() });
        self.link_other_names(upper, node, &fd);
        Ok(fd)
    }

    /// Gives the copy the node's other names seen in this mount (hard links
    /// of the lower file), so that every name shows the one copy, now and
    /// after a remount.
    fn link_other_names(&self, upper: &Upper, node: &Node, fd: &OwnedFd) {
        let others = node.state().others.clone();
        let src = layer::proc_fd_path(fd.as_fd());
        for (parent, name) in others {
            let linked = self.upper_dir(&parent).and_then(|dir| {
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    src.as_c_str(),
                    dir.as_fd(),
                    &name,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )?;
                upper.sync_dir(dir.as_fd())?;
                Ok(())
            });
            if let Err(e) = linked {
                tracing::warn!(error = %e, ?name, "cannot keep a hard link across copy-up");
            }
        }
    }

    /// Metadata of a copy in the workdir: xattrs, origin, owner, mode, times.
    #[allow(clippy::too_many_arguments)]
    fn finish_copy(
        &self,
        upper: &Upper,
        made: BorrowedFd<'_>,
        tmp: &CStr,
        src_dir: BorrowedFd<'_>,
        src_name: &CStr,
        st: &rustix::fs::Stat,
        ino: u64,
    ) -> Result<()> {
        let ft = FileType::from_raw_mode(st.st_mode);
        let is_link = ft == FileType::Symlink;
        // user.* xattrs exist only on regular files and directories: where
        // the private namespace is user.*, other copies get no origin (a new
        // inode number after a remount) and no override record.
        let plain = matches!(ft, FileType::RegularFile | FileType::Directory);
        let path = layer::proc_fd_path(made);
        let recorded = self.upper_override();
        if recorded.is_none() {
            layer::copy_owner(upper.work(), tmp, st)?;
        }
        if !is_link {
            layer::copy_xattrs(src_dir, src_name, &path, |a| !is_private_xattr(a))?;
        }
        if let Err(e) = sys::setxattr_at(
            upper.work(),
            tmp,
            &upper.private_xattr(ORIGIN),
            ino.to_string().as_bytes(),
        ) {
            if plain {
                return Err(e.into());
            }
            tracing::debug!(error = %e, "cannot record the origin of a special file or symlink");
        }
        match recorded {
            // The copy stays the daemon's; owner and mode go to the xattr.
            Some(x) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                let mut backing = *st;
                backing.st_mode = (st.st_mode & !0o7777)
                    | override_stat::backing_perm(st.st_mode & 0o7777, is_dir);
                layer::copy_mode_times(upper.work(), tmp, &backing)?;
                match override_stat::write(upper.work(), tmp, x, override_stat::Override::of(st)) {
                    Err(e) if plain => return Err(e),
                    _ => {}
                }
            }
            None => layer::copy_mode_times(upper.work(), tmp, st)?,
        }
        Ok(())
    }

    fn scratch<'a>(&self, upper: &'a Upper) -> Scratch<'a> {
        Scratch {
            upper,
            name: upper.temp_name(),
            armed: true,
        }
    }
}

/// The same private key in the other namespace (a layer written by a
/// privileged mount read by an unprivileged one, or the reverse).
fn other_ns(attr: &CStr) -> CString {
    let s = attr.to_bytes();
    let swapped = if let Some(rest) = s.strip_prefix(b"trusted.") {
        [b"user.".as_slice(), rest].concat()
    } else if let Some(rest) = s.strip_prefix(b"user.") {
        [b"trusted.".as_slice(), rest].concat()
    } else {
        s.to_vec()
    };
    CString::new(swapped).unwrap_or_default()
}

/// Restores a directory's times after a copy-up, logging a failure.
fn keep_times(dir: BorrowedFd<'_>, st: &rustix::fs::Stat) {
    if let Err(e) = layer::restore_dir_times(dir, st) {
        tracing::warn!(error = %e, "cannot restore directory times after copy-up");
    }
}
