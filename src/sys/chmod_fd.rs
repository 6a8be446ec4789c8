//! chmod of the inode behind an fd, O_PATH fds included.
//!
//! `fchmod` refuses O_PATH fds. Linux 6.6 added `fchmodat2`, whose
//! `AT_EMPTY_PATH` changes the fd's own inode; older kernels get the
//! `/proc/self/fd/N` magic link, a path walk through procfs per call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

// Same number on every architecture: it postdates the unified table.
const SYS_FCHMODAT2: libc::c_long = 452;

static FCHMODAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Sets the permission bits (`mode & 0o7777`) of the inode `fd` refers to.
/// Not for symlinks (Linux has no symlink modes to change).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    if !FCHMODAT2_MISSING.load(Ordering::Relaxed) {
        // SAFETY: the path is a NUL-terminated empty string that lives for
        // the call; the other arguments are plain integers.
        let r = unsafe {
            libc::syscall(
                SYS_FCHMODAT2,
                fd.as_raw_fd(),
                c"".as_ptr(),
                mode & 0o7777,
                libc::AT_EMPTY_PATH,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
        FCHMODAT2_MISSING.store(true, Ordering::Relaxed);
    }
    let path = super::proc_fd_path(fd);
    rustix::fs::chmodat(
        rustix::fs::CWD,
        path.as_c_str(),
        rustix::fs::Mode::from_raw_mode(mode & 0o7777),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(io::Error::from)
}
