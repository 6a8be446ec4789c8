//! Copying an entry's data and metadata, for copy-up.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, SeekFrom, Timestamps};

use super::LayerError;
use crate::sys::{getxattr_at, listxattr_at};

fn io(e: rustix::io::Errno) -> LayerError {
    LayerError::Io(e.into())
}

/// Copies `len` bytes of `src` into the empty file `dst`: a reflink when the
/// filesystem can, else only the data extents (holes stay holes). A `dense`
/// source (its blocks cover its size, so holes are not worth looking for) is
/// copied whole.
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    dense: bool,
) -> Result<(), LayerError> {
    if len == 0 {
        return Ok(());
    }
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    if dense {
        // Short only if the source shrank: the size is still the one promised.
        if copy_range(src, dst, 0, len)? < len {
            rustix::fs::ftruncate(dst, len).map_err(io)?;
        }
        return Ok(());
    }
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA support: treat the whole rest as data.
            Err(rustix::io::Errno::INVAL) => pos,
            Err(e) => return Err(io(e)),
        };
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        copy_range(src, dst, data, hole)?;
        pos = hole;
    }
    // A trailing hole has no extent to copy; the size says where the file ends.
    rustix::fs::ftruncate(dst, len).map_err(io)
}

/// Copies bytes `start..end` of `src` to the same offsets of `dst`: in the
/// kernel with copy_file_range, else (across filesystems) through a buffer.
/// Returns where it stopped: `end`, or sooner at the end of `src`.
fn copy_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> Result<u64, LayerError> {
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        let chunk = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
            Ok(0) => return Ok(off_in),
            Ok(_) => {}
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::NOSYS,
            ) => return copy_buffered(src, dst, off_in, end),
            Err(e) => return Err(io(e)),
        }
    }
    Ok(off_in)
}

fn copy_buffered(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> Result<u64, LayerError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = start;
    while pos < end {
        let want = usize::try_from(end - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match rustix::io::pread(src, &mut buf[..want], pos) {
            Ok(0) => return Ok(pos),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io(e)),
        };
        let mut done = 0;
        while done < n {
            match rustix::io::pwrite(dst, &buf[done..n], pos + done as u64) {
                Ok(w) => done += w,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io(e)),
            }
        }
        pos += n as u64;
    }
    Ok(pos)
}

/// Copies the xattrs of `name` in `dir` that `keep` accepts onto the inode
/// at `dst_path` (a `/proc/self/fd/N` path, followed). Returns the copied
/// names (NUL-terminated, the `listxattr` form) if every accepted one was
/// copied, `None` if some could not be.
pub fn copy_xattrs(
    dir: BorrowedFd<'_>,
    name: &CStr,
    dst_path: &CStr,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Option<Vec<u8>>, LayerError> {
    let size = match listxattr_at(dir, name, &mut []) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Some(Vec::new())),
        Err(e) => return Err(e.into()),
    };
    if size == 0 {
        return Ok(Some(Vec::new()));
    }
    let mut list = vec![0u8; size];
    let n = listxattr_at(dir, name, &mut list)?;
    list.truncate(n);
    let mut copied = Some(Vec::new());
    for attr in list.split(|b| *b == 0).filter(|a| !a.is_empty()) {
        if !keep(attr) {
            continue;
        }
        let Ok(attr) = std::ffi::CString::new(attr) else {
            copied = None;
            continue;
        };
        let size = getxattr_at(dir, name, &attr, &mut [])?;
        let mut value = vec![0u8; size];
        let n = getxattr_at(dir, name, &attr, &mut value)?;
        value.truncate(n);
        match rustix::fs::setxattr(
            dst_path,
            attr.as_c_str(),
            &value,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {
                if let Some(names) = &mut copied {
                    names.extend_from_slice(attr.as_bytes_with_nul());
                }
            }
            // trusted.* and security.capability need privileges a rootless
            // daemon lacks; user.* never does. Kernel overlayfs in a user
            // namespace cannot copy those either.
            Err(rustix::io::Errno::PERM) if !attr.as_bytes().starts_with(b"user.") => {
                tracing::debug!(?attr, "xattr not copied: no privilege");
                copied = None;
            }
            Err(e) => return Err(io(e)),
        }
    }
    Ok(copied)
}

/// Sets the owner of `name` in `dir` (never following a symlink; an empty
/// `name`: the file `dir` itself). Comes
/// first: chown clears setuid bits and file capabilities. Returns false when
/// the daemon may not give that owner (rootless, or an id unmapped in its
/// user namespace): the copy then keeps the daemon's ownership, which is all
/// a rootless overlay can do without `xattr_permissions`.
pub fn copy_owner(
    dir: BorrowedFd<'_>,
    name: &CStr,
    st: &rustix::fs::Stat,
) -> Result<bool, LayerError> {
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    match rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
        flags,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::PERM | rustix::io::Errno::INVAL) => {
            tracing::debug!(
                uid = st.st_uid,
                gid = st.st_gid,
                "cannot set the owner of a copy"
            );
            Ok(false)
        }
        Err(e) => Err(io(e)),
    }
}

/// Sets mode (with setuid bits) and times of `name` in `dir` (an empty
/// `name`: the open file `dir` itself), last.
pub fn copy_mode_times(
    dir: BorrowedFd<'_>,
    name: &CStr,
    st: &rustix::fs::Stat,
) -> Result<(), LayerError> {
    if name.is_empty() {
        rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(io)?;
        return rustix::fs::futimens(dir, &times_of(st)).map_err(io);
    }
    let is_link = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink;
    if !is_link {
        rustix::fs::chmodat(
            dir,
            name,
            rustix::fs::Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(io)?;
    }
    rustix::fs::utimensat(dir, name, &times_of(st), AtFlags::SYMLINK_NOFOLLOW).map_err(io)
}

fn times_of(st: &rustix::fs::Stat) -> Timestamps {
    Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Puts back the atime and mtime of the directory behind O_PATH fd `dir`:
/// a copy-up landing in it is no change a user made.
pub fn restore_dir_times(dir: BorrowedFd<'_>, st: &rustix::fs::Stat) -> Result<(), LayerError> {
    let path = super::proc_fd_path(dir);
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path.as_c_str(),
        &times_of(st),
        AtFlags::empty(),
    )
    .map_err(io)
}
