//! The `/proc/self/fd/N` name of a descriptor.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `/proc/self/fd/N`: reopens or addresses the inode behind an (O_PATH) fd
/// without knowing any of its names, so hard links, renames and unlinked
/// files are all reached the same way.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}
