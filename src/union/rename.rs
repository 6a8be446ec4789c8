//! rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE. Both ends are put in
//! the upper layer (copy-up) and renamed there; the old name gets a whiteout
//! when a lower layer still has it. A directory that exists in a lower layer
//! is copied up alone (not its contents) and moved with a redirect to where
//! its lower contents are, as overlayfs does with `redirect_dir=on`: O(1)
//! in the size of the tree, and never EXDEV.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::fs::RenameFlags;

use super::Union;
use super::error::{Error, Result};
use super::inode::{Node, NodeBody};
use super::lookup::checked_name;
use super::readdir::Want;
use crate::layer::{self, Dialect, Redirect, Upper};

impl Union {
    /// Whether `node` is a directory that some lower layer contributes to.
    fn has_lower_dir(&self, node: &Node) -> bool {
        match &node.state().body {
            NodeBody::Dir { layers } => layers.iter().any(|ld| !self.is_upper(ld.layer)),
            _ => false,
        }
    }

    /// For a directory with lower contents, the redirect that finds them
    /// wherever it moves: the path they are at now.
    fn redirect_for(&self, node: &Arc<Node>) -> Result<Option<Redirect>> {
        if !self.has_lower_dir(node) {
            return Ok(None);
        }
        if !self.redirect_dir {
            return Err(Error::CrossDevice);
        }
        Ok(Some(Redirect::Absolute(self.lower_path(node)?)))
    }

    /// A metadata-only copy about to move must name its data by path: one
    /// the kernel made may rely on its own name instead.
    fn pin_metacopy_data(&self, upper: &Upper, node: &Node) -> Result<()> {
        let (fd, path) = match &node.state().body {
            NodeBody::Upper { fd, data: Some(d) } => (fd.clone(), d.path.clone()),
            _ => return Ok(()),
        };
        let value = Redirect::Absolute(path).to_bytes();
        rustix::fs::setxattr(
            layer::proc_fd_path(fd.as_fd()).as_c_str(),
            upper.redirect_xattr().as_c_str(),
            &value,
            rustix::fs::XattrFlags::empty(),
        )?;
        Ok(())
    }

    /// Copies directory `node` up alone and records `r` on it.
    fn record_redirect(&self, upper: &Upper, node: &Arc<Node>, r: &Redirect) -> Result<()> {
        let fd = self.upper_dir(node)?;
        if layer::read_redirect(fd.as_fd()).as_ref() != Some(r) {
            upper.set_redirect(fd.as_fd(), r)?;
            upper.sync_dir(fd.as_fd())?;
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let mut names = self.listings.changing();
        names.touch(parent);
        names.touch(newparent);
        self.check_writable()?;
        let flags = RenameFlags::from_bits(flags).ok_or(Error::InvalidName)?;
        if flags.contains(RenameFlags::WHITEOUT)
            || flags.contains(RenameFlags::EXCHANGE | RenameFlags::NOREPLACE)
        {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let name = checked_name(name)?;
        let newname = checked_name(newname)?;
        let parent = self.nodes.get(parent)?;
        let newparent = self.nodes.get(newparent)?;
        let src = self.lookup_in(&parent, name.clone())?;
        // A directory moved has a new `..` (and, moved or replaced, may
        // have new layers).
        names.touch(src.ino());
        let dst = match self.lookup_in(&newparent, newname.clone()) {
            Ok(n) => {
                names.touch(n.ino());
                Some(n)
            }
            Err(Error::NotFound) => None,
            Err(e) => {
                self.nodes.forget(src.ino(), 1);
                return Err(e);
            }
        };
        let result = self.rename_nodes(
            &parent,
            &name,
            &src,
            &newparent,
            &newname,
            dst.as_ref(),
            flags,
        );
        self.nodes.forget(src.ino(), 1);
        if let Some(d) = &dst {
            self.nodes.forget(d.ino(), 1);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_nodes(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        src: &Arc<Node>,
        newparent: &Arc<Node>,
        newname: &CStr,
        dst: Option<&Arc<Node>>,
        flags: RenameFlags,
    ) -> Result<()> {
        let upper = self.upper()?;
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        match dst {
            Some(_) if flags.contains(RenameFlags::NOREPLACE) => return Err(Error::Exists),
            None if exchange => return Err(Error::NotFound),
            // Two names of one file: rename(2) does nothing.
            Some(d) if Arc::ptr_eq(d, src) && !exchange => return Ok(()),
            _ => {}
        }
        let src_dir = src.is_dir();
        // Where the lower contents of each moving directory are, taken before
        // anything moves; recorded on its upper copy. Without redirects this
        // is EXDEV, which overlayfs answers before looking at the target.
        let src_redirect = self.redirect_for(src)?;
        let dst_redirect = match dst.filter(|_| exchange) {
            Some(d) => self.redirect_for(d)?,
            None => None,
        };
        if let Some(d) = dst {
            let dst_dir = d.is_dir();
            if exchange {
            } else if dst_dir && !src_dir {
                return Err(Error::IsDir);
            } else if !dst_dir && src_dir {
                return Err(Error::NotDir);
            } else if dst_dir && self.list(d, Want::Names)?.len() > 2 {
                return Err(Error::NotEmpty);
            }
        }
        if src_dir && self.is_ancestor(src, newparent) {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }

        let from = self.upper_dir(parent)?;
        let to = self.upper_dir(newparent)?;
        if let Some(r) = &src_redirect {
            self.record_redirect(upper, src, r)?;
        }
        if let (Some(d), Some(r)) = (dst, &dst_redirect) {
            self.record_redirect(upper, d, r)?;
        }
        if !src_dir {
            self.copy_up_meta(src)?;
            self.pin_metacopy_data(upper, src)?;
        }
        if let Some(d) = dst.filter(|_| exchange)
            && !d.is_dir()
        {
            self.copy_up_meta(d)?;
            self.pin_metacopy_data(upper, d)?;
        }
        let src_lower_has = self.lower_has(parent, name)?;
        let dst_lower_has = self.lower_has(newparent, newname)?;
        // A directory landing where a lower layer has the name must hide it.
        // (A redirect already does: its lower layers come from elsewhere.)
        if src_dir && dst_lower_has && src_redirect.is_none() {
            self.make_opaque(upper, src)?;
        }
        if exchange {
            if let Some(d) = dst.filter(|d| d.is_dir() && src_lower_has && dst_redirect.is_none()) {
                self.make_opaque(upper, d)?;
            }
            swap(from.as_fd(), name, to.as_fd(), newname)?;
        } else {
            let dst_upper_dir = dst.is_some_and(|d| {
                matches!(&d.state().body, NodeBody::Dir { layers } if self.is_upper(layers[0].layer))
            });
            // rename(2) cannot put a directory over a whiteout that occupies
            // the name (a char 0/0 device or an xattr-marked empty file): swap
            // them, and keep the whiteout at the old name only if a lower
            // layer has that name.
            let over_whiteout_entry =
                src_dir && dst.is_none() && layer::stat_at(to.as_fd(), newname).is_ok();
            if over_whiteout_entry {
                swap(from.as_fd(), name, to.as_fd(), newname)?;
                if !src_lower_has {
                    rustix::fs::unlinkat(from.as_fd(), name, rustix::fs::AtFlags::empty())?;
                }
            } else if dst_upper_dir && upper.dialect() == Dialect::Oci {
                // The target directory may hold markers, so rename(2) cannot
                // replace it, and an OCI opaque directory is never empty (its
                // marker is a file): swap, then dispose of the old target.
                swap(from.as_fd(), name, to.as_fd(), newname)?;
                if src_lower_has {
                    upper.replace_with_whiteout(from.as_fd(), name, true)?;
                } else {
                    upper.remove_entry(from.as_fd(), name, true)?;
                }
            } else {
                if dst_upper_dir {
                    // As overlayfs does: swap in an empty opaque copy of the
                    // target (the same merged view), then replace that in one step.
                    clear_empty_dir(upper, to.as_fd(), newname)?;
                }
                move_leaving_whiteout(
                    upper,
                    from.as_fd(),
                    name,
                    to.as_fd(),
                    newname,
                    src_lower_has,
                )?;
            }
            upper.drop_oci_whiteout(to.as_fd(), newname)?;
        }
        src.detach(parent, name);
        src.relocate(newparent.clone(), newname);
        match dst {
            Some(d) if exchange => {
                d.detach(newparent, newname);
                d.relocate(parent.clone(), name);
            }
            // Replaced: this name is gone; open fds keep it alive.
            Some(d) => d.detach(newparent, newname),
            None => {}
        }
        parent.forget_xattrs();
        newparent.forget_xattrs();
        Ok(())
    }

    /// Marks upper-only directory `node` opaque and forgets its lower layers.
    fn make_opaque(&self, upper: &Upper, node: &Node) -> Result<()> {
        let fd = match &node.state().body {
            NodeBody::Dir { layers } => layers[0].fd.clone(),
            _ => return Ok(()),
        };
        if !layer::is_opaque(fd.as_fd())? {
            upper.set_opaque(fd.as_fd())?;
        }
        node.update(|s| {
            if let NodeBody::Dir { layers } = &mut s.body {
                *layers = layers.iter().take(1).cloned().collect();
            }
        });
        Ok(())
    }

    /// Whether `dir` is `node` or lies below it.
    fn is_ancestor(&self, node: &Arc<Node>, dir: &Arc<Node>) -> bool {
        let mut cur = Some(dir.clone());
        while let Some(n) = cur {
            if Arc::ptr_eq(&n, node) {
                return true;
            }
            cur = n.parent();
        }
        false
    }
}

fn swap(from: BorrowedFd<'_>, name: &CStr, to: BorrowedFd<'_>, newname: &CStr) -> Result<()> {
    rustix::fs::renameat_with(from, name, to, newname, RenameFlags::EXCHANGE)?;
    Ok(())
}

/// Replaces the (merged-empty) upper directory `name` in `dir` by an empty
/// opaque directory with the same owner, mode and times, atomically.
fn clear_empty_dir(upper: &Upper, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    let st = layer::stat_at(dir, name)?;
    let tmp = upper.temp_name();
    rustix::fs::mkdirat(upper.work(), &tmp, rustix::fs::Mode::from_raw_mode(0o700))?;
    let prepared = (|| -> Result<()> {
        let made = layer::open_subdir(upper.work(), &tmp)?;
        upper.set_opaque(made.as_fd())?;
        layer::copy_owner(upper.work(), &tmp, &st)?;
        layer::copy_mode_times(upper.work(), &tmp, &st)?;
        rustix::fs::renameat_with(upper.work(), &tmp, dir, name, RenameFlags::EXCHANGE)?;
        Ok(())
    })();
    // Either the unused empty directory or the old target, now in the workdir.
    upper.discard(&tmp);
    prepared
}

/// Moves an upper entry, leaving a whiteout at the old name when a lower
/// layer has it: atomically with RENAME_WHITEOUT in the overlay dialect.
fn move_leaving_whiteout(
    upper: &Upper,
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
    newname: &CStr,
    whiteout: bool,
) -> Result<()> {
    if !whiteout {
        rustix::fs::renameat_with(from, name, to, newname, RenameFlags::empty())?;
        return Ok(());
    }
    match upper.dialect() {
        Dialect::Overlay { .. } => {
            match rustix::fs::renameat_with(from, name, to, newname, RenameFlags::WHITEOUT) {
                Ok(()) => Ok(()),
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::PERM) => {
                    rustix::fs::renameat_with(from, name, to, newname, RenameFlags::empty())?;
                    upper.write_whiteout(from, name)?;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Dialect::Oci => {
            // The OCI whiteout first: the entry still wins in its own layer.
            upper.write_whiteout(from, name)?;
            rustix::fs::renameat_with(from, name, to, newname, RenameFlags::empty())?;
            Ok(())
        }
    }
}
