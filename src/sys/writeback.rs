//! Starting the writeback of a file range without waiting for it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Asks the kernel to start writing bytes `offset..offset + len` of `fd`
/// to disk now, instead of when dirty-page limits or a sync demand it.
pub fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: sync_file_range takes no pointers; `fd` is a live descriptor
    // borrowed for the call, and any range or flag value is checked by the
    // kernel.
    let r =
        unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
