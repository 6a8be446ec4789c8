//! The FUSE adapter: one thin method per operation that decodes the request,
//! calls the union core and replies. No layer decisions are made here.

mod convert;
mod passthrough;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileHandle, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug_span;

use std::os::unix::ffi::OsStrExt;

use crate::union::{Caller, NewEntry, Node, SetAttr, SetTime, Union};
use convert::{errno, file_attr, file_type, negative_entry};
use passthrough::{Passthrough, Route};

/// Options of the adapter that are not union semantics.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// How long the kernel may cache entries and attributes. Lower layers
    /// never change, so this can be long.
    pub ttl: Duration,
    /// Let the kernel enforce POSIX ACLs and cache them per inode.
    pub acl: bool,
    /// Kernel writeback cache for writes; `None`: when passthrough is off.
    pub writeback: Option<bool>,
    pub max_write: Option<u32>,
    /// Ask for FUSE passthrough (needs CAP_SYS_ADMIN in the initial user
    /// namespace); falls back to the daemon when refused.
    pub passthrough: bool,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            ttl: Duration::from_secs(24 * 3600),
            acl: true,
            writeback: None,
            max_write: None,
            passthrough: false,
        }
    }
}

pub struct StrataFs {
    core: Arc<Union>,
    cfg: AdapterConfig,
    passthrough: Passthrough,
    /// The kernel leaves clearing setuid/setgid on writes to us
    /// (FUSE_HANDLE_KILLPRIV_V2), and so skips a security.capability
    /// lookup per write.
    killpriv: bool,
    /// The kernel caches writes (FUSE_WRITEBACK_CACHE).
    writeback: bool,
    /// The kernel opens directories by itself once opendir says ENOSYS
    /// (FUSE_NO_OPENDIR_SUPPORT, Linux 5.1).
    no_opendir: bool,
}

impl StrataFs {
    pub fn new(core: Arc<Union>, cfg: AdapterConfig) -> Self {
        StrataFs {
            core,
            cfg,
            passthrough: Passthrough::default(),
            killpriv: false,
            writeback: false,
            no_opendir: false,
        }
    }

    /// How the kernel is to serve a new handle of `ino`.
    fn route(
        &self,
        ino: u64,
        fh: u64,
        flags: i32,
        open_backing: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<fuser::BackingId>,
    ) -> Route {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let stable_fd = || self.core.stable_fd(fh).ok().flatten();
        self.passthrough
            .route(ino, fh, stable_fd, writable, open_backing)
    }

    /// With a writeback cache the kernel reads pages of files opened for
    /// writing only and applies O_APPEND itself.
    fn open_flags(&self, flags: i32) -> i32 {
        if !self.writeback {
            return flags;
        }
        let flags = flags & !libc::O_APPEND;
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            (flags & !libc::O_ACCMODE) | libc::O_RDWR
        } else {
            flags
        }
    }

    /// Whether a change by this caller must clear setuid/setgid, which is
    /// ours to do under FUSE_HANDLE_KILLPRIV_V2. The request carries no
    /// capabilities: root is taken to hold CAP_FSETID.
    fn lacks_fsetid(&self, req: &Request) -> bool {
        self.killpriv && req.uid() != 0
    }

    /// Attributes as the mount shows them.
    fn attr_out(&self, attr: crate::union::Attr) -> fuser::FileAttr {
        file_attr(&self.core.shown(attr))
    }

    /// Replies to an operation that made a new entry.
    fn reply_new(&self, reply: ReplyEntry, r: crate::union::Result<(Arc<Node>, Option<u64>)>) {
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
}

fn caller(req: &Request, umask: u32) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask,
    }
}

/// The caller's groups: its gid and, from /proc, its supplementary groups.
fn caller_groups(req: &Request) -> Vec<u32> {
    let mut groups = vec![req.gid()];
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid()))
        && let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:"))
    {
        groups.extend(
            line.split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok()),
        );
    }
    groups
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => SetTime::At {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (sec, nsec) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                };
                SetTime::At { sec, nsec }
            }
        },
    }
}

/// The kernel's 32-bit `new_encode_dev` form back to a dev_t.
fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    rustix::fs::makedev(major, minor)
}

fn reply_empty(reply: ReplyEmpty, r: crate::union::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

const GENERATION: Generation = Generation(0);

impl fuser::Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut caps = vec![
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
        ];
        if self.cfg.acl && !self.core.view().no_xattrs {
            caps.push(InitFlags::FUSE_POSIX_ACL);
        }
        let passthrough = self.cfg.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            // Layers on a plain file system; this mount may itself be a lower of an overlay.
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.enable(passthrough);
        self.killpriv = self.core.drops_setid()
            && config
                .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
                .is_ok();
        // The kernel's writeback cache does not apply to passthrough files.
        self.writeback = self.cfg.writeback.unwrap_or(!passthrough)
            && self.core.is_writable()
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok();
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        tracing::debug!(
            passthrough,
            killpriv = self.killpriv,
            writeback = self.writeback,
            no_opendir = self.no_opendir,
            "kernel caching"
        );
        if let Some(max) = self.cfg.max_write
            && let Err(nearest) = config.set_max_write(max)
        {
            tracing::warn!(
                max_write = max,
                nearest,
                "max_write out of range; using the nearest allowed"
            );
            let _ = config.set_max_write(nearest);
        }
        // Each capability separately: an old kernel refusing one must not cost the others.
        for cap in caps {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = debug_span!("lookup", parent = parent.0, ?name).entered();
        match self.core.lookup(parent.0, name) {
            Ok(node) => reply.entry(&self.cfg.ttl, &self.attr_out(node.attr()), GENERATION),
            Err(e) if e.errno() == libc::ENOENT => {
                // Node id 0 is a negative entry the kernel caches for the TTL.
                reply.entry(&self.cfg.ttl, &negative_entry(), GENERATION);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = debug_span!("getattr", ino = ino.0).entered();
        match self.core.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.cfg.ttl, &self.attr_out(attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _s = debug_span!("readlink", ino = ino.0).entered();
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = debug_span!("open", ino = ino.0, flags = flags.0).entered();
        let wanted = self.open_flags(flags.0);
        let fh = match self.core.open(ino.0, wanted) {
            Ok(fh) => fh,
            // The read access the writeback cache wants is not granted (an
            // unprivileged daemon on a write-only file): as asked, then.
            Err(e) if e.errno() == libc::EACCES && wanted != flags.0 => {
                match self.core.open(ino.0, flags.0) {
                    Ok(fh) => fh,
                    Err(e) => return reply.error(errno(&e)),
                }
            }
            Err(e) => return reply.error(errno(&e)),
        };
        if flags.0 & libc::O_TRUNC != 0
            && self.lacks_fsetid(req)
            && let Err(e) = self
                .core
                .drop_setid(fh, |g| caller_groups(req).contains(&g))
        {
            self.core.release(fh);
            return reply.error(errno(&e));
        }
        match self.route(ino.0, fh, flags.0, |fd| reply.open_backing(fd)) {
            Route::Cached => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Route::Backed(id) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            Route::Refused => {
                self.core.release(fh);
                reply.error(fuser::Errno::EIO)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = debug_span!("read", fh = fh.0, offset, size).entered();
        match self.core.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.core.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (data goes to the real file as it is
        // written; the kernel writes its cache back before asking). ENOSYS
        // makes the kernel stop asking: one request less per close.
        reply.error(fuser::Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _s = debug_span!("lseek", fh = fh.0, offset, whence).entered();
        match self.core.lseek(fh.0, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Not implemented, on purpose: the kernel then opens directories
    /// without asking (nor releasing them), keeping and caching their
    /// contents (`FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`) as it would for us.
    /// A kernel that cannot do that gets the same flags, and no handle:
    /// listings are kept per directory (see `union::readdir`).
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = debug_span!("opendir", ino = ino.0).entered();
        if self.no_opendir {
            return reply.error(fuser::Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _s = debug_span!("readdir", ino = ino.0, offset).entered();
        let entries = match self.core.readdir(ino.0, offset) {
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

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _s = debug_span!("readdirplus", ino = ino.0, offset).entered();
        let entries = match self.core.readdir(ino.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        for (off, entry) in entries.entries_after(offset) {
            if entry.name == "." || entry.name == ".." {
                // The kernel takes no reference for these: report attributes only.
                let attr = match self.core.getattr(entry.ino) {
                    Ok(a) => a,
                    Err(_) => match self.core.getattr(ino.0) {
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
            // The kernel counts one reference per entry it accepts, like a lookup.
            let node = match self.core.lookup_listed(ino.0, &entry) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(name = ?entry.name, error = %e, "entry vanished during readdirplus");
                    continue;
                }
            };
            let full = reply.add(
                INodeNo(node.ino()),
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
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _s = debug_span!("getxattr", ino = ino.0, ?name, size).entered();
        match self.core.getxattr(ino.0, name) {
            Ok(value) => reply_sized(reply, &value, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _s = debug_span!("listxattr", ino = ino.0, size).entered();
        match self.core.listxattr(ino.0) {
            Ok(list) => reply_sized(reply, &list, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = debug_span!("setattr", ino = ino.0).entered();
        let mut set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
            drop_setid: None,
        };
        let groups;
        if size.is_some() && self.lacks_fsetid(req) {
            groups = caller_groups(req);
            set.drop_setid = Some(&groups);
        }
        match self.core.setattr(ino.0, set) {
            Ok(attr) => reply.attr(&self.cfg.ttl, &self.attr_out(attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _s = debug_span!("mknod", parent = parent.0, ?name, mode, rdev).entered();
        let file_type = rustix::fs::FileType::from_raw_mode(mode);
        let what = NewEntry::Special {
            file_type,
            rdev: decode_dev(rdev),
        };
        self.reply_new(
            reply,
            self.core
                .create_entry(parent.0, name, mode, caller(req, umask), what),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _s = debug_span!("mkdir", parent = parent.0, ?name, mode).entered();
        let r = self
            .core
            .create_entry(parent.0, name, mode, caller(req, umask), NewEntry::Dir);
        self.reply_new(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("unlink", parent = parent.0, ?name).entered();
        reply_empty(reply, self.core.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("rmdir", parent = parent.0, ?name).entered();
        reply_empty(reply, self.core.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _s = debug_span!("symlink", parent = parent.0, ?link_name).entered();
        let Ok(target) = std::ffi::CString::new(target.as_os_str().as_bytes()) else {
            return reply.error(fuser::Errno::EINVAL);
        };
        let what = NewEntry::Symlink { target: &target };
        let r = self
            .core
            .create_entry(parent.0, link_name, 0o777, caller(req, 0), what);
        self.reply_new(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!(
            "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname
        )
        .entered();
        let r = self
            .core
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        reply_empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _s = debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname).entered();
        match self.core.link(ino.0, newparent.0, newname) {
            Ok(node) => reply.entry(&self.cfg.ttl, &self.attr_out(node.attr()), GENERATION),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = debug_span!("write", fh = fh.0, offset, len = data.len()).entered();
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self
                .core
                .drop_setid(fh.0, |g| caller_groups(req).contains(&g))
        {
            return reply.error(errno(&e));
        }
        match self.core.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _s = debug_span!("create", parent = parent.0, ?name, mode, flags).entered();
        let what = NewEntry::File {
            flags: self.open_flags(flags),
        };
        match self
            .core
            .create_entry(parent.0, name, mode, caller(req, umask), what)
        {
            Ok((node, Some(fh))) => {
                let attr = self.attr_out(node.attr());
                let (ttl, fh) = (&self.cfg.ttl, FileHandle(fh));
                match self.route(node.ino(), fh.0, flags, |fd| reply.open_backing(fd)) {
                    Route::Cached => {
                        reply.created(ttl, &attr, GENERATION, fh, FopenFlags::FOPEN_KEEP_CACHE)
                    }
                    Route::Refused => {
                        self.core.release(fh.0);
                        self.core.forget(node.ino(), 1);
                        reply.error(fuser::Errno::EIO)
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
                reply.error(fuser::Errno::EIO);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("setxattr", ino = ino.0, ?name).entered();
        reply_empty(reply, self.core.setxattr(ino.0, name, value, flags));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("removexattr", ino = ino.0, ?name).entered();
        reply_empty(reply, self.core.removexattr(ino.0, name));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("fallocate", fh = fh.0, offset, length, mode).entered();
        reply_empty(reply, self.core.fallocate(fh.0, offset, length, mode));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _s = debug_span!("copy_file_range", fh_in = fh_in.0, fh_out = fh_out.0, len).entered();
        match self
            .core
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("fsync", fh = fh.0, datasync).entered();
        reply_empty(reply, self.core.fsync(fh.0, datasync));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("fsyncdir", ino = ino.0).entered();
        reply_empty(reply, self.core.fsyncdir(ino.0));
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Permission bits are checked by the kernel (default_permissions);
        // what is left is the read-only nature of the union.
        match self.core.getattr(ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) && !self.core.is_writable() => {
                reply.error(fuser::Errno::EROFS)
            }
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length; too small is ERANGE.
fn reply_sized(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(u32::try_from(data.len()).unwrap_or(u32::MAX));
    } else if data.len() > size as usize {
        reply.error(fuser::Errno::ERANGE);
    } else {
        reply.data(data);
    }
}
