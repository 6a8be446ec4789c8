//! Open files, reads, seeks and symlinks of a read-only union.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::SeekFrom;

use super::Union;
use super::attr::Kind;
use super::error::{Error, Result};
use super::inode::NodeBody;
use crate::layer;

/// Whether open(2) flags ask for anything a read-only file cannot give.
fn wants_write(flags: i32) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Union {
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        if wants_write(flags) {
            return Err(Error::ReadOnly);
        }
        let NodeBody::Leaf { dir, name, .. } = &node.body else {
            return Err(Error::IsDir);
        };
        let fd = layer::open_file(dir.as_fd(), name)?;
        Ok(self.files.insert(fd))
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let fd = self.files.get(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(fd.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(fh);
    }

    /// lseek for SEEK_DATA / SEEK_HOLE (and the plain whences, for completeness).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let fd = self.files.get(fh)?;
        let pos = |o: i64| u64::try_from(o).map_err(|_| Error::Io(einval()));
        let from = match whence {
            libc::SEEK_SET => SeekFrom::Start(pos(offset)?),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            libc::SEEK_DATA => SeekFrom::Data(pos(offset)?),
            libc::SEEK_HOLE => SeekFrom::Hole(pos(offset)?),
            _ => return Err(Error::Io(einval())),
        };
        let at = rustix::fs::seek(fd.as_fd(), from)?;
        i64::try_from(at).map_err(|_| Error::Io(einval()))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        match &node.body {
            NodeBody::Leaf { dir, name, .. } if node.attr.kind == Kind::Symlink => {
                let target = rustix::fs::readlinkat(dir.as_fd(), name.as_c_str(), Vec::new())?;
                Ok(target.into_bytes())
            }
            _ => Err(Error::NotSymlink),
        }
    }
}

fn einval() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EINVAL)
}

/// Keeps the type of open files explicit for the handle table.
pub type OpenFile = OwnedFd;
