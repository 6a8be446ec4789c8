//! Building a layer tree under `<store>/tmp/`: every entry created relative
//! to directory fds, parents made on demand, nothing followed, every path
//! checked to stay inside the layer. Whiteouts and opaque markers are
//! written in one dialect: the overlay one where char 0/0 devices can be
//! made, the OCI one otherwise.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use super::StoreError;
use super::digest::{Digest, hash_copy};
use super::manifest::Meta;
use crate::layer;
use crate::sys::setxattr_at;

/// A checked relative path: components without `.`, `..` or `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryPath(Vec<Vec<u8>>);

impl EntryPath {
    /// Checks a path from an archive or a walk. Leading `./` and `/.` parts
    /// and doubled slashes are dropped; an absolute path or a `..` anywhere
    /// is refused (even where it would stay inside: no archive needs it).
    pub fn parse(raw: &[u8]) -> Result<EntryPath, StoreError> {
        if raw.first() == Some(&b'/') {
            return Err(StoreError::entry(raw, "absolute path"));
        }
        let mut parts = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(StoreError::entry(raw, "path contains `..`")),
                p if p.contains(&0) => return Err(StoreError::entry(raw, "NUL in path")),
                p => parts.push(p.to_vec()),
            }
        }
        Ok(EntryPath(parts))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn name(&self) -> &[u8] {
        self.0.last().map(Vec::as_slice).unwrap_or(b".")
    }

    pub fn parent(&self) -> EntryPath {
        EntryPath(self.0[..self.0.len().saturating_sub(1)].to_vec())
    }

    pub fn child(&self, name: &[u8]) -> EntryPath {
        let mut p = self.0.clone();
        p.push(name.to_vec());
        EntryPath(p)
    }

    /// `/`-rooted, as in manifests.
    pub fn display(&self) -> Vec<u8> {
        if self.0.is_empty() {
            return b"/".to_vec();
        }
        let mut out = Vec::new();
        for p in &self.0 {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDialect {
    /// char 0/0 whiteouts, `trusted.overlay.opaque=y`.
    Overlay,
    /// `.wh.NAME` and `.wh..wh..opq` files.
    Oci,
}

pub enum Special {
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    Socket,
}

pub struct TreeWriter {
    root: OwnedFd,
    dialect: StoreDialect,
    /// Paths given by the input, to refuse duplicates.
    explicit: HashSet<EntryPath>,
    whiteouts: HashSet<EntryPath>,
    /// Directory metadata, applied last (children change mtimes, and a
    /// read-only directory must still be filled).
    /// `None`: implied (made for entries below it, never described).
    dirs: HashMap<EntryPath, Option<Meta>>,
    /// Content digests of the files written, by inode.
    digests: HashMap<u64, Digest>,
    cached: Option<(EntryPath, OwnedFd)>,
    privileged: bool,
}

fn io(e: rustix::io::Errno) -> StoreError {
    StoreError::Io(e.into())
}

fn cname(path: &EntryPath) -> Result<CString, StoreError> {
    CString::new(path.name()).map_err(|_| StoreError::entry(&path.display(), "NUL in path"))
}

/// Metadata of directories the input never described.
pub fn default_dir_meta() -> Meta {
    Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    }
}

fn timestamps(meta: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: meta.mtime_nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl TreeWriter {
    /// A writer filling the empty directory `root`.
    pub fn new(root: OwnedFd) -> Result<TreeWriter, StoreError> {
        let probe = c".stratafs-whiteout-probe";
        let dialect = match rustix::fs::mknodat(
            root.as_fd(),
            probe,
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        ) {
            Ok(()) => {
                rustix::fs::unlinkat(root.as_fd(), probe, AtFlags::empty()).map_err(io)?;
                StoreDialect::Overlay
            }
            Err(_) => StoreDialect::Oci,
        };
        let privileged = rustix::process::geteuid().is_root();
        let mut dirs = HashMap::new();
        dirs.insert(EntryPath(Vec::new()), None);
        Ok(TreeWriter {
            root,
            dialect,
            explicit: HashSet::new(),
            whiteouts: HashSet::new(),
            dirs,
            digests: HashMap::new(),
            cached: None,
            privileged,
        })
    }

    /// Opens (making missing ones) the directory `path`.
    fn open_dir(&mut self, path: &EntryPath) -> Result<BorrowedFd<'_>, StoreError> {
        if self.cached.as_ref().map(|(p, _)| p) != Some(path) {
            let mut fd = rustix::io::dup(self.root.as_fd()).map_err(io)?;
            for (i, part) in path.0.iter().enumerate() {
                let here = EntryPath(path.0[..=i].to_vec());
                let name = cname(&here)?;
                fd = match layer::open_subdir(fd.as_fd(), &name) {
                    Ok(sub) => sub,
                    Err(e) if e.errno() == libc::ENOENT => {
                        rustix::fs::mkdirat(
                            fd.as_fd(),
                            name.as_c_str(),
                            Mode::from_raw_mode(0o755),
                        )
                        .map_err(io)?;
                        self.dirs.entry(here.clone()).or_insert(None);
                        layer::open_subdir(fd.as_fd(), &name)?
                    }
                    Err(e) if matches!(e.errno(), libc::ENOTDIR | libc::ELOOP) => {
                        return Err(StoreError::entry(
                            &here.display(),
                            format!(
                                "is not a directory, but later entries ({}) go inside it",
                                String::from_utf8_lossy(part)
                            ),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                };
            }
            self.cached = Some((path.clone(), fd));
        }
        match &self.cached {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => unreachable!("set above"),
        }
    }

    /// Records that the input gave `path`. A real entry and a whiteout of
    /// the same name may both come (in either order): an OCI whiteout hides
    /// only lower layers, so the entry is what the layer holds, as when a
    /// directory tree with both is read.
    /// The implied-directory (0) or store-layer (1) marker this writer may
    /// set: `trusted.*` with privileges, `user.*` without.
    fn private_xattr(&self, which: usize) -> &'static CStr {
        let set = if which == 0 {
            layer::IMPLIED_XATTRS
        } else {
            layer::STORE_LAYER_XATTRS
        };
        if self.privileged { set[0] } else { set[1] }
    }

    /// Returns whether a whiteout of the name came first.
    fn claim(&mut self, path: &EntryPath) -> Result<bool, StoreError> {
        let replaced = self.whiteouts.remove(path);
        if replaced {
            self.drop_whiteout(path)?;
        }
        if !self.explicit.insert(path.clone()) {
            return Err(StoreError::entry(&path.display(), "duplicate entry"));
        }
        Ok(replaced)
    }

    fn drop_whiteout(&mut self, path: &EntryPath) -> Result<(), StoreError> {
        let name = match self.dialect {
            StoreDialect::Overlay => cname(path)?,
            StoreDialect::Oci => {
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(path.name());
                CString::new(wh).map_err(|_| StoreError::entry(&path.display(), "NUL in path"))?
            }
        };
        let parent = self.open_dir(&path.parent())?;
        rustix::fs::unlinkat(parent, name.as_c_str(), AtFlags::empty()).map_err(io)
    }

    fn exists_error(path: &EntryPath, e: rustix::io::Errno) -> StoreError {
        if e == rustix::io::Errno::EXIST {
            StoreError::entry(&path.display(), "conflicts with an earlier entry")
        } else {
            StoreError::entry(&path.display(), e.to_string())
        }
    }

    pub fn dir(&mut self, path: &EntryPath, meta: Meta) -> Result<(), StoreError> {
        let over_whiteout = self.claim(path)?;
        if !path.is_root() {
            let name = cname(path)?;
            let parent = self.open_dir(&path.parent())?;
            match rustix::fs::mkdirat(parent, name.as_c_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                // A directory made earlier for entries inside it.
                Err(rustix::io::Errno::EXIST) if self.dirs.contains_key(path) => {}
                Err(e) => return Err(Self::exists_error(path, e)),
            }
        }
        self.dirs.insert(path.clone(), Some(meta));
        if over_whiteout {
            // Deleted below, made anew here: nothing below shows through.
            self.opaque(path)?;
        }
        Ok(())
    }

    /// Writes a regular file from `content`, which must yield exactly `size` bytes.
    pub fn file(
        &mut self,
        path: &EntryPath,
        meta: &Meta,
        size: u64,
        content: &mut dyn Read,
    ) -> Result<(), StoreError> {
        self.claim(path)?;
        let name = cname(path)?;
        let parent = self.open_dir(&path.parent())?;
        let fd = rustix::fs::openat(
            parent,
            name.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Self::exists_error(path, e))?;
        let mut file = std::fs::File::from(fd);
        let (digest, n) = hash_copy(content, Some(&mut file))?;
        if n != size {
            return Err(StoreError::entry(
                &path.display(),
                format!("content is {n} bytes, header says {size}"),
            ));
        }
        let fd = OwnedFd::from(file);
        self.finish_inode(fd.as_fd(), c"", path, meta, true)?;
        rustix::fs::futimens(&fd, &timestamps(meta)).map_err(io)?;
        let ino = rustix::fs::fstat(&fd).map_err(io)?.st_ino;
        self.digests.insert(ino, digest);
        Ok(())
    }

    /// Owner, mode and xattrs of `name` in `dir` (`""`: `dir` itself).
    fn finish_inode(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &EntryPath,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), StoreError> {
        let flags = if name.is_empty() {
            AtFlags::EMPTY_PATH
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        match rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            flags,
        ) {
            Ok(()) => {}
            // Without privileges the tree keeps the importer's ids (and the
            // manifest records them): documented in docs/format.md.
            Err(rustix::io::Errno::PERM | rustix::io::Errno::INVAL) if !self.privileged => {}
            Err(e) => return Err(StoreError::entry(&path.display(), format!("chown: {e}"))),
        }
        for (attr, value) in &meta.xattrs {
            let attr = CString::new(attr.as_slice())
                .map_err(|_| StoreError::entry(&path.display(), "NUL in xattr name"))?;
            setxattr_at(dir, name, &attr, value).map_err(|e| {
                StoreError::entry(
                    &path.display(),
                    format!("xattr {}: {e}", attr.to_string_lossy()),
                )
            })?;
        }
        if chmod {
            let mode = Mode::from_raw_mode(meta.mode);
            if name.is_empty() {
                rustix::fs::fchmod(dir, mode).map_err(io)?;
            } else {
                rustix::fs::chmodat(dir, name, mode, AtFlags::empty()).map_err(io)?;
            }
        }
        Ok(())
    }

    pub fn symlink(
        &mut self,
        path: &EntryPath,
        meta: &Meta,
        target: &[u8],
    ) -> Result<(), StoreError> {
        self.claim(path)?;
        let name = cname(path)?;
        let target = CString::new(target)
            .map_err(|_| StoreError::entry(&path.display(), "NUL in link target"))?;
        let parent = rustix::io::dup(self.open_dir(&path.parent())?).map_err(io)?;
        rustix::fs::symlinkat(target.as_c_str(), parent.as_fd(), name.as_c_str())
            .map_err(|e| Self::exists_error(path, e))?;
        self.finish_inode(parent.as_fd(), &name, path, meta, false)?;
        rustix::fs::utimensat(
            parent.as_fd(),
            name.as_c_str(),
            &timestamps(meta),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io)?;
        Ok(())
    }

    /// Another name for the (non-directory) entry `target`, written earlier.
    pub fn hardlink(&mut self, path: &EntryPath, target: &EntryPath) -> Result<(), StoreError> {
        if !self.explicit.contains(target)
            || self.dirs.contains_key(target)
            || self.whiteouts.contains(target)
        {
            return Err(StoreError::entry(
                &path.display(),
                format!(
                    "hard link to {:?}, which is not an earlier non-directory entry of the layer",
                    String::from_utf8_lossy(&target.display())
                ),
            ));
        }
        self.claim(path)?;
        let tname = cname(target)?;
        let tdir = rustix::io::dup(self.open_dir(&target.parent())?).map_err(io)?;
        let name = cname(path)?;
        let parent = self.open_dir(&path.parent())?;
        rustix::fs::linkat(
            tdir.as_fd(),
            tname.as_c_str(),
            parent,
            name.as_c_str(),
            AtFlags::empty(),
        )
        .map_err(|e| Self::exists_error(path, e))
    }

    pub fn special(
        &mut self,
        path: &EntryPath,
        meta: &Meta,
        kind: Special,
    ) -> Result<(), StoreError> {
        let (ft, dev) = match kind {
            Special::Char(a, b) | Special::Block(a, b) if !self.privileged => {
                let _ = (a, b);
                return Err(StoreError::entry(
                    &path.display(),
                    "device node: only root may import device nodes",
                ));
            }
            Special::Char(a, b) => (FileType::CharacterDevice, rustix::fs::makedev(a, b)),
            Special::Block(a, b) => (FileType::BlockDevice, rustix::fs::makedev(a, b)),
            Special::Fifo => (FileType::Fifo, 0),
            Special::Socket => (FileType::Socket, 0),
        };
        if ft == FileType::CharacterDevice && dev == 0 {
            // That would read back as a whiteout.
            return Err(StoreError::entry(
                &path.display(),
                "character device 0/0 is a whiteout, not an entry",
            ));
        }
        self.claim(path)?;
        let name = cname(path)?;
        let parent = rustix::io::dup(self.open_dir(&path.parent())?).map_err(io)?;
        rustix::fs::mknodat(
            parent.as_fd(),
            name.as_c_str(),
            ft,
            Mode::from_raw_mode(0o600),
            dev,
        )
        .map_err(|e| Self::exists_error(path, e))?;
        self.finish_inode(parent.as_fd(), &name, path, meta, true)?;
        rustix::fs::utimensat(
            parent.as_fd(),
            name.as_c_str(),
            &timestamps(meta),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io)
    }

    /// Hides `path` in the layers below.
    pub fn whiteout(&mut self, path: &EntryPath) -> Result<(), StoreError> {
        if path.is_root() {
            return Err(StoreError::entry(b"/", "whiteout of the layer root"));
        }
        if self.whiteouts.contains(path) {
            return Err(StoreError::entry(&path.display(), "duplicate whiteout"));
        }
        if self.dirs.contains_key(path) {
            // A directory of the layer (given or implied) that also deletes
            // the one below: an opaque directory, as the OCI spec reads it.
            return self.opaque(path);
        }
        if self.explicit.contains(path) {
            // The layer has a real entry of that name: it wins (see `claim`).
            return Ok(());
        }
        self.whiteouts.insert(path.clone());
        let dialect = self.dialect;
        let parent = self.open_dir(&path.parent())?;
        let r = match dialect {
            StoreDialect::Overlay => {
                let name = cname(path)?;
                rustix::fs::mknodat(
                    parent,
                    name.as_c_str(),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
            }
            StoreDialect::Oci => {
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(path.name());
                let wh = CString::new(wh)
                    .map_err(|_| StoreError::entry(&path.display(), "NUL in path"))?;
                rustix::fs::openat(
                    parent,
                    wh.as_c_str(),
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map(drop)
            }
        };
        r.map_err(|e| Self::exists_error(path, e))
    }

    /// A directory the layer holds without describing it (an implied
    /// directory of a tree being copied).
    pub fn implied_dir(&mut self, path: &EntryPath) -> Result<(), StoreError> {
        self.claim(path)?;
        self.open_dir(path)?;
        Ok(())
    }

    /// Marks directory `path` as hiding the layers below.
    pub fn opaque(&mut self, path: &EntryPath) -> Result<(), StoreError> {
        let dialect = self.dialect;
        // Hiding what is below, it cannot take its metadata from there.
        if let Some(m) = self.dirs.get_mut(path)
            && m.is_none()
        {
            *m = Some(default_dir_meta());
        }
        let dir = self.open_dir(path)?;
        match dialect {
            StoreDialect::Overlay => {
                setxattr_at(dir, c".", c"trusted.overlay.opaque", b"y")?;
            }
            StoreDialect::Oci => match rustix::fs::openat(
                dir,
                c".wh..wh..opq",
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(_) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io(e)),
            },
        }
        Ok(())
    }

    /// Applies directory metadata, deepest first, and returns the content
    /// digests by inode.
    pub fn finish(mut self) -> Result<HashMap<u64, Digest>, StoreError> {
        self.cached = None;
        let mut dirs: Vec<(EntryPath, Option<Meta>)> = self.dirs.drain().collect();
        // Deepest first: a parent's mtime is set after its children's.
        dirs.sort_by(|a, b| {
            b.0.0
                .len()
                .cmp(&a.0.0.len())
                .then_with(|| b.0.0.cmp(&a.0.0))
        });
        for (path, meta) in dirs {
            let fd = self.open_dir(&path)?;
            let fd = rustix::io::dup(fd).map_err(io)?;
            // Opened O_PATH: go through /proc for the calls that need a real fd.
            let real = layer::reopen(fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)?;
            let implied = meta.is_none();
            let meta = meta.unwrap_or_else(default_dir_meta);
            self.finish_inode(real.as_fd(), c"", &path, &meta, true)?;
            if implied {
                setxattr_at(real.as_fd(), c"", self.private_xattr(0), b"y")?;
            }
            if path.is_root() {
                setxattr_at(real.as_fd(), c"", self.private_xattr(1), b"v1")?;
            }
            rustix::fs::futimens(&real, &timestamps(&meta)).map_err(io)?;
            self.cached = None;
        }
        Ok(self.digests)
    }
}
