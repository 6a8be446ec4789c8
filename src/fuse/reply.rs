//! What an operation can answer, whichever transport carried the request:
//! fuser's replies (requests read from /dev/fuse) and the io_uring ring's
//! (see `ring`). The operations in `ops` are written once against these.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};

use crate::sys::FuseBacking;

/// Who asked: from the request's header.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl From<&fuser::Request> for Ctx {
    fn from(req: &fuser::Request) -> Self {
        Ctx {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }
}

/// A file registered with the kernel for passthrough, by the transport
/// that answers its opens: the kernel knows it by a number either way.
#[derive(Debug)]
pub enum Backing {
    Fuser(BackingId),
    Ring(FuseBacking),
}

impl Backing {
    pub fn is_ring(&self) -> bool {
        matches!(self, Backing::Ring(_))
    }
}

pub trait Reply {
    fn error(self, err: Errno);
}

pub trait EmptyReply: Reply {
    fn ok(self);
}

pub trait EntryReply: Reply {
    fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation);
    /// An entry whose kernel node id is `nodeid` rather than its inode
    /// number (see `fuse::alias`).
    fn entry_as(self, nodeid: u64, ttl: &Duration, attr: &FileAttr, generation: Generation);
}

pub trait AttrReply: Reply {
    fn attr(self, ttl: &Duration, attr: &FileAttr);
}

pub trait DataReply: Reply {
    fn data(self, data: &[u8]);
}

pub trait WriteReply: Reply {
    fn written(self, size: u32);
}

pub trait LseekReply: Reply {
    fn offset(self, offset: i64);
}

pub trait XattrReply: Reply {
    fn size(self, size: u32);
    fn data(self, data: &[u8]);
}

pub trait StatfsReply: Reply {
    #[allow(clippy::too_many_arguments)]
    fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    );
}

/// Registers a file for passthrough (an ioctl on this transport's device).
pub trait OpenBacking {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> std::io::Result<Backing>;
    /// Whether the reply goes through an io_uring queue.
    fn is_ring(&self) -> bool;
}

pub trait OpenReply: Reply + OpenBacking {
    fn opened(self, fh: FileHandle, flags: FopenFlags);
    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Arc<Backing>);
}

pub trait CreateReply: Reply + OpenBacking {
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    );
    fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &Arc<Backing>,
    );
}

/// Directory listings: `add` says whether the reply is full (the entry not taken).
pub trait DirReply: Reply {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool;
    fn ok(self);
}

pub trait DirPlusReply: Reply {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool;
    /// Adds an entry the kernel is not to link to a node (node id 0: it
    /// takes the name alone, as from readdir, and its inode keeps its
    /// cached attributes and ACLs), if the transport can say so: `None`
    /// if not, else whether the reply is full.
    fn add_unlinked(
        &mut self,
        ino: INodeNo,
        offset: u64,
        kind: FileType,
        name: &OsStr,
    ) -> Option<bool>;
    /// Whether [`DirPlusReply::add_unlinked`] can add entries.
    fn takes_unlinked(&self) -> bool;
    fn ok(self);
}

macro_rules! fuser_error {
    ($($t:ty),*) => {$(
        impl Reply for $t {
            fn error(self, err: Errno) {
                <$t>::error(self, err)
            }
        }
    )*};
}

fuser_error!(
    ReplyEmpty,
    ReplyEntry,
    ReplyAttr,
    ReplyData,
    ReplyWrite,
    ReplyLseek,
    ReplyXattr,
    ReplyStatfs,
    ReplyOpen,
    ReplyCreate,
    ReplyDirectory,
    ReplyDirectoryPlus
);

impl EmptyReply for ReplyEmpty {
    fn ok(self) {
        ReplyEmpty::ok(self)
    }
}

impl EntryReply for ReplyEntry {
    fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        ReplyEntry::entry(self, ttl, attr, generation)
    }
    fn entry_as(self, nodeid: u64, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        // fuser sends the inode number as the node id: aliases are made only
        // on the io_uring queues, which can say otherwise.
        debug_assert_eq!(nodeid, attr.ino.0, "an alias answered through /dev/fuse");
        ReplyEntry::entry(self, ttl, attr, generation)
    }
}

impl AttrReply for ReplyAttr {
    fn attr(self, ttl: &Duration, attr: &FileAttr) {
        ReplyAttr::attr(self, ttl, attr)
    }
}

impl DataReply for ReplyData {
    fn data(self, data: &[u8]) {
        ReplyData::data(self, data)
    }
}

impl WriteReply for ReplyWrite {
    fn written(self, size: u32) {
        ReplyWrite::written(self, size)
    }
}

impl LseekReply for ReplyLseek {
    fn offset(self, offset: i64) {
        ReplyLseek::offset(self, offset)
    }
}

impl XattrReply for ReplyXattr {
    fn size(self, size: u32) {
        ReplyXattr::size(self, size)
    }
    fn data(self, data: &[u8]) {
        ReplyXattr::data(self, data)
    }
}

impl StatfsReply for ReplyStatfs {
    fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) {
        ReplyStatfs::statfs(
            self, blocks, bfree, bavail, files, ffree, bsize, namelen, frsize,
        )
    }
}

impl OpenBacking for ReplyOpen {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> std::io::Result<Backing> {
        ReplyOpen::open_backing(self, fd).map(Backing::Fuser)
    }
    fn is_ring(&self) -> bool {
        false
    }
}

impl OpenReply for ReplyOpen {
    fn opened(self, fh: FileHandle, flags: FopenFlags) {
        ReplyOpen::opened(self, fh, flags)
    }
    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Arc<Backing>) {
        match &**backing {
            Backing::Fuser(id) => ReplyOpen::opened_passthrough(self, fh, flags, id),
            Backing::Ring(_) => ReplyOpen::error(self, Errno::EIO),
        }
    }
}

impl OpenBacking for ReplyCreate {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> std::io::Result<Backing> {
        ReplyCreate::open_backing(self, fd).map(Backing::Fuser)
    }
    fn is_ring(&self) -> bool {
        false
    }
}

impl CreateReply for ReplyCreate {
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    ) {
        ReplyCreate::created(self, ttl, attr, generation, fh, flags)
    }
    fn created_passthrough(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
        backing: &Arc<Backing>,
    ) {
        match &**backing {
            Backing::Fuser(id) => {
                ReplyCreate::created_passthrough(self, ttl, attr, generation, fh, flags, id)
            }
            Backing::Ring(_) => ReplyCreate::error(self, Errno::EIO),
        }
    }
}

impl DirReply for ReplyDirectory {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        ReplyDirectory::add(self, ino, offset, kind, name)
    }
    fn ok(self) {
        ReplyDirectory::ok(self)
    }
}

impl DirPlusReply for ReplyDirectoryPlus {
    fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool {
        ReplyDirectoryPlus::add(self, ino, offset, name, ttl, attr, generation)
    }
    /// fuser writes an entry's attribute inode number as its node id.
    fn add_unlinked(&mut self, _: INodeNo, _: u64, _: FileType, _: &OsStr) -> Option<bool> {
        None
    }
    fn takes_unlinked(&self) -> bool {
        false
    }
    fn ok(self) {
        ReplyDirectoryPlus::ok(self)
    }
}
