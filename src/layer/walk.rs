//! fd-relative access beneath a layer directory. Names come from FUSE and are
//! single components; the resolve flags make sure that even a hostile name or
//! symlink cannot take the daemon outside the directory it starts from.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};

use super::LayerError;

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS
}

/// lstat of `name` in `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<Stat, LayerError> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| LayerError::Io(e.into()))
}

/// stat of an fd (which may be an O_PATH fd).
pub fn stat_self(fd: BorrowedFd<'_>) -> Result<Stat, LayerError> {
    rustix::fs::fstat(fd).map_err(|e| LayerError::Io(e.into()))
}

/// Opens subdirectory `name` of `dir` as an O_PATH handle, never through a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, LayerError> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        beneath(),
    )
    .map_err(|e| LayerError::Io(e.into()))
}

/// Opens regular file `name` of `dir` read-only, never through a symlink.
pub fn open_file(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, LayerError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    // O_NOATIME keeps reads from touching lower layers; it needs ownership or
    // CAP_FOWNER, so retry without it when refused.
    match rustix::fs::openat2(dir, name, flags | OFlags::NOATIME, Mode::empty(), beneath()) {
        Err(rustix::io::Errno::PERM) => {
            rustix::fs::openat2(dir, name, flags, Mode::empty(), beneath())
        }
        other => other,
    }
    .map_err(|e| LayerError::Io(e.into()))
}

/// Reads all entries of the directory `dir` (an O_PATH handle is fine),
/// calling `f(name, d_type, d_ino)` for each except `.` and `..`.
pub fn read_dir(
    dir: BorrowedFd<'_>,
    mut f: impl FnMut(&CStr, rustix::fs::FileType, u64) -> Result<(), LayerError>,
) -> Result<(), LayerError> {
    let fd = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::Io(e.into()))?;
    // (Given the fd it reads: `read_from` would open the directory again.)
    let mut entries = rustix::fs::Dir::new(fd).map_err(|e| LayerError::Io(e.into()))?;
    for entry in &mut entries {
        let entry = entry.map_err(|e| LayerError::Io(e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        f(name, entry.file_type(), entry.ino())?;
    }
    Ok(())
}

pub use crate::sys::proc_fd_path;

/// Clears setuid, and setgid where it means "set group on exec" (group
/// execute set) or the writer is not in the file's group (`in_group` of the
/// file's gid), as a write or truncation by an unprivileged caller does.
/// Works on O_PATH handles too.
pub fn drop_setid(fd: BorrowedFd<'_>, in_group: impl Fn(u32) -> bool) -> Result<(), LayerError> {
    let st = stat_self(fd)?;
    let mode = st.st_mode;
    let mut kept = mode & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group(st.st_gid)) {
        kept &= !libc::S_ISGID;
    }
    if kept == mode {
        return Ok(());
    }
    crate::sys::chmod_fd(fd, kept).map_err(LayerError::Io)
}

/// Opens an O_PATH handle on `name` in `dir` itself (never a symlink's target).
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, LayerError> {
    rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        beneath(),
    )
    .map_err(|e| LayerError::Io(e.into()))
}

/// Opens the inode behind an O_PATH handle with real access `flags`.
pub fn reopen(opath: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd, LayerError> {
    let path = proc_fd_path(opath);
    rustix::fs::open(
        path.as_c_str(),
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| LayerError::Io(e.into()))
}

/// Removes `name` from `dir`, recursively if it is a directory, without
/// following symlinks; directories are made writable first where needed.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), LayerError> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(LayerError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| LayerError::Io(e.into()));
    }
    // A directory without owner rwx (a stored layer's 0555 ones) cannot be
    // emptied by its unprivileged owner until it gets them.
    if st.st_mode & 0o700 != 0o700 {
        rustix::fs::chmodat(
            dir,
            name,
            rustix::fs::Mode::from_raw_mode(0o700),
            AtFlags::empty(),
        )
        .map_err(|e| LayerError::Io(e.into()))?;
    }
    let sub = open_subdir(dir, name)?;
    let mut children = Vec::new();
    read_dir(sub.as_fd(), |child, _, _| {
        children.push(child.to_owned());
        Ok(())
    })?;
    for child in children {
        remove_tree(sub.as_fd(), &child)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(|e| LayerError::Io(e.into()))
}
