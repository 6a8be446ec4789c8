//! One method per FUSE operation: decode what the transport gave, call the
//! union core, reply. Written once for both transports (fuser's /dev/fuse
//! loop and the io_uring queues) against the reply traits.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use fuser::{Errno, FileHandle, FopenFlags, INodeNo, TimeOrNow};
use tracing::debug_span;

use super::convert::{errno, file_type, negative_entry};
use super::passthrough::Route;
use super::reply::{
    AttrReply, CreateReply, Ctx, DataReply, DirPlusReply, DirReply, EmptyReply, EntryReply,
    LseekReply, OpenBacking, OpenReply, StatfsReply, WriteReply, XattrReply,
};
use super::{GENERATION, StrataFs, caller, caller_groups, decode_dev, set_time};
use crate::union::{Kind, NewEntry, SetAttr, Want};

/// With attributes cached at least this long, readdirplus does not send
/// again the entries of inodes the kernel holds: every change to them
/// went through the daemon and updated the kernel's copy, and a fresh
/// copy would also drop the ACLs the kernel cached (an `ls -l` then asks
/// each file for its ACL again). With a shorter time, the fresh
/// attributes save the stats that follow a listing a request each.
const HELD_ATTR_TTL: Duration = Duration::from_secs(60);

/// The arguments of a setattr, as the kernel gave them.
pub struct SetAttrArgs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

fn reply_empty(reply: impl EmptyReply, r: crate::union::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length; too small is ERANGE.
fn reply_sized(reply: impl XattrReply, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(u32::try_from(data.len()).unwrap_or(u32::MAX));
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl StrataFs {
    /// How the kernel is to serve a new handle `fh` of its inode `nodeid`,
    /// the backing file registered through the transport that answers. On
    /// the io_uring queues, where a copy-up can give a name a new kernel
    /// inode (`fuse::alias`), a read-only handle of a lower file is passed
    /// through too: it reads the lower file for as long as it is open, as an
    /// open file of the kernel's overlayfs does.
    fn route_for(&self, nodeid: u64, fh: u64, flags: i32, reply: &impl OpenBacking) -> Route {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let ring = reply.is_ring();
        let stable_fd = || self.core.backing_fd(fh, ring && !writable).ok().flatten();
        self.passthrough
            .route(nodeid, fh, stable_fd, writable, ring, |fd| {
                reply.open_backing(fd)
            })
    }

    /// Replies to an operation that made a new entry.
    fn reply_new(
        &self,
        reply: impl EntryReply,
        r: crate::union::Result<(Arc<crate::union::Node>, Option<u64>)>,
    ) {
        match r {
            Ok((node, fh)) => {
                if let Some(fh) = fh {
                    self.core.release(fh);
                }
                reply.entry(&self.cfg.ttl, &self.attr_out(node.attr()), GENERATION);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_lookup(&self, pid: u32, parent: u64, name: &OsStr, reply: impl EntryReply) {
        let _s = debug_span!("lookup", parent, ?name).entered();
        match self.core.lookup(parent, name) {
            Ok(node) => {
                self.walks.asked(pid, || !node.is_dir());
                reply.entry_as(
                    self.aliases.nodeid(node.ino()),
                    &self.cfg.ttl,
                    &self.attr_out(node.attr()),
                    GENERATION,
                )
            }
            Err(e) if e.errno() == libc::ENOENT => {
                // Node id 0 is a negative entry the kernel caches for the TTL.
                reply.entry(&self.cfg.ttl, &negative_entry(), GENERATION);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_forget(&self, ino: u64, nlookup: u64) {
        self.core.forget(self.aliases.ino(ino), nlookup);
    }

    pub(super) fn do_getattr(&self, pid: u32, ino: u64, reply: impl AttrReply) {
        let _s = debug_span!("getattr", ino).entered();
        let ino = self.aliases.ino(ino);
        match self.core.getattr(ino) {
            Ok(attr) => {
                self.walks.asked(pid, || attr.kind != Kind::Dir);
                reply.attr(&self.cfg.ttl, &self.attr_out(attr))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_readlink(&self, pid: u32, ino: u64, reply: impl DataReply) {
        let _s = debug_span!("readlink", ino).entered();
        self.walks.asked(pid, || true);
        match self.core.readlink(ino) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_open(&self, ctx: &Ctx, nodeid: u64, flags: i32, reply: impl OpenReply) {
        let _s = debug_span!("open", nodeid, flags).entered();
        self.walks.asked(ctx.pid, || true);
        let ino = self.aliases.ino(nodeid);
        let wanted = self.open_flags(flags);
        let fh = match self.core.open(ino, wanted) {
            Ok(fh) => fh,
            // The read access the writeback cache wants is not granted (an
            // unprivileged daemon on a write-only file): as asked, then.
            Err(e) if e.errno() == libc::EACCES && wanted != flags => {
                match self.core.open(ino, flags) {
                    Ok(fh) => fh,
                    Err(e) => return reply.error(errno(&e)),
                }
            }
            Err(e) => return reply.error(errno(&e)),
        };
        if flags & libc::O_TRUNC != 0
            && self.lacks_fsetid(ctx)
            && let Err(e) = self
                .core
                .drop_setid(fh, |g| caller_groups(ctx).contains(&g))
        {
            self.core.release(fh);
            return reply.error(errno(&e));
        }
        match self.route_for(nodeid, fh, flags, &reply) {
            Route::Cached => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Route::Backed(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            // The kernel inode still reads the lower file for its open
            // handles; the copy gets its names a new one. The kernel retries
            // an open that failed with ESTALE once, after a fresh lookup.
            Route::Refused if reply.is_ring() => {
                self.core.release(fh);
                let alias = self.aliases.renew(ino, nodeid);
                tracing::debug!(ino, nodeid, alias, "copied-up file gets a new kernel inode");
                reply.error(Errno::ESTALE)
            }
            Route::Refused => {
                self.core.release(fh);
                reply.error(Errno::EIO)
            }
        }
    }

    pub(super) fn do_read(&self, fh: u64, offset: u64, size: u32, reply: impl DataReply) {
        let _s = debug_span!("read", fh, offset, size).entered();
        match self.core.read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_release(&self, fh: u64, reply: impl EmptyReply) {
        self.passthrough.release(fh);
        self.core.release(fh);
        reply.ok();
    }

    pub(super) fn do_flush(&self, reply: impl EmptyReply) {
        // Nothing to do at close (data goes to the real file as it is
        // written; the kernel writes its cache back before asking). ENOSYS
        // makes the kernel stop asking: one request less per close.
        reply.error(Errno::ENOSYS);
    }

    pub(super) fn do_lseek(&self, fh: u64, offset: i64, whence: i32, reply: impl LseekReply) {
        let _s = debug_span!("lseek", fh, offset, whence).entered();
        match self.core.lseek(fh, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Not implemented, on purpose: the kernel then opens directories
    /// without asking (nor releasing them), keeping and caching their
    /// contents (`FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`) as it would for us.
    /// A kernel that cannot do that gets the same flags, and no handle:
    /// listings are kept per directory (see `union::readdir`).
    pub(super) fn do_opendir(&self, ino: u64, reply: impl OpenReply) {
        let _s = debug_span!("opendir", ino).entered();
        if self.no_opendir.load(Relaxed) {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
        );
    }

    pub(super) fn do_readdir(&self, ino: u64, offset: u64, mut reply: impl DirReply) {
        let _s = debug_span!("readdir", ino, offset).entered();
        let entries = match self.core.readdir(ino, offset, Want::Names) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        for (off, entry) in entries.entries_after(offset) {
            let full = reply.add(INodeNo(entry.ino), off, file_type(entry.kind), entry.name);
            if full {
                break;
            }
        }
        reply.ok();
    }

    pub(super) fn do_readdirplus(
        &self,
        pid: u32,
        ino: u64,
        offset: u64,
        mut reply: impl DirPlusReply,
    ) {
        let _s = debug_span!("readdirplus", ino, offset).entered();
        // Names alone need entries the kernel links to no node.
        let want = if reply.takes_unlinked() {
            self.walks.reading(pid, offset)
        } else {
            Want::Attrs
        };
        let entries = match self.core.readdir(ino, offset, want) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        // Whether this reply holds an entry (an empty one says the end).
        let mut any = false;
        for (off, entry) in entries.entries_after(offset) {
            if entry.name == "." || entry.name == ".." {
                any = true;
                // The kernel takes no reference for these: report attributes only.
                let attr = match self.core.getattr(entry.ino) {
                    Ok(a) => a,
                    Err(_) => match self.core.getattr(ino) {
                        Ok(a) => a,
                        Err(e) => return reply.error(errno(&e)),
                    },
                };
                let mut fa = self.attr_out(attr);
                fa.ino = INodeNo(entry.ino);
                if reply.add(
                    INodeNo(entry.ino),
                    off,
                    entry.name,
                    &Duration::ZERO,
                    &fa,
                    GENERATION,
                ) {
                    break;
                }
                continue;
            }
            let names_only = want == Want::Names && entry.kind != Kind::Dir;
            if (names_only || self.cfg.ttl >= HELD_ATTR_TTL && self.core.is_held(entry.ino))
                && let Some(full) =
                    reply.add_unlinked(INodeNo(entry.ino), off, file_type(entry.kind), entry.name)
            {
                if full {
                    break;
                }
                any = true;
                continue;
            }
            // The kernel counts one reference per entry it accepts, like a lookup.
            let node = match self.core.lookup_listed(ino, &entry, want) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(name = ?entry.name, error = %e, "listed entry not found");
                    if e.errno() != libc::ENOENT {
                        continue;
                    }
                    // Listed, yet no such name (a zero-size file with a
                    // whiteout xattr where the directory does not say it holds
                    // such whiteouts: kernel overlayfs lists it, and a lookup
                    // takes it for a whiteout): the name alone. Where a reply
                    // cannot say that, it ends before the name, which the
                    // kernel's next read (a plain readdir) then gives.
                    match reply.add_unlinked(
                        INodeNo(entry.ino),
                        off,
                        file_type(entry.kind),
                        entry.name,
                    ) {
                        Some(false) => any = true,
                        Some(true) => break,
                        None if any => break,
                        None => {}
                    }
                    continue;
                }
            };
            let full = reply.add(
                INodeNo(self.aliases.nodeid(node.ino())),
                off,
                entry.name,
                &self.cfg.ttl,
                &self.attr_out(node.attr()),
                GENERATION,
            );
            if full {
                self.core.forget(node.ino(), 1);
                break;
            }
            any = true;
        }
        reply.ok();
    }

    pub(super) fn do_statfs(&self, reply: impl StatfsReply) {
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_getxattr(
        &self,
        pid: u32,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: impl XattrReply,
    ) {
        let _s = debug_span!("getxattr", ino, ?name, size).entered();
        let ino = self.aliases.ino(ino);
        self.walks.asked(pid, || !self.core.is_held_dir(ino));
        match self.core.getxattr(ino, name) {
            Ok(value) => reply_sized(reply, &value, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_listxattr(&self, ino: u64, size: u32, reply: impl XattrReply) {
        let _s = debug_span!("listxattr", ino, size).entered();
        let ino = self.aliases.ino(ino);
        match self.core.listxattr(ino) {
            Ok(list) => reply_sized(reply, &list, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_setattr(&self, ctx: &Ctx, ino: u64, a: SetAttrArgs, reply: impl AttrReply) {
        let _s = debug_span!("setattr", ino).entered();
        let ino = self.aliases.ino(ino);
        self.walks.asked(ctx.pid, || !self.core.is_held_dir(ino));
        let mut set = SetAttr {
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            atime: a.atime.map(set_time),
            mtime: a.mtime.map(set_time),
            fh: a.fh,
            drop_setid: None,
        };
        let groups;
        if a.size.is_some() && self.lacks_fsetid(ctx) {
            groups = caller_groups(ctx);
            set.drop_setid = Some(&groups);
        }
        match self.core.setattr(ino, set) {
            Ok(attr) => reply.attr(&self.cfg.ttl, &self.attr_out(attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: impl EntryReply,
    ) {
        let _s = debug_span!("mknod", parent, ?name, mode, rdev).entered();
        let file_type = rustix::fs::FileType::from_raw_mode(mode);
        let what = NewEntry::Special {
            file_type,
            rdev: decode_dev(rdev),
        };
        self.reply_new(
            reply,
            self.core
                .create_entry(parent, name, mode, caller(ctx, umask), what),
        );
    }

    pub(super) fn do_mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: impl EntryReply,
    ) {
        let _s = debug_span!("mkdir", parent, ?name, mode).entered();
        let r = self
            .core
            .create_entry(parent, name, mode, caller(ctx, umask), NewEntry::Dir);
        self.reply_new(reply, r);
    }

    pub(super) fn do_unlink(&self, pid: u32, parent: u64, name: &OsStr, reply: impl EmptyReply) {
        let _s = debug_span!("unlink", parent, ?name).entered();
        self.walks.asked(pid, || true);
        reply_empty(reply, self.core.unlink(parent, name));
    }

    pub(super) fn do_rmdir(&self, parent: u64, name: &OsStr, reply: impl EmptyReply) {
        let _s = debug_span!("rmdir", parent, ?name).entered();
        reply_empty(reply, self.core.rmdir(parent, name));
    }

    pub(super) fn do_symlink(
        &self,
        ctx: &Ctx,
        parent: u64,
        link_name: &OsStr,
        target: &OsStr,
        reply: impl EntryReply,
    ) {
        let _s = debug_span!("symlink", parent, ?link_name).entered();
        let Ok(target) = std::ffi::CString::new(target.as_bytes()) else {
            return reply.error(Errno::EINVAL);
        };
        let what = NewEntry::Symlink { target: &target };
        let r = self
            .core
            .create_entry(parent, link_name, 0o777, caller(ctx, 0), what);
        self.reply_new(reply, r);
    }

    pub(super) fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: impl EmptyReply,
    ) {
        let _s = debug_span!("rename", parent, ?name, newparent, ?newname).entered();
        let r = self.core.rename(parent, name, newparent, newname, flags);
        reply_empty(reply, r);
    }

    pub(super) fn do_link(
        &self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: impl EntryReply,
    ) {
        let _s = debug_span!("link", ino, newparent, ?newname).entered();
        // The new name leads to the kernel inode the link was made from.
        match self.core.link(self.aliases.ino(ino), newparent, newname) {
            Ok(node) => reply.entry_as(ino, &self.cfg.ttl, &self.attr_out(node.attr()), GENERATION),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// `kill_suidgid`: the kernel's FUSE_WRITE_KILL_SUIDGID.
    pub(super) fn do_write(
        &self,
        ctx: &Ctx,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        reply: impl WriteReply,
    ) {
        let _s = debug_span!("write", fh, offset, len = data.len()).entered();
        if kill_suidgid
            && let Err(e) = self
                .core
                .drop_setid(fh, |g| caller_groups(ctx).contains(&g))
        {
            return reply.error(errno(&e));
        }
        match self.core.write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: impl CreateReply,
    ) {
        let _s = debug_span!("create", parent, ?name, mode, flags).entered();
        let what = NewEntry::File {
            flags: self.open_flags(flags),
        };
        match self
            .core
            .create_entry(parent, name, mode, caller(ctx, umask), what)
        {
            Ok((node, Some(fh))) => {
                let attr = self.attr_out(node.attr());
                let (ttl, fh) = (&self.cfg.ttl, FileHandle(fh));
                match self.route_for(node.ino(), fh.0, flags, &reply) {
                    Route::Cached => {
                        reply.created(ttl, &attr, GENERATION, fh, FopenFlags::FOPEN_KEEP_CACHE)
                    }
                    Route::Refused => {
                        self.core.release(fh.0);
                        self.core.forget(node.ino(), 1);
                        reply.error(Errno::EIO)
                    }
                    Route::Backed(id) => reply.created_passthrough(
                        ttl,
                        &attr,
                        GENERATION,
                        fh,
                        FopenFlags::empty(),
                        &id,
                    ),
                }
            }
            Ok((node, None)) => {
                self.core.forget(node.ino(), 1);
                reply.error(Errno::EIO);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: impl EmptyReply,
    ) {
        let _s = debug_span!("setxattr", ino, ?name).entered();
        let ino = self.aliases.ino(ino);
        reply_empty(reply, self.core.setxattr(ino, name, value, flags));
    }

    pub(super) fn do_removexattr(&self, ino: u64, name: &OsStr, reply: impl EmptyReply) {
        let _s = debug_span!("removexattr", ino, ?name).entered();
        let ino = self.aliases.ino(ino);
        reply_empty(reply, self.core.removexattr(ino, name));
    }

    pub(super) fn do_fallocate(
        &self,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
        reply: impl EmptyReply,
    ) {
        let _s = debug_span!("fallocate", fh, offset, length, mode).entered();
        reply_empty(reply, self.core.fallocate(fh, offset, length, mode));
    }

    pub(super) fn do_copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
        reply: impl WriteReply,
    ) {
        let _s = debug_span!("copy_file_range", fh_in, fh_out, len).entered();
        match self
            .core
            .copy_file_range(fh_in, offset_in, fh_out, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    pub(super) fn do_fsync(&self, fh: u64, datasync: bool, reply: impl EmptyReply) {
        let _s = debug_span!("fsync", fh, datasync).entered();
        reply_empty(reply, self.core.fsync(fh, datasync));
    }

    pub(super) fn do_fsyncdir(&self, ino: u64, reply: impl EmptyReply) {
        let _s = debug_span!("fsyncdir", ino).entered();
        reply_empty(reply, self.core.fsyncdir(ino));
    }

    /// `write`: the caller asked for W_OK.
    pub(super) fn do_access(&self, ino: u64, write: bool, reply: impl EmptyReply) {
        // Permission bits are checked by the kernel (default_permissions);
        // what is left is the read-only nature of the union.
        match self.core.getattr(self.aliases.ino(ino)) {
            Ok(_) if write && !self.core.is_writable() => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
