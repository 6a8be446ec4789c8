//! fork(2), for daemonizing once the mount is ready.

use std::io;

pub enum ForkResult {
    Parent { child: i32 },
    Child,
}

/// Forks the process.
///
/// Call only while the process has a single thread: the child gets a copy of
/// the calling thread alone, and any lock another thread held stays locked.
pub fn fork() -> io::Result<ForkResult> {
    // SAFETY: fork has no memory-safety preconditions of its own; the caller
    // guarantees the process is single-threaded (see the doc comment), so the
    // child inherits no lock held by a thread that does not exist there.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(ForkResult::Child),
        child => Ok(ForkResult::Parent { child }),
    }
}
