//! Unmounting: directly as root, through fusermount3 otherwise.

use std::path::Path;
use std::process::Command;

use rustix::mount::UnmountFlags;

use super::MountError;

pub fn unmount(path: &Path, lazy: bool) -> Result<(), MountError> {
    let fail = |reason: String| MountError::Unmount {
        path: path.into(),
        reason,
    };
    if rustix::process::geteuid().is_root() {
        let flags = if lazy {
            UnmountFlags::DETACH
        } else {
            UnmountFlags::empty()
        };
        return match rustix::mount::unmount(path, flags) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::INVAL) => Err(fail("not a mount point".into())),
            Err(rustix::io::Errno::BUSY) => Err(fail(
                "target is busy (a process uses it); close it or use --lazy".into(),
            )),
            Err(e) => Err(fail(std::io::Error::from(e).to_string())),
        };
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(path).output().map_err(|e| {
        fail(format!(
            "cannot run fusermount3 ({e}); install the fuse3 package"
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(fail(if msg.is_empty() {
        format!("fusermount3 exited with {}", out.status)
    } else {
        msg
    }))
}
