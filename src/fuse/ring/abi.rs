//! The FUSE wire format as the io_uring queues carry it: the request's
//! fuse header and its operation's own header arrive in an entry's header
//! area, the rest of the request (names, data) in its payload; a reply is
//! its fuse header plus a body in the payload. Layouts are the kernel's
//! `include/uapi/linux/fuse.h`, host byte order.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType};

pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const SETXATTR: u32 = 21;
pub const GETXATTR: u32 = 22;
pub const LISTXATTR: u32 = 23;
pub const REMOVEXATTR: u32 = 24;
pub const FLUSH: u32 = 25;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const COPY_FILE_RANGE: u32 = 47;

/// `fuse_setattr_in.valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;

pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

pub const OUT_HEADER: usize = 16;
pub const ENTRY_OUT: usize = 128;
pub const ATTR_OUT: usize = 104;
pub const OPEN_OUT: usize = 16;
const DIRENT: usize = 24;

/// Little helpers to read fixed-layout fields; a short buffer reads zeros
/// (the kernel always sends the whole header; a zero is never trusted
/// beyond what the operation itself checks).
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_ne_bytes(v)
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_ne_bytes(v)
}

/// `struct fuse_in_header`.
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> InHeader {
        InHeader {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
            uid: u32_at(b, 24),
            gid: u32_at(b, 28),
            pid: u32_at(b, 32),
        }
    }
}

/// The NUL-terminated strings at the start of a payload, in order.
pub fn names(payload: &[u8]) -> impl Iterator<Item = &OsStr> {
    payload.split(|&b| b == 0).map(OsStr::from_bytes)
}

/// Writes fixed-layout fields into a reply body.
pub struct Out<'a> {
    pub buf: &'a mut [u8],
}

impl Out<'_> {
    pub fn u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn u64(&mut self, at: usize, v: u64) {
        self.buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

/// The wire's seconds (two's complement before 1970) and nanoseconds.
fn time(t: SystemTime) -> (u64, u32) {
    let t = crate::fuse::convert::unix_time(t);
    (t.sec as u64, t.nsec)
}

fn mode(kind: FileType, perm: u16) -> u32 {
    let fmt = match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    };
    fmt | u32::from(perm)
}

/// `struct fuse_attr` at `at`.
fn put_attr(o: &mut Out<'_>, at: usize, a: &FileAttr) {
    let (atime, atime_ns) = time(a.atime);
    let (mtime, mtime_ns) = time(a.mtime);
    let (ctime, ctime_ns) = time(a.ctime);
    o.u64(at, a.ino.0);
    o.u64(at + 8, a.size);
    o.u64(at + 16, a.blocks);
    o.u64(at + 24, atime);
    o.u64(at + 32, mtime);
    o.u64(at + 40, ctime);
    o.u32(at + 48, atime_ns);
    o.u32(at + 52, mtime_ns);
    o.u32(at + 56, ctime_ns);
    o.u32(at + 60, mode(a.kind, a.perm));
    o.u32(at + 64, a.nlink);
    o.u32(at + 68, a.uid);
    o.u32(at + 72, a.gid);
    o.u32(at + 76, a.rdev);
    o.u32(at + 80, a.blksize);
    o.u32(at + 84, a.flags);
}

/// `struct fuse_entry_out` at `at` (ENTRY_OUT bytes).
pub fn put_entry(
    o: &mut Out<'_>,
    at: usize,
    nodeid: u64,
    ttl: &Duration,
    attr: &FileAttr,
    generation: u64,
) {
    o.u64(at, nodeid);
    o.u64(at + 8, generation);
    o.u64(at + 16, ttl.as_secs());
    o.u64(at + 24, ttl.as_secs());
    o.u32(at + 32, ttl.subsec_nanos());
    o.u32(at + 36, ttl.subsec_nanos());
    put_attr(o, at + 40, attr);
}

/// `struct fuse_attr_out` (ATTR_OUT bytes).
pub fn put_attr_out(o: &mut Out<'_>, ttl: &Duration, attr: &FileAttr) {
    o.u64(0, ttl.as_secs());
    o.u32(8, ttl.subsec_nanos());
    o.u32(12, 0);
    put_attr(o, 16, attr);
}

/// `struct fuse_open_out` at `at` (OPEN_OUT bytes).
pub fn put_open(o: &mut Out<'_>, at: usize, fh: u64, flags: u32, backing_id: u32) {
    o.u64(at, fh);
    o.u32(at + 8, flags);
    o.u32(at + 12, backing_id);
}

fn dirent_type(kind: FileType) -> u32 {
    mode(kind, 0) >> 12
}

/// The size of a `fuse_dirent` for `name`, padded to 8 bytes.
pub fn dirent_size(name: &OsStr) -> usize {
    (DIRENT + name.len()).next_multiple_of(8)
}

/// `struct fuse_dirent` at `at`, padding included.
pub fn put_dirent(o: &mut Out<'_>, at: usize, ino: u64, off: u64, kind: FileType, name: &OsStr) {
    let len = name.len();
    o.u64(at, ino);
    o.u64(at + 8, off);
    o.u32(at + 16, len as u32);
    o.u32(at + 20, dirent_type(kind));
    o.buf[at + DIRENT..at + DIRENT + len].copy_from_slice(name.as_bytes());
    let end = at + dirent_size(name);
    o.buf[at + DIRENT + len..end].fill(0);
}
