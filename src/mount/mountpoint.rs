//! Checks on the mount point, so that a bad one gives a clear message and
//! nothing is mounted.

use std::path::Path;

use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};

use super::MountError;

pub fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let stx = match rustix::fs::statx(CWD, path, AtFlags::empty(), StatxFlags::BASIC_STATS) {
        Ok(stx) => stx,
        Err(rustix::io::Errno::NOENT) => return Err(MountError::MountpointMissing(path.into())),
        Err(rustix::io::Errno::NOTDIR) => return Err(MountError::MountpointNotDir(path.into())),
        Err(rustix::io::Errno::NOTCONN) => return Err(MountError::MountpointStale(path.into())),
        Err(e) => {
            return Err(MountError::Mountpoint {
                path: path.into(),
                err: e.into(),
            });
        }
    };
    if rustix::fs::FileType::from_raw_mode(stx.stx_mode.into()) != rustix::fs::FileType::Directory {
        return Err(MountError::MountpointNotDir(path.into()));
    }
    if stx
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
        && stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    {
        return Err(MountError::MountpointBusy(path.into()));
    }
    Ok(())
}
