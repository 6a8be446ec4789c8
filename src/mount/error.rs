use std::io;
use std::path::PathBuf;

use crate::layer::LayerError;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount point {0}: does not exist")]
    MountpointMissing(PathBuf),
    #[error("mount point {0}: not a directory")]
    MountpointNotDir(PathBuf),
    #[error("mount point {0}: not empty (its files would be hidden while mounted)")]
    MountpointNotEmpty(PathBuf),
    #[error("mount point {0}: already a mount point (busy); unmount it first")]
    MountpointBusy(PathBuf),
    #[error(
        "mount point {0}: transport endpoint is not connected (a dead FUSE mount); run `stratafs umount {0}` first"
    )]
    MountpointStale(PathBuf),
    #[error("mount point {path}: {err}")]
    Mountpoint { path: PathBuf, err: io::Error },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("cannot mount on {path}: {err}")]
    Fuse { path: PathBuf, err: io::Error },
    #[error("{0}")]
    Daemon(String),
    #[error("{what}: {err}")]
    Io { what: &'static str, err: io::Error },
    #[error("cannot unmount {path}: {reason}")]
    Unmount { path: PathBuf, reason: String },
}

impl MountError {
    pub fn io(what: &'static str, source: io::Error) -> Self {
        MountError::Io { what, err: source }
    }
}
