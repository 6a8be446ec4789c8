//! FUSE over io_uring (Linux 6.14+, with `fuse.enable_uring` on): one ring
//! per CPU queue, whose entries are buffers the kernel fills with a request
//! and takes the reply from. A reply and the wait for the next request are
//! one io_uring command (COMMIT_AND_FETCH), so the daemon thread of the
//! caller's CPU answers without a read and a write on /dev/fuse and without
//! waking a thread elsewhere.
//!
//! Also here: registering files for passthrough by number (the ioctls on
//! /dev/fuse that fuser does for its own replies).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::io_uring::{
    IORING_OFF_CQ_RING, IORING_OFF_SQ_RING, IORING_OFF_SQES, IoringEnterFlags, IoringOp,
    IoringSetupFlags, io_uring_enter, io_uring_params, io_uring_setup,
};
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// `struct fuse_uring_req_header`: the request's or reply's fuse header
/// (128 bytes), the operation's own header (128), then `fuse_uring_ent_in_out`.
pub const HEADER_SIZE: usize = 288;
/// Where in the header the kernel's entry bookkeeping starts.
const ENT_IN_OUT: usize = 256;
const COMMIT_ID: usize = ENT_IN_OUT + 8;
const PAYLOAD_SZ: usize = ENT_IN_OUT + 16;

const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
const SQE_SIZE: usize = 128;
const CQE_SIZE: usize = 16;

/// One mapping of the ring's memory.
struct Map {
    ptr: NonNull<u8>,
    len: usize,
}

impl Map {
    fn new(ring: &OwnedFd, len: usize, offset: u64) -> io::Result<Map> {
        // SAFETY: a fresh shared mapping of the ring fd at one of the
        // offsets io_uring defines, of the length its params gave; no
        // existing memory is touched.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                ring,
                offset,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mmap"))?;
        Ok(Map { ptr, len })
    }

    /// A pointer `off` bytes in, which the ring's params say is in bounds.
    fn at<T>(&self, off: u32) -> *mut T {
        debug_assert!((off as usize) < self.len);
        // SAFETY: `off` comes from the kernel's offsets for this mapping,
        // which lie within `len`.
        unsafe { self.ptr.as_ptr().add(off as usize).cast::<T>() }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: this mapping was made by `Map::new` and nothing borrows
        // it once the queue that owns it is dropped.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An entry's buffers, which the kernel reads and writes by address while
/// the entry is registered: allocated once, never moved, and never freed
/// (they are needed until the FUSE connection ends, and then the process does).
struct Entry {
    header: NonNull<u8>,
    payload: NonNull<u8>,
    iov: NonNull<[libc::iovec; 2]>,
    /// The entry holds a request for us (between its completion and our commit).
    ours: bool,
}

/// Fresh zeroed pages, never unmapped; untouched ones cost no memory.
fn leak_zeroed(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a new private anonymous mapping; no existing memory is touched.
    let ptr = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len.max(1),
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }?;
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null mmap"))
}

/// One CPU queue of a FUSE connection, and its io_uring.
pub struct FuseQueue {
    dev: Arc<OwnedFd>,
    qid: u16,
    ring: OwnedFd,
    _sq: Map,
    cq: Map,
    sqes: Map,
    sq_tail: *const AtomicU32,
    sq_mask: u32,
    sq_array: *mut u32,
    cq_head: *const AtomicU32,
    cq_tail: *const AtomicU32,
    cq_mask: u32,
    cqes_off: u32,
    /// Commands written to the submission queue and not yet submitted.
    queued: u32,
    entries: Vec<Entry>,
    payload_size: usize,
    /// Entries that got a request while the registration was checked.
    early: Vec<usize>,
}

// SAFETY: the raw pointers point into the queue's own mappings and leaked
// buffers, which live as long as the queue; one thread uses it at a time.
unsafe impl Send for FuseQueue {}

/// The request an entry holds: its header (the fuse header, the
/// operation's header, the kernel's bookkeeping) and its payload.
pub struct Slot<'a> {
    pub header: &'a mut [u8; HEADER_SIZE],
    pub payload: &'a mut [u8],
}

impl Slot<'_> {
    /// How many payload bytes the kernel wrote.
    pub fn payload_len(&self) -> usize {
        read_u32(self.header, PAYLOAD_SZ) as usize
    }

    /// How many payload bytes the reply has.
    pub fn set_payload_len(&mut self, len: u32) {
        self.header[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(v)
}

fn setup_flags() -> IoringSetupFlags {
    IoringSetupFlags::SQE128 | IoringSetupFlags::SINGLE_ISSUER | IoringSetupFlags::DEFER_TASKRUN
}

/// Whether this process may make the rings `FuseQueue` uses (io_uring can
/// be disabled by sysctl or a seccomp filter, and old kernels lack the flags).
pub fn probe_ring() -> io::Result<()> {
    let mut params = io_uring_params::default();
    params.flags = setup_flags();
    // SAFETY: params is a valid, zeroed io_uring_params; the ring fd is
    // closed again at once.
    unsafe { io_uring_setup(2, &mut params) }.map(drop)?;
    Ok(())
}

impl FuseQueue {
    /// Makes queue `qid` of the connection on `dev` with `depth` entries of
    /// `payload_size` bytes, and registers them with the kernel.
    pub fn register(
        dev: Arc<OwnedFd>,
        qid: u16,
        depth: u16,
        payload_size: usize,
    ) -> io::Result<FuseQueue> {
        let mut params = io_uring_params::default();
        params.flags = setup_flags();
        // SAFETY: params is a valid, zeroed io_uring_params with only SQE128 set.
        let ring = unsafe { io_uring_setup(u32::from(depth).max(2), &mut params) }?;
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * 4;
        let cq_len = params.cq_off.cqes as usize + params.cq_entries as usize * CQE_SIZE;
        let sq = Map::new(&ring, sq_len, IORING_OFF_SQ_RING)?;
        let cq = Map::new(&ring, cq_len, IORING_OFF_CQ_RING)?;
        let sqes = Map::new(
            &ring,
            params.sq_entries as usize * SQE_SIZE,
            IORING_OFF_SQES,
        )?;
        // SAFETY: the offsets are the kernel's, within the mappings just made.
        let (sq_mask, cq_mask) = unsafe {
            (
                *sq.at::<u32>(params.sq_off.ring_mask),
                *cq.at::<u32>(params.cq_off.ring_mask),
            )
        };
        let mut q = FuseQueue {
            sq_tail: sq.at(params.sq_off.tail),
            sq_array: sq.at(params.sq_off.array),
            sq_mask,
            cq_head: cq.at(params.cq_off.head),
            cq_tail: cq.at(params.cq_off.tail),
            cq_mask,
            cqes_off: params.cq_off.cqes,
            _sq: sq,
            cq,
            sqes,
            dev,
            qid,
            ring,
            queued: 0,
            entries: Vec::new(),
            payload_size,
            early: Vec::new(),
        };
        for i in 0..depth {
            let header = leak_zeroed(HEADER_SIZE)?;
            let payload = leak_zeroed(payload_size)?;
            let iov =
                leak_zeroed(std::mem::size_of::<[libc::iovec; 2]>())?.cast::<[libc::iovec; 2]>();
            // SAFETY: `iov` is a fresh, suitably aligned allocation of this size.
            unsafe {
                iov.as_ptr().write([
                    libc::iovec {
                        iov_base: header.as_ptr().cast(),
                        iov_len: HEADER_SIZE,
                    },
                    libc::iovec {
                        iov_base: payload.as_ptr().cast(),
                        iov_len: payload_size,
                    },
                ]);
            }
            q.entries.push(Entry {
                header,
                payload,
                iov,
                ours: false,
            });
            q.push(FUSE_IO_URING_CMD_REGISTER, usize::from(i), 0);
        }
        Ok(q)
    }

    /// Writes one command for entry `i` into the submission queue.
    fn push(&mut self, cmd_op: u32, i: usize, commit_id: u64) {
        // SAFETY: only this thread produces submissions: the tail is ours
        // to read and advance; the slot at tail & mask is free because at
        // most one command per entry is outstanding and the ring has at
        // least as many slots as entries.
        unsafe {
            let tail = (*self.sq_tail).load(Ordering::Relaxed);
            let idx = tail & self.sq_mask;
            let sqe = self.sqes.at::<u8>(idx * SQE_SIZE as u32);
            std::ptr::write_bytes(sqe, 0, SQE_SIZE);
            let put = |off: usize, bytes: &[u8]| {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), sqe.add(off), bytes.len());
            };
            put(0, &[IoringOp::UringCmd as u8]);
            put(4, &self.dev.as_raw_fd().to_ne_bytes());
            put(8, &cmd_op.to_ne_bytes());
            if cmd_op == FUSE_IO_URING_CMD_REGISTER {
                let iov = self.entries[i].iov.as_ptr() as u64;
                put(16, &iov.to_ne_bytes());
                put(24, &2u32.to_ne_bytes());
            }
            put(32, &(i as u64).to_ne_bytes());
            // struct fuse_uring_cmd_req in the command area.
            put(48 + 8, &commit_id.to_ne_bytes());
            put(48 + 16, &self.qid.to_ne_bytes());
            *self.sq_array.add(idx as usize) = idx;
            (*self.sq_tail).store(tail.wrapping_add(1), Ordering::Release);
        }
        self.queued += 1;
    }

    /// Hands entry `i`'s reply (already written into it) to the kernel and
    /// asks it for the entry's next request. Sent with the next wait.
    pub fn commit(&mut self, i: usize) {
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        if !e.ours {
            return;
        }
        e.ours = false;
        // SAFETY: the entry is ours (completed, not yet committed): the
        // kernel does not touch its header now.
        let header = unsafe { std::slice::from_raw_parts(e.header.as_ptr(), HEADER_SIZE) };
        let mut id = [0; 8];
        id.copy_from_slice(&header[COMMIT_ID..COMMIT_ID + 8]);
        self.push(
            FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
            i,
            u64::from_ne_bytes(id),
        );
    }

    /// Submits the registration and returns whether the kernel refused it
    /// (a refusal completes at once; an entry that got a request is kept
    /// for `next_request`).
    pub fn submit(&mut self) -> io::Result<()> {
        // SAFETY: as in `next_request`.
        let n = unsafe { io_uring_enter(&self.ring, self.queued, 0, IoringEnterFlags::empty()) }?;
        self.queued -= n.min(self.queued);
        while let Some(done) = self.pop() {
            self.early.push(done?);
        }
        Ok(())
    }

    /// Submits what is queued and waits for an entry to hold a request;
    /// returns its index. An error ends the queue (ENOTCONN once the
    /// connection is gone).
    pub fn next_request(&mut self) -> io::Result<usize> {
        if let Some(i) = self.early.pop() {
            return Ok(i);
        }
        loop {
            if let Some(done) = self.pop() {
                return done;
            }
            // SAFETY: every queued submission is a complete command for an
            // entry whose buffers stay valid (see `Entry`).
            let r =
                unsafe { io_uring_enter(&self.ring, self.queued, 1, IoringEnterFlags::GETEVENTS) };
            match r {
                Ok(n) => self.queued -= n.min(self.queued),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn pop(&mut self) -> Option<io::Result<usize>> {
        // SAFETY: the completion ring is shared with the kernel: the tail is
        // read with acquire ordering before the entry it publishes, the head
        // is ours to advance after reading.
        let (user_data, res) = unsafe {
            let head = (*self.cq_head).load(Ordering::Relaxed);
            if head == (*self.cq_tail).load(Ordering::Acquire) {
                return None;
            }
            let off = self.cqes_off + (head & self.cq_mask) * CQE_SIZE as u32;
            let cqe = self.cq.at::<u8>(off);
            let user_data = std::ptr::read_unaligned(cqe.cast::<u64>());
            let res = std::ptr::read_unaligned(cqe.add(8).cast::<i32>());
            (*self.cq_head).store(head.wrapping_add(1), Ordering::Release);
            (user_data, res)
        };
        if res < 0 {
            return Some(Err(io::Error::from_raw_os_error(-res)));
        }
        let i = user_data as usize;
        match self.entries.get_mut(i) {
            Some(e) => {
                e.ours = true;
                Some(Ok(i))
            }
            None => Some(Err(io::Error::other("completion for an unknown entry"))),
        }
    }

    /// The request entry `i` holds, while it is ours.
    pub fn slot(&mut self, i: usize) -> Option<Slot<'_>> {
        let e = self.entries.get_mut(i)?;
        if !e.ours {
            return None;
        }
        // SAFETY: the entry is ours until `commit`: the kernel neither reads
        // nor writes its buffers meanwhile, and the &mut self borrow keeps
        // these the only references.
        unsafe {
            Some(Slot {
                header: &mut *e.header.as_ptr().cast::<[u8; HEADER_SIZE]>(),
                payload: std::slice::from_raw_parts_mut(e.payload.as_ptr(), self.payload_size),
            })
        }
    }

    /// The connection's device.
    pub fn dev(&self) -> &Arc<OwnedFd> {
        &self.dev
    }
}

/// A file the kernel reads and writes itself for opens answered with its
/// number; the registration ends when this is dropped.
#[derive(Debug)]
pub struct FuseBacking {
    dev: Arc<OwnedFd>,
    id: u32,
}

/// `_IOW(229, 1, struct fuse_backing_map)` and `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

#[repr(C)]
struct FuseBackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

impl FuseBacking {
    pub fn open(dev: &Arc<OwnedFd>, file: std::os::fd::BorrowedFd<'_>) -> io::Result<FuseBacking> {
        let map = FuseBackingMap {
            fd: file.as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: the ioctl reads one fuse_backing_map from the pointer,
        // which is valid for the call.
        let id = unsafe { libc::ioctl(dev.as_fd().as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, &map) };
        if id < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FuseBacking {
            dev: dev.clone(),
            id: id as u32,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for FuseBacking {
    fn drop(&mut self) {
        // SAFETY: the ioctl reads one u32 from the pointer, valid for the call.
        let r = unsafe {
            libc::ioctl(
                self.dev.as_fd().as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE,
                &self.id,
            )
        };
        if r < 0 {
            tracing::debug!(id = self.id, error = %io::Error::last_os_error(), "closing a backing file");
        }
    }
}
