//! Options of the FUSE session itself: who may enter the mount, mount flags,
//! what the kernel may cache.

use std::time::Duration;

/// Who may use the mount besides its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Everyone when the daemon is root (as fuse-overlayfs does), else the owner.
    #[default]
    Auto,
    /// The owner only.
    Owner,
    /// Everyone (`allow_other`).
    AllowOther,
    /// The owner and root (`allow_root`).
    AllowRoot,
}

#[derive(Debug, Clone)]
pub struct FuseOptions {
    pub access: Access,
    /// Mount read-only even with an upper layer.
    pub read_only: bool,
    /// Honour setuid bits and device nodes; `None` means "when root".
    pub suid: Option<bool>,
    pub dev: Option<bool>,
    pub exec: bool,
    pub atime: bool,
    pub sync: bool,
    pub dirsync: bool,
    /// POSIX ACLs enforced by the kernel (off with `noacl`).
    pub acl: bool,
    /// How long the kernel may cache entries and attributes.
    pub timeout: Option<Duration>,
    /// Kernel writeback cache; `None` means "when passthrough is off".
    pub writeback: Option<bool>,
    /// FUSE passthrough for file I/O; `None` means "when privileged".
    pub passthrough: Option<bool>,
    pub max_write: Option<u32>,
    /// FUSE over io_uring; `None` means "when the kernel offers it".
    pub uring: Option<bool>,
    /// FUSE event loops; `None` picks two per CPU (at least four).
    pub threads: Option<usize>,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            access: Access::Auto,
            read_only: false,
            suid: None,
            dev: None,
            exec: true,
            atime: false,
            sync: false,
            dirsync: false,
            acl: true,
            timeout: None,
            writeback: None,
            passthrough: None,
            max_write: None,
            uring: None,
            threads: None,
            fsname: None,
            subtype: None,
        }
    }
}
