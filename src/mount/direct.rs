//! Mounting `/dev/fuse` with mount(2) ourselves where that is allowed (root,
//! or root of a user namespace), so that the mount is typed
//! `fuse.SUBTYPE` and named by its source as libfuse's are; fuser's own
//! direct mount always says plain `fuse`. Elsewhere the caller falls back to
//! fuser, which goes through fusermount3.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use fuser::SessionACL;
use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

use super::FuseOptions;

/// What the mount(2) call needs beyond the FUSE options.
pub struct DirectMount<'a> {
    pub mountpoint: &'a Path,
    pub options: &'a FuseOptions,
    pub read_only: bool,
    pub acl: SessionACL,
    pub privileged: bool,
}

/// Mounts and returns the connected `/dev/fuse` fd, or `None` when mount(2)
/// is not permitted here (the caller then uses fusermount3).
pub fn mount(m: &DirectMount<'_>) -> std::io::Result<Option<OwnedFd>> {
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let root_mode = rustix::fs::stat(m.mountpoint)?.st_mode & libc::S_IFMT;
    let o = m.options;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        root_mode,
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    if m.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    let mut flags = MountFlags::empty();
    let on = |v: Option<bool>| v.unwrap_or(m.privileged);
    for (set, flag) in [
        (!on(o.suid), MountFlags::NOSUID),
        (!on(o.dev), MountFlags::NODEV),
        (!o.exec, MountFlags::NOEXEC),
        (!o.atime, MountFlags::NOATIME),
        (m.read_only, MountFlags::RDONLY),
        (o.sync, MountFlags::SYNCHRONOUS),
        (o.dirsync, MountFlags::DIRSYNC),
    ] {
        if set {
            flags |= flag;
        }
    }
    let fstype = format!("fuse.{}", o.subtype.as_deref().unwrap_or("stratafs"));
    let source = o.fsname.as_deref().unwrap_or("stratafs");
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    match rustix::mount::mount(
        source,
        m.mountpoint,
        fstype.as_str(),
        flags,
        data.as_c_str(),
    ) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
