//! Open files: reads, writes, seeks, syncs, and symlink targets.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use rustix::fs::{FallocateFlags, OFlags, SeekFrom};

use super::Union;
use super::attr::Kind;
use super::error::{Error, Result};
use super::inode::{Node, NodeBody};
use crate::layer;

/// An open file: the real fd, in a lower or the upper layer.
#[derive(Debug)]
pub struct OpenFile {
    fd: RwLock<Arc<OwnedFd>>,
    /// For a read-only open of a lower file: its node, followed into the upper
    /// layer once copied up. The kernel keeps one page cache per inode, so
    /// reads through the old lower fd would fill it with stale data.
    follow: Mutex<Option<Arc<Node>>>,
}

impl OpenFile {
    pub fn new(fd: OwnedFd) -> Self {
        OpenFile {
            fd: RwLock::new(Arc::new(fd)),
            follow: Mutex::new(None),
        }
    }

    fn following(fd: OwnedFd, node: Arc<Node>) -> Self {
        OpenFile {
            fd: RwLock::new(Arc::new(fd)),
            follow: Mutex::new(Some(node)),
        }
    }

    /// The fd to use now.
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        let mut follow = self.follow.lock();
        let upper = match follow.as_ref().map(|n| n.state().body.clone()) {
            Some(NodeBody::Upper { fd, data: None }) => Some(fd),
            _ => None,
        };
        if let Some(fd) = upper {
            *self.fd.write() = Arc::new(layer::reopen(fd.as_fd(), OFlags::RDONLY)?);
            *follow = None;
        }
        drop(follow);
        Ok(self.fd.read().clone())
    }
}

/// Whether open(2) flags ask to change the file.
fn wants_write(flags: i32) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// The open flags passed on to the real file.
fn real_flags(flags: i32) -> OFlags {
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC;
    OFlags::from_bits_retain((flags & keep) as u32)
}

impl Union {
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        if node.is_dir() {
            return Err(Error::IsDir);
        }
        let file = if wants_write(flags) {
            self.check_writable()?;
            // O_TRUNC throws the data away: copy up the rest only.
            let fd = self.copy_up_leaf(&node, flags & libc::O_TRUNC == 0)?;
            let fd = layer::reopen(fd.as_fd(), real_flags(flags))?;
            node.forget_xattrs_for_write();
            OpenFile::new(fd)
        } else {
            self.resolve_lower_data(&node)?;
            let (body, lower) = {
                let state = node.state();
                let lower = state
                    .lower_file()
                    .map(|(layer, dir, name)| (layer, dir.clone(), name.to_owned()));
                (state.body.clone(), lower)
            };
            match body {
                NodeBody::Lower { data: Some(d), .. } if self.is_writable() => OpenFile::following(
                    self.open_lower(d.layer, d.dir.as_fd(), &d.name)?,
                    node.clone(),
                ),
                NodeBody::Lower { data: Some(d), .. } => {
                    OpenFile::new(self.open_lower(d.layer, d.dir.as_fd(), &d.name)?)
                }
                NodeBody::Lower { .. } => {
                    let (layer, dir, name) = lower.ok_or(Error::NotFound)?;
                    let fd = self.open_lower(layer, dir.as_fd(), &name)?;
                    if self.is_writable() {
                        OpenFile::following(fd, node.clone())
                    } else {
                        OpenFile::new(fd)
                    }
                }
                NodeBody::Upper { data: Some(d), .. } => OpenFile::following(
                    self.open_lower(d.layer, d.dir.as_fd(), &d.name)?,
                    node.clone(),
                ),
                NodeBody::Upper { fd, .. } => {
                    OpenFile::new(layer::reopen(fd.as_fd(), real_flags(flags))?)
                }
                NodeBody::Dir { .. } => return Err(Error::IsDir),
            }
        };
        Ok(self.files.insert(file))
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = self.files.get(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(file.fd()?.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes all of `data` at `offset` (at the end for O_APPEND files).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let fd = self.files.get(fh)?.fd()?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) if done > 0 => {
                    tracing::debug!(error = %e, "short write");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if done >= STREAM_WRITE {
            stream_to_disk(fd.as_fd(), offset, done as u64);
        }
        Ok(u32::try_from(done).unwrap_or(u32::MAX))
    }

    /// Whether some file is open through the mount.
    pub fn has_open_files(&self) -> bool {
        !self.files.is_empty()
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(fh);
    }

    /// Clears setuid/setgid of the file behind `fh`, as a write or
    /// truncation by a caller without CAP_FSETID does; `in_group` tells
    /// whether the caller is in a group (as the mount shows it).
    pub fn drop_setid(&self, fh: u64, in_group: impl Fn(u32) -> bool) -> Result<()> {
        let file = self.files.get(fh)?;
        self.drop_setid_of(file.fd()?.as_fd(), in_group)
    }

    pub(crate) fn drop_setid_of(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        in_group: impl Fn(u32) -> bool,
    ) -> Result<()> {
        layer::drop_setid(fd, |disk| in_group(self.view.gid_map.to_shown(disk)))?;
        Ok(())
    }

    /// The real file behind handle `fh` for the kernel to use directly, and
    /// whether it is a lower one: a file that stays the handle's for its
    /// whole life, or (`lower_too`) the lower file a read-only handle reads
    /// until a copy-up, which the kernel then keeps reading for the handle,
    /// as the kernel's overlayfs does for files opened before a copy-up (the
    /// daemon would follow the copy). `None` for other handles.
    pub fn backing_fd(&self, fh: u64, lower_too: bool) -> Result<Option<(Arc<OwnedFd>, bool)>> {
        let file = self.files.get(fh)?;
        let fd = file.fd()?;
        let lower = file.follow.lock().is_some();
        Ok((!lower || lower_too).then_some((fd, lower)))
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let file = self.files.get(fh)?;
        // A volatile mount (`fsync=0`) promises no durability: skip it, as
        // kernel overlayfs does with `volatile`.
        if self.upper.as_ref().is_some_and(|u| u.volatile()) {
            return Ok(());
        }
        if datasync {
            rustix::fs::fdatasync(file.fd()?.as_fd())?;
        } else {
            rustix::fs::fsync(file.fd()?.as_fd())?;
        }
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let file = self.files.get(fh)?;
        let flags = FallocateFlags::from_bits_retain(mode as u32);
        rustix::fs::fallocate(file.fd()?.as_fd(), flags, offset, len)?;
        Ok(())
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        mut off_in: u64,
        fh_out: u64,
        mut off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let src = self.files.get(fh_in)?;
        let dst = self.files.get(fh_out)?;
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize);
        let n = rustix::fs::copy_file_range(
            src.fd()?.as_fd(),
            Some(&mut off_in),
            dst.fd()?.as_fd(),
            Some(&mut off_out),
            len,
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// lseek for SEEK_DATA / SEEK_HOLE (and the plain whences, for completeness).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let file = self.files.get(fh)?;
        let pos = |o: i64| u64::try_from(o).map_err(|_| Error::Io(einval()));
        let from = match whence {
            libc::SEEK_SET => SeekFrom::Start(pos(offset)?),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            libc::SEEK_DATA => SeekFrom::Data(pos(offset)?),
            libc::SEEK_HOLE => SeekFrom::Hole(pos(offset)?),
            _ => return Err(Error::Io(einval())),
        };
        let at = rustix::fs::seek(file.fd()?.as_fd(), from)?;
        i64::try_from(at).map_err(|_| Error::Io(einval()))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let state = node.state();
        if state.kind() != Kind::Symlink {
            return Err(Error::NotSymlink);
        }
        let target = match &state.body {
            NodeBody::Lower { dir, .. } => {
                rustix::fs::readlinkat(dir.as_fd(), state.lower_name(), Vec::new())?
            }
            NodeBody::Upper { fd, .. } => rustix::fs::readlinkat(fd.as_fd(), c"", Vec::new())?,
            NodeBody::Dir { .. } => return Err(Error::NotSymlink),
        };
        Ok(target.into_bytes())
    }
}

fn einval() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EINVAL)
}

/// Writes this large come from the kernel's writeback cache flushing a
/// stream of contiguous pages (a file being written out).
const STREAM_WRITE: usize = 512 * 1024;

/// Starts the disk write of a large write that ended at the end of the file
/// (a file being written out, not rewritten in place): the data would
/// otherwise wait in the page cache until the writer's fsync, and be written
/// then, after the transfer through the daemon instead of during it.
fn stream_to_disk(fd: std::os::fd::BorrowedFd<'_>, offset: u64, len: u64) {
    let at_end = rustix::fs::fstat(fd).is_ok_and(|st| st.st_size as u64 == offset + len);
    if at_end && let Err(e) = crate::sys::start_writeback(fd, offset, len) {
        tracing::debug!(error = %e, "cannot start writeback");
    }
}
