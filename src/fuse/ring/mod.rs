//! FUSE over io_uring: one queue per CPU, each served by threads pinned to
//! that CPU. The kernel puts a request on the queue of the CPU its caller
//! runs on; the reply and the wait for the next request are one system
//! call, and the caller is woken on its own CPU. A round trip costs about a
//! third of one through /dev/fuse (docs/performance.md).
//!
//! fuser still reads /dev/fuse: the handshake, FORGETs and INTERRUPTs (the
//! kernel never puts those on the rings), and every request until all
//! queues are registered.

mod abi;
mod reply;

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc;

use fuser::{Errno, SessionACL, TimeOrNow};
use rustix::thread::CpuSet;

use super::StrataFs;
use super::ops::SetAttrArgs;
use super::reply::{Ctx, EmptyReply, Reply};
use crate::sys::{FuseQueue, Slot};
use abi::{InHeader, names, u32_at, u64_at};
use reply::{RingReply, WriteOutcome};

/// Threads per CPU queue, each with one entry: a request that takes long
/// (a copy-up of a big file) occupies one, and the kernel hands the CPU's
/// next requests to the others. A thread with a second entry would hold a
/// request there while busy.
const MIN_THREADS_PER_QUEUE: usize = 2;
/// Where the operation's own header starts in an entry's header area.
const OP_IN: usize = 128;

/// The largest request or reply body: fuser's largest max_write (the
/// kernel wants room for max_write and for max_pages pages). Untouched
/// pages of it cost no memory.
const PAYLOAD: usize = 16 * 1024 * 1024;

/// What serving through io_uring needs, checked before the kernel is asked
/// for it: once agreed, the kernel holds every request until all queues are
/// registered, so a mount that cannot register them would hang.
pub fn available() -> io::Result<()> {
    possible_cpus()?;
    crate::sys::probe_ring()
}

/// The queue threads of a mount, which end with its connection.
#[derive(Debug)]
pub struct Rings {
    ended: mpsc::Receiver<()>,
    threads: usize,
}

impl Rings {
    /// Waits (up to `limit`) for the queue threads to end, as they do once
    /// the connection is gone: each holds the file system, whose last
    /// reference tidies the upper layer's work directory when dropped.
    pub fn wait(self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        for _ in 0..self.threads {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.ended.recv_timeout(left).is_err() {
                tracing::warn!("io_uring queue threads still running at exit");
                return;
            }
        }
    }
}

/// Tells `Rings::wait` that its thread ended, however it ends.
struct Ended(mpsc::Sender<()>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Registers a queue for every possible CPU on the connection `dev` and
/// serves them with about `threads` threads in all; returns once all are
/// registered (from then on the kernel sends requests there), or the first
/// error.
pub fn start(
    fs: Arc<StrataFs>,
    dev: OwnedFd,
    acl: SessionACL,
    threads: usize,
) -> io::Result<Rings> {
    let cpus = possible_cpus()?;
    let per_queue = threads
        .div_ceil(usize::from(cpus))
        .max(MIN_THREADS_PER_QUEUE);
    let gate = Gate {
        acl,
        owner: rustix::process::geteuid().as_raw(),
    };
    let dev = Arc::new(dev);
    fs.passthrough.use_ring();
    let (tx, rx) = mpsc::channel();
    let (ended_tx, ended) = mpsc::channel();
    let workers = (0..cpus).flat_map(|cpu| (0..per_queue).map(move |k| (cpu, k)));
    for (cpu, k) in workers.clone() {
        let (fs, dev, tx) = (fs.clone(), dev.clone(), tx.clone());
        let ended = Ended(ended_tx.clone());
        std::thread::Builder::new()
            .name(format!("ring-{cpu}.{k}"))
            .spawn(move || {
                // Dropped in reverse: the file system before the signal.
                let _ended = ended;
                let fs = fs;
                pin(cpu);
                let queue = FuseQueue::register(dev, cpu, 1, PAYLOAD)
                    .and_then(|mut q| q.submit().map(|()| q));
                match queue {
                    Ok(q) => {
                        let _ = tx.send(Ok(()));
                        serve(&fs, q, gate);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
    }
    drop(tx);
    let threads = workers.clone().count();
    for _ in workers {
        match rx.recv() {
            Ok(Ok(())) => {}
            // Unmounted before the queues were up (a mount used and let go
            // at once): not a failure; the session ends and so do the threads.
            Ok(Err(e)) if connection_ended(&e) || device_gone(&dev) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a ring thread ended")),
        }
    }
    tracing::debug!(queues = cpus, per_queue, "serving through io_uring");
    Ok(Rings { ended, threads })
}

/// The kernel makes one queue per possible CPU and uses the rings only
/// once every one of them has an entry registered.
fn possible_cpus() -> io::Result<u16> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| io::Error::new(e.kind(), format!("/sys/devices/system/cpu/possible: {e}")))?;
    let last = list
        .trim()
        .rsplit([',', '-'])
        .next()
        .and_then(|n| n.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("cannot read possible CPUs from {list:?}")))?;
    Ok(last + 1)
}

/// A queue thread waits and answers on its queue's CPU, where the caller
/// that woke it sleeps. (A big directory's listing, whose stats two threads
/// share, runs untied from its first shared batch, `sys::unpinned`: a cold
/// `ls -f` of 100k entries took 1.25 s with both halves on one CPU, 0.9 s
/// on two. Untying the queue thread for every directory read instead cost
/// two system calls per read, a tenth of a cold `find`'s daemon time.)
fn pin(cpu: u16) {
    let mut own = CpuSet::new();
    own.set(usize::from(cpu));
    if let Err(e) = rustix::thread::sched_setaffinity(None, &own) {
        // An offline CPU: its queue is served from anywhere.
        tracing::debug!(error = %e, "ring thread not pinned");
    }
}

/// Who may use the mount, as fuser enforces it for /dev/fuse: with
/// `allow_root` or without `allow_other` the kernel lets everyone in and the
/// daemon refuses the others.
#[derive(Clone, Copy)]
struct Gate {
    acl: SessionACL,
    owner: u32,
}

impl Gate {
    fn admits(&self, uid: u32, opcode: u32) -> bool {
        let allowed = match self.acl {
            SessionACL::All => true,
            SessionACL::RootAndOwner => uid == self.owner || uid == 0,
            SessionACL::Owner => uid == self.owner,
        };
        // What the kernel sends on its own behalf (writeback, release,
        // readahead) carries no caller to check; fuser lets these through too.
        allowed
            || matches!(
                opcode,
                abi::READ
                    | abi::READDIR
                    | abi::READDIRPLUS
                    | abi::WRITE
                    | abi::FSYNC
                    | abi::FSYNCDIR
                    | abi::RELEASE
                    | abi::RELEASEDIR
                    | abi::FORGET
                    | abi::BATCH_FORGET
            )
    }
}

/// The connection ended (unmount): ENOTCONN, or the commands cancelled as
/// the ring goes.
fn connection_ended(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN | libc::ECANCELED | libc::ENODEV)
    )
}

/// Whether the connection behind `dev` is gone (unmounted or aborted): its
/// /dev/fuse then polls as an error. Asked only when a queue command failed,
/// whose error code an ending connection does not always make ENOTCONN.
fn device_gone(dev: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(dev, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&zero)).is_ok() && fds[0].revents().contains(PollFlags::ERR)
}

fn serve(fs: &StrataFs, mut q: FuseQueue, gate: Gate) {
    let dev = q.dev().clone();
    let mut scratch = Vec::new();
    loop {
        let i = match q.next_request() {
            Ok(i) => i,
            Err(e) if connection_ended(&e) || device_gone(&dev) => return,
            Err(e) => {
                // The kernel refused a reply (EOPNOTSUPP once fuse.enable_uring
                // is turned off): the request it carried, and every later one
                // queued on this CPU, would wait forever. Ending the daemon
                // ends the connection, and with it those waits (ENOTCONN).
                tracing::error!(error = %e, "io_uring queue failed; ending the daemon");
                std::process::exit(1);
            }
        };
        if let Some(mut slot) = q.slot(i) {
            dispatch(fs, &dev, &mut slot, &mut scratch, gate);
        }
        q.commit(i);
    }
}

/// Answers the request in `slot`, whatever happens: an operation that did
/// not reply gets EIO.
fn dispatch(
    fs: &StrataFs,
    dev: &Arc<OwnedFd>,
    slot: &mut Slot<'_>,
    scratch: &mut Vec<u8>,
    gate: Gate,
) {
    let h = InHeader::parse(&slot.header[..]);
    let op_in: [u8; 128] = {
        let mut b = [0; 128];
        b.copy_from_slice(&slot.header[OP_IN..OP_IN + 128]);
        b
    };
    let len = slot.payload_len().min(slot.payload.len());
    let ctx = Ctx {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    };
    let mut sent = false;
    if !gate.admits(h.uid, h.opcode) {
        RingReply::new(slot, h.unique, dev, 0, &mut sent).error(Errno::EACCES);
        return;
    }
    if h.opcode == abi::WRITE {
        // The data is read where the kernel put it; the answer (a size) is
        // written there after.
        let size = (u32_at(&op_in, 16) as usize).min(len);
        let kill = u32_at(&op_in, 20) & abi::FUSE_WRITE_KILL_SUIDGID != 0;
        let mut outcome = WriteOutcome::default();
        let (fh, offset) = (u64_at(&op_in, 0), u64_at(&op_in, 8));
        fs.do_write(&ctx, fh, offset, &slot.payload[..size], kill, &mut outcome);
        outcome.send(RingReply::new(slot, h.unique, dev, 0, &mut sent));
        return;
    }
    // The reply is written where the request's names are: they are read
    // from a copy (a thread's own buffer, reused; a few bytes but for
    // setxattr values).
    scratch.clear();
    scratch.extend_from_slice(&slot.payload[..len]);
    let payload = &scratch[..];
    let limit = match h.opcode {
        abi::READDIR | abi::READDIRPLUS => u32_at(&op_in, 16) as usize,
        _ => usize::MAX,
    };
    let reply = RingReply::new(slot, h.unique, dev, limit, &mut sent);
    op(fs, &ctx, &h, &op_in, payload, reply);
    if !sent {
        let reply = RingReply::new(slot, h.unique, dev, usize::MAX, &mut sent);
        reply.error(Errno::EIO);
    }
}

fn time(sec: u64, nsec: u32, now: bool) -> TimeOrNow {
    if now {
        return TimeOrNow::Now;
    }
    let sec = sec as i64;
    TimeOrNow::SpecificTime(super::convert::system_time(crate::union::Time {
        sec,
        nsec,
    }))
}

fn op(fs: &StrataFs, ctx: &Ctx, h: &InHeader, o: &[u8], payload: &[u8], r: RingReply<'_, '_>) {
    let ino = h.nodeid;
    let mut strs = names(payload);
    let mut name = || strs.next().unwrap_or(OsStr::new(""));
    match h.opcode {
        abi::LOOKUP => fs.do_lookup(ctx.pid, ino, name(), r),
        abi::GETATTR => fs.do_getattr(ctx.pid, ino, r),
        abi::SETATTR => {
            let valid = u32_at(o, 0);
            let has = |bit| valid & bit != 0;
            let args = SetAttrArgs {
                mode: has(abi::FATTR_MODE).then(|| u32_at(o, 68)),
                uid: has(abi::FATTR_UID).then(|| u32_at(o, 76)),
                gid: has(abi::FATTR_GID).then(|| u32_at(o, 80)),
                size: has(abi::FATTR_SIZE).then(|| u64_at(o, 16)),
                atime: has(abi::FATTR_ATIME)
                    .then(|| time(u64_at(o, 32), u32_at(o, 56), has(abi::FATTR_ATIME_NOW))),
                mtime: has(abi::FATTR_MTIME)
                    .then(|| time(u64_at(o, 40), u32_at(o, 60), has(abi::FATTR_MTIME_NOW))),
                fh: has(abi::FATTR_FH).then(|| u64_at(o, 8)),
            };
            fs.do_setattr(ctx, ino, args, r)
        }
        abi::READLINK => fs.do_readlink(ctx.pid, ino, r),
        abi::SYMLINK => {
            let link = name();
            fs.do_symlink(ctx, ino, link, name(), r)
        }
        abi::MKNOD => fs.do_mknod(
            ctx,
            ino,
            name(),
            u32_at(o, 0),
            u32_at(o, 8),
            u32_at(o, 4),
            r,
        ),
        abi::MKDIR => fs.do_mkdir(ctx, ino, name(), u32_at(o, 0), u32_at(o, 4), r),
        abi::UNLINK => fs.do_unlink(ctx.pid, ino, name(), r),
        abi::RMDIR => fs.do_rmdir(ino, name(), r),
        abi::RENAME | abi::RENAME2 => {
            let flags = if h.opcode == abi::RENAME2 {
                u32_at(o, 8)
            } else {
                0
            };
            let old = name();
            fs.do_rename(ino, old, u64_at(o, 0), name(), flags, r)
        }
        abi::LINK => fs.do_link(u64_at(o, 0), ino, name(), r),
        abi::OPEN => fs.do_open(ctx, ino, u32_at(o, 0) as i32, r),
        abi::READ => fs.do_read(u64_at(o, 0), u64_at(o, 8), u32_at(o, 16), r),
        abi::STATFS => fs.do_statfs(r),
        abi::RELEASE => fs.do_release(u64_at(o, 0), r),
        abi::FSYNC => fs.do_fsync(u64_at(o, 0), u32_at(o, 8) & 1 != 0, r),
        abi::SETXATTR => {
            let size = u32_at(o, 0) as usize;
            let flags = u32_at(o, 4) as i32;
            let key = name();
            let at = key.len() + 1;
            let value = payload.get(at..at + size);
            match value {
                Some(value) => fs.do_setxattr(ino, key, value, flags, r),
                None => r.error(Errno::EINVAL),
            }
        }
        abi::GETXATTR => fs.do_getxattr(ctx.pid, ino, name(), u32_at(o, 0), r),
        abi::LISTXATTR => fs.do_listxattr(ino, u32_at(o, 0), r),
        abi::REMOVEXATTR => fs.do_removexattr(ino, name(), r),
        abi::FLUSH => fs.do_flush(r),
        abi::OPENDIR => fs.do_opendir(ino, r),
        abi::READDIR => fs.do_readdir(ino, u64_at(o, 8), r),
        abi::READDIRPLUS => fs.do_readdirplus(ctx.pid, ino, u64_at(o, 8), r),
        abi::RELEASEDIR => EmptyReply::ok(r),
        abi::FSYNCDIR => fs.do_fsyncdir(ino, r),
        abi::ACCESS => fs.do_access(ino, u32_at(o, 0) & libc::W_OK as u32 != 0, r),
        abi::CREATE => fs.do_create(
            ctx,
            ino,
            name(),
            u32_at(o, 4),
            u32_at(o, 8),
            u32_at(o, 0) as i32,
            r,
        ),
        abi::FALLOCATE => fs.do_fallocate(
            u64_at(o, 0),
            u64_at(o, 8),
            u64_at(o, 16),
            u32_at(o, 24) as i32,
            r,
        ),
        abi::LSEEK => fs.do_lseek(u64_at(o, 0), u64_at(o, 8) as i64, u32_at(o, 16) as i32, r),
        abi::COPY_FILE_RANGE => fs.do_copy_file_range(
            u64_at(o, 0),
            u64_at(o, 8),
            u64_at(o, 24),
            u64_at(o, 32),
            u64_at(o, 40),
            r,
        ),
        // Never put on a ring (the kernel sends them through /dev/fuse),
        // and they take no reply there; answered here all the same so
        // the entry returns to the kernel.
        abi::FORGET | abi::BATCH_FORGET => r.error(Errno::ENOSYS),
        // What fuser answers for operations this file system does not have.
        _ => r.error(Errno::ENOSYS),
    }
}
