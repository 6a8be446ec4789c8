//! Holding a live mount still while it is committed: remounted read-only
//! (which the kernel refuses while files are open for writing, so no
//! half-written file is read), flushed, and made writable again after.

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, mount_remount};

use super::ChangesetError;

pub struct Frozen {
    path: PathBuf,
    flags: MountFlags,
}

/// The per-mount flags in force, to keep them across the remounts.
fn current_flags(path: &Path) -> Result<MountFlags, ChangesetError> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| ChangesetError::Usage(format!("{}: {e}", path.display())))?;
    let f = st.f_flag;
    let mut flags = MountFlags::empty();
    for (bit, flag) in [
        (rustix::fs::StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (rustix::fs::StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (rustix::fs::StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (rustix::fs::StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (
            rustix::fs::StatVfsMountFlags::NODIRATIME,
            MountFlags::NODIRATIME,
        ),
        (
            rustix::fs::StatVfsMountFlags::RELATIME,
            MountFlags::RELATIME,
        ),
        (
            rustix::fs::StatVfsMountFlags::SYNCHRONOUS,
            MountFlags::SYNCHRONOUS,
        ),
        (rustix::fs::StatVfsMountFlags::RDONLY, MountFlags::RDONLY),
    ] {
        if f.contains(bit) {
            flags |= flag;
        }
    }
    Ok(flags)
}

impl Frozen {
    pub fn new(path: &Path) -> Result<Frozen, ChangesetError> {
        let flags = current_flags(path)?;
        if flags.contains(MountFlags::RDONLY) {
            return Ok(Frozen {
                path: path.to_path_buf(),
                flags,
            });
        }
        match mount_remount(path, flags | MountFlags::RDONLY, "") {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => {
                return Err(ChangesetError::Usage(format!(
                    "{}: files are open for writing in the mount; close them (or unmount) and commit again",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(ChangesetError::Usage(format!(
                    "{}: cannot freeze the live mount for a consistent commit ({e}); unmount it and commit its upper directory",
                    path.display()
                )));
            }
        }
        if let Ok(fd) = rustix::fs::open(
            path,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        ) {
            let _ = rustix::fs::syncfs(&fd);
        }
        Ok(Frozen {
            path: path.to_path_buf(),
            flags,
        })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.flags.contains(MountFlags::RDONLY)
            && let Err(e) = mount_remount(&self.path, self.flags, "")
        {
            tracing::error!(path = %self.path.display(), error = %e, "could not make the mount writable again");
        }
    }
}
