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
    let mut entries =
        rustix::fs::Dir::read_from(fd.as_fd()).map_err(|e| LayerError::Io(e.into()))?;
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
