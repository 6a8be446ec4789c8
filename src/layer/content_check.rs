//! A hook run on a lower file's content the first time it is opened: the
//! store uses it to check files against a layer's manifest (`--verify=lazy`).

use std::os::fd::BorrowedFd;

/// Checks an opened lower file. `fd` is open for reading at any offset;
/// `ino` is its inode number in the layer. An error makes the open fail
/// with EIO.
pub trait ContentCheck: Send + Sync + std::fmt::Debug {
    fn check(&self, fd: BorrowedFd<'_>, ino: u64) -> std::io::Result<()>;
}
