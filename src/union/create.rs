//! Creating entries: files, directories, symlinks, device nodes, hard links.
//! New entries go straight into the upper directory; one that replaces a
//! whiteout is built in the workdir and swapped in, so the name never shows
//! the lower entry again, and a directory made there is opaque.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};

use super::Union;
use super::attr::Kind;
use super::error::{Error, Result};
use super::inode::{LayerDir, Node, NodeBody};
use super::lookup::{Found, attr_of, checked_name};
use super::override_stat;
use crate::layer::{self, Presence};

/// Who asks: created entries belong to the caller, not the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
}

/// Whether the entry `what` makes can carry `user.*` xattrs.
fn holds_user_xattrs(what: NewEntry<'_>) -> bool {
    match what {
        NewEntry::File { .. } | NewEntry::Dir => true,
        NewEntry::Symlink { .. } => false,
        NewEntry::Special { file_type, .. } => file_type == FileType::RegularFile,
    }
}

/// What to create.
#[derive(Debug, Clone, Copy)]
pub enum NewEntry<'a> {
    /// A regular file, opened with these open(2) flags.
    File {
        flags: i32,
    },
    Dir,
    Symlink {
        target: &'a CStr,
    },
    /// A fifo, socket or device node (or an empty regular file via mknod).
    Special {
        file_type: FileType,
        rdev: u64,
    },
}

impl Union {
    /// Creates `name` in directory `parent`. Returns its node (with one
    /// kernel reference) and, for a file, the open fd.
    pub fn create_entry(
        &self,
        parent: u64,
        name: &OsStr,
        perm: u32,
        caller: Caller,
        what: NewEntry<'_>,
    ) -> Result<(Arc<Node>, Option<u64>)> {
        let mut names = self.listings.changing();
        names.touch(parent);
        self.check_writable()?;
        let upper = self.upper()?;
        let name = checked_name(name)?;
        let parent = self.nodes.get(parent)?;
        let layers = parent.dir_layers()?;
        let found = self.search(&layers, &name, true)?;
        if let Found::Top(_) = found {
            return Err(Error::Exists);
        }
        // The search probed the upper directory first, if there was one
        // (the kernel holds the parent locked against other changes of it).
        let had_upper = layers.first().is_some_and(|ld| self.is_upper(ld.layer));
        let dir = self.upper_dir(&parent)?;
        let over_whiteout = if had_upper {
            matches!(found, Found::WhiteoutAt(0))
        } else {
            matches!(layer::probe(dir.as_fd(), &name, true)?, Presence::Whiteout)
        };
        let pattr = self.refresh_attr(&parent)?;
        let setgid_parent = pattr.perm as u32 & libc::S_ISGID != 0;
        let uid = self
            .view
            .disk_uid(caller.uid)
            .ok_or(Error::UnmappedCaller)?;
        let caller_gid = self
            .view
            .disk_gid(caller.gid)
            .ok_or(Error::UnmappedCaller)?;
        let gid = if setgid_parent { pattr.gid } else { caller_gid };
        let mut mode = perm & !caller.umask & 0o7777;
        if setgid_parent && matches!(what, NewEntry::Dir) {
            mode |= libc::S_ISGID;
        }

        let (at, at_name) = if over_whiteout {
            (upper.work(), upper.temp_name())
        } else {
            (dir.as_fd(), name.clone())
        };
        // What the daemon makes is its own, in its own group unless the
        // directory is setgid: for a caller with the daemon's ids, a chown
        // would change nothing. (The workdir, where an entry replacing a
        // whiteout is made, is not looked at: that one is always given.)
        let owner_given = !over_whiteout && !setgid_parent && (uid, gid) == self.process_ids;
        let file = match self.upper_override() {
            Some(x) => self.make_recorded(at, &at_name, mode, uid, gid, what, x)?,
            None if owner_given => make(at, &at_name, mode, what, self.process_umask)?,
            None => self.make_owned(at, &at_name, mode, uid, gid, what)?,
        };
        if over_whiteout {
            if matches!(what, NewEntry::Dir) {
                let made = layer::open_subdir(at, &at_name)?;
                upper.set_opaque(made.as_fd())?;
            }
            let replaces = layer::stat_at(dir.as_fd(), &name).is_ok();
            upper.publish(
                &at_name,
                dir.as_fd(),
                &name,
                replaces,
                matches!(what, NewEntry::Dir),
            )?;
        }

        let node = self.new_upper_node(&parent, dir.as_fd(), name)?;
        let fh = file.map(|fd| self.files.insert(super::file::OpenFile::new(fd)));
        Ok((node, fh))
    }

    /// Makes `at_name` in `at` and gives it to `uid`/`gid`.
    fn make_owned(
        &self,
        at: BorrowedFd<'_>,
        at_name: &CStr,
        mode: u32,
        uid: u32,
        gid: u32,
        what: NewEntry<'_>,
    ) -> Result<Option<OwnedFd>> {
        let file = make(at, at_name, mode, what, self.process_umask)?;
        let own = rustix::fs::chownat(
            at,
            at_name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .or_else(|e| match e {
            // A rootless daemon cannot give files away: they stay its own.
            rustix::io::Errno::PERM | rustix::io::Errno::INVAL => {
                tracing::debug!(uid, gid, "new entry keeps the daemon's ownership");
                Ok(())
            }
            e => Err(e),
        })
        .and_then(|()| match what {
            // chown clears setuid/setgid bits: set those again. Nothing else,
            // so that a default ACL inherited from the parent keeps its mask.
            NewEntry::Symlink { .. } => Ok(()),
            _ if mode & (libc::S_ISUID | libc::S_ISGID) == 0 => Ok(()),
            _ => rustix::fs::chmodat(at, at_name, Mode::from_raw_mode(mode), AtFlags::empty()),
        });
        if let Err(e) = own {
            let _ = layer::remove_tree(at, at_name);
            return Err(e.into());
        }
        Ok(file)
    }

    /// Makes `at_name` in `at`, owned by the daemon and accessible to it,
    /// with the logical owner and mode in override xattr `x`.
    #[allow(clippy::too_many_arguments)]
    fn make_recorded(
        &self,
        at: BorrowedFd<'_>,
        at_name: &CStr,
        mode: u32,
        uid: u32,
        gid: u32,
        what: NewEntry<'_>,
        x: &CStr,
    ) -> Result<Option<OwnedFd>> {
        let is_dir = matches!(what, NewEntry::Dir);
        let file = make(
            at,
            at_name,
            override_stat::backing_perm(mode, is_dir),
            what,
            self.process_umask,
        )?;
        let logical = override_stat::Override {
            uid,
            gid,
            perm: mode,
        };
        match override_stat::write(at, at_name, x, logical) {
            Ok(()) => Ok(file),
            // user.* xattrs exist only on regular files and directories; as
            // fuse-overlayfs, other entries keep the daemon's owner.
            Err(_) if !holds_user_xattrs(what) => Ok(file),
            Err(e) => {
                let _ = layer::remove_tree(at, at_name);
                Err(e)
            }
        }
    }

    /// A node for an entry just made (not copied up) in upper directory `dir`.
    fn new_upper_node(
        &self,
        parent: &Arc<Node>,
        dir: BorrowedFd<'_>,
        name: std::ffi::CString,
    ) -> Result<Arc<Node>> {
        let st = self.logical(0, dir, &name, layer::stat_at(dir, &name)?);
        // A new entry has no origin record to keep the number of.
        let ino = self.inos.ino(0, st.st_ino);
        let attr = attr_of(ino, &st)?;
        let body = if attr.kind == Kind::Dir {
            NodeBody::Dir {
                layers: Box::new([LayerDir::made_here(
                    0,
                    Arc::new(layer::open_subdir(dir, &name)?),
                )]),
            }
        } else {
            NodeBody::Upper {
                fd: Arc::new(layer::open_path(dir, &name)?),
                data: None,
            }
        };
        let node = self
            .nodes
            .remember(Node::new(Some(parent.clone()), &name, body, &attr));
        // A new entry's only xattrs are those the file system gives it: an
        // LSM label (none if the workdir's files have none) and the ACLs a
        // default ACL of the parent passes on. Known, they answer the
        // kernel's security.capability query before the first write (the
        // parent's list is read once, then kept: creating entries in a
        // directory does not change its xattrs).
        if let Err(generation) = node.cached_xattrs()
            && self.upper()?.bare_new_files()
            && let Ok(names) = self.xattr_names(parent)
            && !names
                .split(|b| *b == 0)
                .any(|n| n == b"system.posix_acl_default")
        {
            node.cache_xattrs(generation, &[]);
        }
        Ok(node)
    }

    /// link(2): a new name for `ino` in `newparent`. The source is copied up
    /// first; the link is made between upper entries.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Arc<Node>> {
        let mut names = self.listings.changing();
        names.touch(newparent);
        self.check_writable()?;
        let upper = self.upper()?;
        let name = checked_name(newname)?;
        let parent = self.nodes.get(newparent)?;
        if self.find_top(&parent.dir_layers()?, &name)?.is_some() {
            return Err(Error::Exists);
        }
        let node = self.nodes.get(ino)?;
        if node.is_dir() {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EPERM)));
        }
        let src = self.copy_up_meta(&node)?;
        let dir = self.upper_dir(&parent)?;
        let over_whiteout = matches!(layer::probe(dir.as_fd(), &name, true)?, Presence::Whiteout);
        let src_path = layer::proc_fd_path(src.as_fd());
        if over_whiteout {
            let tmp = upper.temp_name();
            rustix::fs::linkat(
                rustix::fs::CWD,
                src_path.as_c_str(),
                upper.work(),
                &tmp,
                AtFlags::SYMLINK_FOLLOW,
            )?;
            let replaces = layer::stat_at(dir.as_fd(), &name).is_ok();
            upper.publish(&tmp, dir.as_fd(), &name, replaces, false)?;
        } else {
            rustix::fs::linkat(
                rustix::fs::CWD,
                src_path.as_c_str(),
                dir.as_fd(),
                &name,
                AtFlags::SYMLINK_FOLLOW,
            )?;
        }
        parent.forget_xattrs();
        let node = self.nodes.remember_known(node.ino()).unwrap_or(node);
        self.refresh_attr(&node)?;
        Ok(node)
    }
}

/// Makes the entry itself; returns the open fd of a new regular file.
/// Makes `name` with exactly `mode`: when this process's umask (`umask`)
/// would cut bits from it (an in-process library mount; the daemon runs with
/// umask 0), they are put back.
fn make(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
    what: NewEntry<'_>,
    umask: u32,
) -> Result<Option<OwnedFd>> {
    let symlink = matches!(what, NewEntry::Symlink { .. });
    let made = make_raw(dir, name, mode, what)?;
    if !symlink && mode & umask != 0 {
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty())?;
    }
    Ok(made)
}

fn make_raw(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
    what: NewEntry<'_>,
) -> Result<Option<OwnedFd>> {
    let m = Mode::from_raw_mode(mode);
    match what {
        NewEntry::File { flags } => {
            let extra = OFlags::from_bits_retain((flags & libc::O_APPEND) as u32);
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | extra,
                m,
            )?;
            Ok(Some(fd))
        }
        NewEntry::Dir => {
            rustix::fs::mkdirat(dir, name, m)?;
            Ok(None)
        }
        NewEntry::Symlink { target } => {
            rustix::fs::symlinkat(target, dir, name)?;
            Ok(None)
        }
        NewEntry::Special { file_type, rdev } => {
            if file_type == FileType::RegularFile {
                rustix::fs::openat(
                    dir,
                    name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    m,
                )?;
            } else {
                rustix::fs::mknodat(dir, name, file_type, m, rdev)?;
            }
            Ok(None)
        }
    }
}
