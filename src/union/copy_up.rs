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
use super::inode::{LayerDir, LowerData, Node, NodeBody};
use super::links;
use super::override_stat;
use crate::layer::is_private_xattr;
use crate::layer::{self, Redirect, Upper};
use crate::sys;

const ORIGIN: &str = "origin";

/// How much of a lower file a copy-up brings into the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyData {
    Full,
    /// Nothing: the caller truncates to zero.
    Empty,
    /// Metadata only: a regular file's data stays in its lower layer.
    Meta,
}

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
                let origin: u64 = std::str::from_utf8(&buf[..n]).ok()?.parse().ok()?;
                return (!super::inode::is_reserved_ino(origin)).then_some(origin);
            }
        }
        None
    }

    /// The upper inode of any node (O_PATH fd), copying it up if needed.
    pub(crate) fn copy_up_any(&self, node: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        if node.is_dir() {
            self.upper_dir(node)
        } else {
            self.copy_up_meta(node)
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
            // Metadata as shown: an implied directory's comes from below.
            let shown = self.attr_dir(layers);
            (state.name.to_c_string(), shown.fd.clone(), shown.layer)
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
            (upper.work(), &tmp.name),
            lower.as_fd(),
            c".",
            &st,
            node.ino(),
        )?;
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
                let upper = LayerDir::new(0, fd.clone());
                *layers = std::iter::once(upper)
                    .chain(layers.iter().cloned())
                    .collect();
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

    /// The upper O_PATH fd of non-directory `node` with its data in the upper
    /// layer, copied up (or a metadata-only copy filled) if needed;
    /// `with_data` false leaves the copy empty (O_TRUNC).
    pub(crate) fn copy_up_leaf(&self, node: &Arc<Node>, with_data: bool) -> Result<Arc<OwnedFd>> {
        let want = if with_data {
            CopyData::Full
        } else {
            CopyData::Empty
        };
        self.copy_up_file(node, want)
    }

    /// The upper O_PATH fd of non-directory `node` for a change of metadata
    /// (or of its names): a lower regular file is copied up without its data.
    pub(crate) fn copy_up_meta(&self, node: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        // An OCI-dialect upper is a self-contained OCI layer, which cannot
        // say "the data is below".
        let oci = self.upper()?.dialect() == crate::layer::Dialect::Oci;
        let want = if self.metacopy && !oci {
            CopyData::Meta
        } else {
            CopyData::Full
        };
        self.copy_up_file(node, want)
    }

    /// A node whose name was removed while it stayed open is copied into the
    /// workdir and unlinked there: it lives on through its fds only.
    fn copy_up_file(&self, node: &Arc<Node>, want: CopyData) -> Result<Arc<OwnedFd>> {
        let upper = self.upper()?;
        match &node.state().body {
            NodeBody::Upper { fd, data: None } => return Ok(fd.clone()),
            NodeBody::Upper { fd, .. } if want == CopyData::Meta => return Ok(fd.clone()),
            _ => {}
        }
        // The lock comes first: an unlink of this name holds it while it
        // decides, so the parent read below is current. Lock order is always
        // child before parent (upper_dir takes the parent's).
        let _guard = node.copy_up.lock();
        // (The state lock must be released before filling takes it again.)
        let body = node.state().body.clone();
        if let NodeBody::Upper { fd, data } = body {
            if let Some(d) = data.filter(|_| want != CopyData::Meta) {
                self.fill_metacopy(upper, node, &fd, &d, want)?;
            }
            return Ok(fd);
        }
        let parent_fd = match node.parent() {
            Some(parent) => Some(self.upper_dir(&parent)?),
            None => None,
        };
        self.resolve_lower_data(node)?;
        let (name, layer, dir, lname, below) = {
            let state = node.state();
            match &state.body {
                NodeBody::Upper { fd, .. } => return Ok(fd.clone()),
                NodeBody::Dir { .. } => return Err(Error::IsDir),
                NodeBody::Lower { data, .. } => {
                    let (layer, dir, lname) = state.lower_file().ok_or(Error::NotFound)?;
                    (
                        state.name.to_c_string(),
                        layer,
                        dir.clone(),
                        lname.to_owned(),
                        data.clone(),
                    )
                }
            }
        };
        let raw = layer::stat_at(dir.as_fd(), &lname)?;
        let st = self.logical(layer, dir.as_fd(), &lname, raw);
        // Another name of this lower inode was copied up before: share that copy.
        let shared = links::has_other_names(&raw) && parent_fd.is_some();
        if shared
            && let Some(parent) = node.parent()
            && let Some((body, _)) = self.shared_copy(&parent, &name, node.ino(), &raw)?
        {
            let NodeBody::Upper { fd, data } = body.clone() else {
                return Err(Error::NotFound);
            };
            node.update(|s| s.body = body);
            self.link_other_names(upper, node, &fd);
            node.forget_xattrs();
            if let Some(d) = data.filter(|_| want != CopyData::Meta) {
                self.fill_metacopy(upper, node, &fd, &d, want)?;
            }
            return Ok(fd);
        }
        let mut tmp = self.scratch(upper);
        let work = upper.work();
        let mut data_fd = None;
        let mut meta_only = false;
        // A file copy with one name is made nameless, as the kernel's
        // overlayfs does: it gets its name only once whole and synced.
        let mut nameless = false;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let tmpfile = match parent_fd {
                    Some(_) if !shared => upper.tmpfile(),
                    _ => None,
                };
                let dst = match tmpfile {
                    Some(fd) => {
                        nameless = true;
                        tmp.armed = false;
                        fd
                    }
                    None => rustix::fs::openat(
                        work,
                        &tmp.name,
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )?,
                };
                match want {
                    CopyData::Full => {
                        let src = match &below {
                            Some(d) => self.open_lower(d.layer, d.dir.as_fd(), &d.name)?,
                            None => self.open_lower(layer, dir.as_fd(), &lname)?,
                        };
                        // (A metacopy's blocks say nothing of its data file's.)
                        let dense = below.is_none() && raw.st_blocks * 512 >= raw.st_size;
                        layer::copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64, dense)?;
                    }
                    // A sparse placeholder of the right size: no data moves.
                    CopyData::Meta if st.st_size > 0 => {
                        rustix::fs::ftruncate(&dst, st.st_size as u64)?;
                        meta_only = true;
                    }
                    CopyData::Meta | CopyData::Empty => {}
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
        let made = match data_fd.as_ref().filter(|_| nameless) {
            Some(dst) => dst.try_clone()?,
            None => layer::open_path(work, &tmp.name)?,
        };
        let at = if nameless {
            (made.as_fd(), c"")
        } else {
            (work, tmp.name.as_c_str())
        };
        // What the node knew of the lower file's xattrs holds for the copy
        // only if they all came along.
        let xattr_generation = node.cached_xattrs().err();
        let xattr_names = self.finish_copy(
            upper,
            made.as_fd(),
            at,
            dir.as_fd(),
            &lname,
            &st,
            node.ino(),
        )?;
        let mut data_path = Vec::new();
        if meta_only {
            data_path = match &below {
                Some(d) => d.path.clone(),
                None => {
                    let mut p = match node.parent() {
                        Some(parent) => self.lower_path(&parent)?,
                        None => Vec::new(),
                    };
                    p.push(lname.clone());
                    p
                }
            };
            // The redirect names the data; the metacopy mark, set last, says
            // "the data is not here".
            let p = layer::proc_fd_path(made.as_fd());
            let value = Redirect::Absolute(data_path.clone()).to_bytes();
            for (x, v) in [
                (upper.redirect_xattr(), &value[..]),
                (upper.metacopy_xattr(), &[][..]),
            ] {
                rustix::fs::setxattr(
                    p.as_c_str(),
                    x.as_c_str(),
                    v,
                    rustix::fs::XattrFlags::empty(),
                )?;
            }
        }
        // Copied data reaches the disk before the name makes it visible (a
        // metadata-only copy has none; the kernel does not sync those either).
        if let Some(dst) = data_fd.as_ref().filter(|_| !meta_only) {
            upper.sync(dst.as_fd())?;
        }
        if shared {
            self.index_copy(upper, &tmp.name, node.ino(), raw.st_nlink - 1)?;
        }
        let fd = match parent_fd {
            Some(parent_fd) => {
                tmp.armed = false;
                let parent_st = layer::stat_self(parent_fd.as_fd())?;
                if nameless {
                    upper.publish_file(made.as_fd(), parent_fd.as_fd(), &name)?;
                } else {
                    upper.publish(&tmp.name, parent_fd.as_fd(), &name, false, false)?;
                }
                keep_times(parent_fd.as_fd(), &parent_st);
                Arc::new(layer::open_path(parent_fd.as_fd(), &name)?)
            }
            // The scratch name goes with `tmp`; the inode stays through `made`.
            None => Arc::new(made),
        };
        let data = meta_only.then(|| match below {
            Some(d) => d,
            None => Box::new(LowerData {
                layer,
                dir: dir.clone(),
                name: lname.clone(),
                path: data_path,
            }),
        });
        node.update(|s| {
            s.body = NodeBody::Upper {
                fd: fd.clone(),
                data,
            }
        });
        match (xattr_names, xattr_generation) {
            (Some(names), Some(generation)) if upper.bare_new_files() => {
                node.cache_xattrs(generation, &names)
            }
            (Some(_), None) if upper.bare_new_files() => {}
            _ => node.forget_xattrs(),
        }
        self.link_other_names(upper, node, &fd);
        Ok(fd)
    }

    /// Gives the copy the node's other names seen in this mount (hard links
    /// of the lower file), so that every name shows the one copy, now and
    /// after a remount.
    fn link_other_names(&self, upper: &Upper, node: &Node, fd: &OwnedFd) {
        let others = node.state().others().to_vec();
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
                self.one_less_lower_name(upper, dir.as_fd(), &name);
                Ok(())
            });
            if let Err(e) = linked {
                tracing::warn!(error = %e, ?name, "cannot keep a hard link across copy-up");
            }
        }
    }

    /// Metadata of a copy in the workdir: xattrs, origin, owner, mode, times.
    /// `at` is where the copy `made` is: its workdir name, or (empty name)
    /// the nameless file itself. Returns the copy's visible xattr names if
    /// they are exactly the source's.
    #[allow(clippy::too_many_arguments)]
    fn finish_copy(
        &self,
        upper: &Upper,
        made: BorrowedFd<'_>,
        at: (BorrowedFd<'_>, &CStr),
        src_dir: BorrowedFd<'_>,
        src_name: &CStr,
        st: &rustix::fs::Stat,
        ino: u64,
    ) -> Result<Option<Vec<u8>>> {
        let ft = FileType::from_raw_mode(st.st_mode);
        let is_link = ft == FileType::Symlink;
        // user.* xattrs exist only on regular files and directories: where
        // the private namespace is user.*, other copies get no origin (a new
        // inode number after a remount) and no override record.
        let plain = matches!(ft, FileType::RegularFile | FileType::Directory);
        let path = layer::proc_fd_path(made);
        let recorded = self.upper_override();
        if recorded.is_none() {
            layer::copy_owner(at.0, at.1, st)?;
        }
        let names = match is_link {
            false => layer::copy_xattrs(src_dir, src_name, &path, |a| !is_private_xattr(a))?,
            true => None,
        };
        if let Err(e) = sys::setxattr_at(
            at.0,
            at.1,
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
                layer::copy_mode_times(at.0, at.1, &backing)?;
                match override_stat::write(at.0, at.1, x, override_stat::Override::of(st)) {
                    Err(e) if plain => return Err(e),
                    _ => {}
                }
            }
            None => layer::copy_mode_times(at.0, at.1, st)?,
        }
        Ok(names)
    }

    /// The path from the root at which the lower layers of directory `node`
    /// are looked up: its own path, unless it or a parent was redirected.
    pub(crate) fn lower_path(&self, node: &Arc<Node>) -> Result<Vec<CString>> {
        let mut names = Vec::new();
        let mut cur = node.clone();
        loop {
            let (parent, name, upper_fd) = node_state_parts(&cur);
            if let Some(fd) = upper_fd {
                match layer::read_redirect(fd.as_fd()) {
                    Some(Redirect::Absolute(path)) => {
                        names.reverse();
                        let mut full = path;
                        full.extend(names);
                        return Ok(full);
                    }
                    Some(Redirect::Relative(other)) => {
                        names.push(other);
                        match parent {
                            Some(p) => {
                                cur = p;
                                continue;
                            }
                            None => break,
                        }
                    }
                    None => {}
                }
            }
            match parent {
                Some(p) => {
                    names.push(name);
                    cur = p;
                }
                None => break,
            }
        }
        names.reverse();
        Ok(names)
    }

    /// Brings the data of metadata-only copy `fd` into it from lower file `d`
    /// (or drops it, for `CopyData::Empty`), in place, so that hard links and
    /// open fds keep the same inode. Removing the metacopy xattr is the commit
    /// point: until then, even after a crash, reads still come from `d`.
    fn fill_metacopy(
        &self,
        upper: &Upper,
        node: &Node,
        fd: &OwnedFd,
        d: &LowerData,
        want: CopyData,
    ) -> Result<()> {
        let before = layer::stat_self(fd.as_fd())?;
        let w = layer::reopen(fd.as_fd(), OFlags::WRONLY)?;
        if want == CopyData::Full {
            let src = self.open_lower(d.layer, d.dir.as_fd(), &d.name)?;
            layer::copy_data(src.as_fd(), w.as_fd(), before.st_size as u64, false)?;
        } else {
            rustix::fs::ftruncate(&w, 0)?;
        }
        upper.sync(w.as_fd())?;
        // Writing the data is not a change the user made.
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: before.st_atime,
                tv_nsec: before.st_atime_nsec as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: before.st_mtime,
                tv_nsec: before.st_mtime_nsec as _,
            },
        };
        rustix::fs::futimens(&w, &times)?;
        // The commit point: without a metacopy mark the data is the file's own.
        // The redirect only named the data, so it goes too.
        let path = layer::proc_fd_path(fd.as_fd());
        for x in layer::METACOPY_XATTRS
            .iter()
            .chain(&layer::ALL_REDIRECT_XATTRS)
        {
            match rustix::fs::removexattr(path.as_c_str(), *x) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                // Names of another privilege level cannot be on this mount's files.
                Err(rustix::io::Errno::PERM) if x.to_bytes().starts_with(b"trusted.") => {}
                Err(e) => return Err(e.into()),
            }
        }
        upper.sync(w.as_fd())?;
        node.update(|s| {
            if let NodeBody::Upper { data, .. } = &mut s.body {
                *data = None;
            }
        });
        node.forget_xattrs();
        Ok(())
    }

    /// The node body of non-directory `name` in upper directory `dir` (of
    /// union directory `parent`): a metadata-only copy finds its lower data by
    /// its redirect, or at its own path when it has none (as the kernel's).
    /// `st` is the entry's stat, which the caller has.
    pub(crate) fn upper_leaf(
        &self,
        parent: &Arc<Node>,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &rustix::fs::Stat,
    ) -> Result<NodeBody> {
        let fd = Arc::new(layer::open_path(dir, name)?);
        if self.upper.is_none() || !maybe_metacopy(st) || !layer::is_metacopy(dir, name) {
            return Ok(NodeBody::Upper { fd, data: None });
        }
        let data = self.metacopy_data(0, parent, dir, name)?;
        Ok(NodeBody::Upper {
            fd,
            data: Some(Box::new(data)),
        })
    }

    /// The node body of non-directory `name` in directory `dir` of lower
    /// layer `layer`; whether it is a metadata-only copy is found on first use.
    /// Its name in `dir` is the node's own.
    pub(crate) fn lower_leaf(layer: usize, dir: &Arc<OwnedFd>) -> NodeBody {
        NodeBody::Lower {
            layer: layer as u32,
            checked: false,
            dir: dir.clone(),
            data: None,
        }
    }

    /// Finds out, once, whether lower file `node` is a metadata-only copy
    /// whose data is in a layer further down.
    pub(crate) fn resolve_lower_data(&self, node: &Arc<Node>) -> Result<()> {
        let (layer, dir, name) = {
            let state = node.state();
            match (&state.body, state.lower_file()) {
                (NodeBody::Lower { checked: false, .. }, Some((layer, dir, name))) => {
                    (layer, dir.clone(), name.to_owned())
                }
                _ => return Ok(()),
            }
        };
        let attr = node.attr();
        let data = if attr.kind == super::attr::Kind::File
            && attr.size > 0
            && layer::is_metacopy(dir.as_fd(), &name)
            && let Some(parent) = node.parent()
        {
            Some(Box::new(self.metacopy_data(
                layer,
                &parent,
                dir.as_fd(),
                &name,
            )?))
        } else {
            None
        };
        node.update(|s| {
            if let NodeBody::Lower {
                data: d, checked, ..
            } = &mut s.body
            {
                *d = data;
                *checked = true;
            }
        });
        Ok(())
    }

    /// Where the data of metadata-only copy `name` in `dir` (of layer
    /// `layer`, in union directory `parent`) is, in the layers below.
    fn metacopy_data(
        &self,
        layer: usize,
        parent: &Arc<Node>,
        dir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<LowerData> {
        let path = match layer::read_redirect_at(dir, name) {
            Some(Redirect::Absolute(p)) => p,
            Some(Redirect::Relative(other)) => {
                let mut p = self.lower_path(parent)?;
                p.push(other);
                p
            }
            None => {
                let mut p = self.lower_path(parent)?;
                p.push(name.to_owned());
                p
            }
        };
        self.metacopy_source(layer, path).ok_or_else(|| {
            tracing::error!(?name, "the lower data of a metadata-only copy is gone");
            Error::Io(std::io::Error::from_raw_os_error(libc::EIO))
        })
    }

    /// The lower regular file at `path` (from the root).
    fn metacopy_source(&self, above: usize, path: Vec<CString>) -> Option<LowerData> {
        let (name, parent) = path.split_last()?;
        let dirs = self.dirs_at(above, parent).ok()?;
        let top = self.find_top(&dirs, name).ok()??;
        (FileType::from_raw_mode(top.stat.st_mode) == FileType::RegularFile).then(|| LowerData {
            layer: top.ld.layer,
            dir: top.ld.fd.clone(),
            name: name.clone(),
            path: path.clone(),
        })
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
pub(crate) fn keep_times(dir: BorrowedFd<'_>, st: &rustix::fs::Stat) {
    if let Err(e) = layer::restore_dir_times(dir, st) {
        tracing::warn!(error = %e, "cannot restore directory times after copy-up");
    }
}

/// Only a non-empty regular file can be a metadata-only copy. (Its blocks
/// tell nothing: an external xattr block counts in them.)
fn maybe_metacopy(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size > 0
}

/// Parent, name and upper directory fd of a node, read under one lock.
fn node_state_parts(
    node: &Node,
) -> (
    Option<Arc<Node>>,
    CString,
    Option<Arc<std::os::fd::OwnedFd>>,
) {
    let state = node.state();
    let upper_fd = match &state.body {
        NodeBody::Dir { layers } if layers.first().is_some_and(|ld| ld.layer == 0) => {
            Some(layers[0].fd.clone())
        }
        _ => None,
    };
    (state.parent.clone(), state.name.to_c_string(), upper_fd)
}
