//! The only module allowed to contain `unsafe`: thin wrappers for the few
//! syscalls that rustix does not cover. Each block carries a SAFETY note.

mod affinity;
mod chmod_fd;
mod env;
mod fork;
mod fuse_ring;
mod malloc;
mod proc_fd;
mod signals;
mod writeback;
mod xattr_at;

pub use affinity::{Unpinned, unpinned};
pub use chmod_fd::chmod_fd;
pub use env::set_env_if_single_threaded;
pub use fork::{ForkResult, fork};
pub use fuse_ring::{FuseBacking, FuseQueue, HEADER_SIZE, Slot, probe_ring};
pub use malloc::{trim, tune_allocator};
pub use proc_fd::proc_fd_path;
pub use signals::{TerminationSignals, block_termination_signals, unblock_signals_in_child};
pub use writeback::start_writeback;
pub use xattr_at::{getxattr_at, listxattr_at, setxattr_at};
