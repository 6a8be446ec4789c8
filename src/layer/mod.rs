//! One layer: a directory fd and the whiteout dialects read from it. All
//! access is relative to directory fds beneath the layer root; nothing here
//! knows about other layers.

mod content_check;
mod copy;
mod error;
mod markers;
mod reaper;
mod redirect;
mod upper;
mod user_markers;
mod walk;
mod write_markers;
mod xattrs;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

pub use content_check::ContentCheck;
pub use copy::{copy_data, copy_mode_times, copy_owner, copy_xattrs, restore_dir_times};
pub use error::LayerError;
pub use markers::{
    IMPLIED_XATTRS, OCI_WHITEOUT_PREFIX, Presence, STORE_LAYER_XATTRS, dir_marks, has_marker,
    holds_xattr_whiteouts, implied_marker, is_implied, is_marker_name, is_opaque,
    is_overlay_whiteout, oci_whiteout_target, probe, to_cstring,
};
pub use redirect::{
    ALL_REDIRECT_XATTRS, METACOPY_XATTRS, Redirect, is_metacopy, read_redirect, read_redirect_at,
};
pub use upper::{Dialect, DialectChoice, Upper};
pub use user_markers::{UserMarkerStats, add_user_markers};
pub use walk::{
    drop_setid, open_file, open_path, open_subdir, proc_fd_path, read_dir, remove_tree, reopen,
    stat_at, stat_self,
};
pub use xattrs::{content_xattrs, is_private_xattr, read_sized};

/// A read-only layer directory.
#[derive(Debug)]
pub struct Layer {
    path: PathBuf,
    root: Arc<OwnedFd>,
    dev: u64,
}

impl Layer {
    /// Opens the layer root named by the user. The user's path may contain
    /// symlinks (it is theirs); everything below the root is reached through fds.
    pub fn open(path: &Path) -> Result<Self, LayerError> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::open(path, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| LayerError::open(path, e.into()))?;
        Ok(Layer {
            path: path.to_path_buf(),
            root: Arc::new(fd),
            dev: st.st_dev,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root(&self) -> &Arc<OwnedFd> {
        &self.root
    }

    /// The device of the layer's filesystem, as seen by the daemon.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    pub fn statvfs(&self) -> Result<rustix::fs::StatVfs, LayerError> {
        rustix::fs::fstatvfs(self.root.as_fd()).map_err(|e| LayerError::Io(e.into()))
    }
}
