//! Replies written into an io_uring entry: the fuse header in the entry's
//! header area, the body in its payload.

use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};

use super::abi::{self, ATTR_OUT, ENTRY_OUT, OPEN_OUT, OUT_HEADER, Out};
use crate::fuse::reply::{
    AttrReply, Backing, CreateReply, DataReply, DirPlusReply, DirReply, EmptyReply, EntryReply,
    LseekReply, OpenBacking, OpenReply, Reply, StatfsReply, WriteReply, XattrReply,
};
use crate::sys::{FuseBacking, Slot};

/// The reply to the request an entry holds. `limit` bounds a listing (the
/// size the kernel asked for); `used` is how much of it is filled.
pub struct RingReply<'a, 'b> {
    slot: &'a mut Slot<'b>,
    unique: u64,
    dev: &'a Arc<OwnedFd>,
    limit: usize,
    used: usize,
    /// Set once the reply is written (an operation that does not reply
    /// leaves an error to be sent, so no request goes unanswered).
    pub(super) sent: &'a mut bool,
}

impl<'a, 'b> RingReply<'a, 'b> {
    pub fn new(
        slot: &'a mut Slot<'b>,
        unique: u64,
        dev: &'a Arc<OwnedFd>,
        limit: usize,
        sent: &'a mut bool,
    ) -> Self {
        let limit = limit.min(slot.payload.len());
        RingReply {
            slot,
            unique,
            dev,
            limit,
            used: 0,
            sent,
        }
    }

    /// Writes the fuse header for a body of `len` payload bytes.
    fn finish(self, error: i32, len: usize) {
        let mut o = Out {
            buf: &mut self.slot.header[..OUT_HEADER],
        };
        o.u32(0, (OUT_HEADER + len) as u32);
        o.u32(4, error as u32);
        o.u64(8, self.unique);
        self.slot.set_payload_len(len as u32);
        *self.sent = true;
    }

    /// A body built by `fill` in the first `len` payload bytes.
    fn body(mut self, len: usize, fill: impl FnOnce(&mut Out<'_>)) {
        if len > self.slot.payload.len() {
            return self.finish(-libc::EIO, 0);
        }
        fill(&mut Out {
            buf: &mut self.slot.payload[..len],
        });
        self.used = len;
        self.finish(0, len)
    }

    fn bytes(self, data: &[u8]) {
        self.body(data.len(), |o| o.buf.copy_from_slice(data))
    }

    /// Adds a listing entry of `size` bytes, written by `fill` at the
    /// offset it is given; false (nothing written) once it would not fit.
    fn append(&mut self, size: usize, fill: impl FnOnce(&mut Out<'_>, usize)) -> bool {
        if self.used + size > self.limit {
            return false;
        }
        let mut o = Out {
            buf: &mut self.slot.payload[..self.limit],
        };
        fill(&mut o, self.used);
        self.used += size;
        true
    }

    /// Ends a listing with the entries appended.
    fn listing(self) {
        let used = self.used;
        self.finish(0, used)
    }
}

impl Reply for RingReply<'_, '_> {
    fn error(self, err: Errno) {
        self.finish(-err.code(), 0)
    }
}

impl EmptyReply for RingReply<'_, '_> {
    fn ok(self) {
        self.finish(0, 0)
    }
}

impl EntryReply for RingReply<'_, '_> {
    fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        self.entry_as(attr.ino.0, ttl, attr, generation)
    }
    fn entry_as(self, nodeid: u64, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        self.body(ENTRY_OUT, |o| {
            abi::put_entry(o, 0, nodeid, ttl, attr, generation.0)
        })
    }
}

impl AttrReply for RingReply<'_, '_> {
    fn attr(self, ttl: &Duration, attr: &FileAttr) {
        self.body(ATTR_OUT, |o| abi::put_attr_out(o, ttl, attr))
    }
}

impl DataReply for RingReply<'_, '_> {
    fn data(self, data: &[u8]) {
        self.bytes(data)
    }
}

impl WriteReply for RingReply<'_, '_> {
    fn written(self, size: u32) {
        self.body(8, |o| {
            o.u32(0, size);
            o.u32(4, 0);
        })
    }
}

impl LseekReply for RingReply<'_, '_> {
    fn offset(self, offset: i64) {
        self.body(8, |o| o.u64(0, offset as u64))
    }
}

impl XattrReply for RingReply<'_, '_> {
    fn size(self, size: u32) {
        self.body(8, |o| {
            o.u32(0, size);
            o.u32(4, 0);
        })
    }
    fn data(self, data: &[u8]) {
        self.bytes(data)
    }
}

impl StatfsReply for RingReply<'_, '_> {
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
        self.body(80, |o| {
            o.buf.fill(0);
            o.u64(0, blocks);
            o.u64(8, bfree);
            o.u64(16, bavail);
            o.u64(24, files);
            o.u64(32, ffree);
            o.u32(40, bsize);
            o.u32(44, namelen);
            o.u32(48, frsize);
        })
    }
}

impl OpenBacking for RingReply<'_, '_> {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> std::io::Result<Backing> {
        FuseBacking::open(self.dev, fd).map(Backing::Ring)
    }
    fn is_ring(&self) -> bool {
        true
    }
}

/// The number of a backing file this transport registered.
fn ring_id(backing: &Backing) -> Option<u32> {
    match backing {
        Backing::Ring(b) => Some(b.id()),
        Backing::Fuser(_) => None,
    }
}

impl OpenReply for RingReply<'_, '_> {
    fn opened(self, fh: FileHandle, flags: FopenFlags) {
        self.body(OPEN_OUT, |o| abi::put_open(o, 0, fh.0, flags.bits(), 0))
    }
    fn opened_passthrough(self, fh: FileHandle, flags: FopenFlags, backing: &Arc<Backing>) {
        let Some(id) = ring_id(backing) else {
            return self.error(Errno::EIO);
        };
        let flags = flags.bits() | abi::FOPEN_PASSTHROUGH;
        self.body(OPEN_OUT, |o| abi::put_open(o, 0, fh.0, flags, id))
    }
}

impl CreateReply for RingReply<'_, '_> {
    fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    ) {
        self.body(ENTRY_OUT + OPEN_OUT, |o| {
            abi::put_entry(o, 0, attr.ino.0, ttl, attr, generation.0);
            abi::put_open(o, ENTRY_OUT, fh.0, flags.bits(), 0);
        })
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
        let Some(id) = ring_id(backing) else {
            return self.error(Errno::EIO);
        };
        let flags = flags.bits() | abi::FOPEN_PASSTHROUGH;
        self.body(ENTRY_OUT + OPEN_OUT, |o| {
            abi::put_entry(o, 0, attr.ino.0, ttl, attr, generation.0);
            abi::put_open(o, ENTRY_OUT, fh.0, flags, id);
        })
    }
}

impl DirReply for RingReply<'_, '_> {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        let added = self.append(abi::dirent_size(name), |o, at| {
            abi::put_dirent(o, at, ino.0, offset, kind, name)
        });
        !added
    }
    fn ok(self) {
        self.listing()
    }
}

impl DirPlusReply for RingReply<'_, '_> {
    fn add(
        &mut self,
        ino: INodeNo,
        offset: u64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
    ) -> bool {
        let added = self.append(ENTRY_OUT + abi::dirent_size(name), |o, at| {
            abi::put_entry(o, at, ino.0, ttl, attr, generation.0);
            abi::put_dirent(o, at + ENTRY_OUT, attr.ino.0, offset, attr.kind, name);
        });
        !added
    }
    fn add_unlinked(
        &mut self,
        ino: INodeNo,
        offset: u64,
        kind: FileType,
        name: &OsStr,
    ) -> Option<bool> {
        let added = self.append(ENTRY_OUT + abi::dirent_size(name), |o, at| {
            o.buf[at..at + ENTRY_OUT].fill(0);
            abi::put_dirent(o, at + ENTRY_OUT, ino.0, offset, kind, name);
        });
        Some(!added)
    }
    fn takes_unlinked(&self) -> bool {
        true
    }
    fn ok(self) {
        self.listing()
    }
}

/// A write's answer, held until the data it wrote (in the entry's payload)
/// is no longer borrowed; then sent.
#[derive(Default)]
pub struct WriteOutcome(Option<Result<u32, Errno>>);

impl WriteOutcome {
    pub fn send(self, reply: RingReply<'_, '_>) {
        match self.0 {
            Some(Ok(n)) => reply.written(n),
            Some(Err(e)) => reply.error(e),
            None => reply.error(Errno::EIO),
        }
    }
}

impl Reply for &mut WriteOutcome {
    fn error(self, err: Errno) {
        self.0 = Some(Err(err));
    }
}

impl WriteReply for &mut WriteOutcome {
    fn written(self, size: u32) {
        self.0 = Some(Ok(size));
    }
}
