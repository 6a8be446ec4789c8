//! Translating `trusted.overlay.*` markers into `user.overlay.*` ones, so
//! that a daemon without CAP_SYS_ADMIN, which cannot read trusted xattrs at
//! all, still sees every opaque directory and xattr whiteout of a layer that
//! root wrote (kernel overlayfs uppers, layers unpacked by a rootful engine).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::FileType;

use super::{Layer, LayerError, open_subdir, read_dir, stat_at};
use crate::sys::{getxattr_at, setxattr_at};

/// What a translation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UserMarkerStats {
    pub directories: u64,
    pub opaque_added: u64,
    pub whiteouts_added: u64,
}

const PAIRS: [(&CStr, &CStr); 2] = [
    (c"trusted.overlay.opaque", c"user.overlay.opaque"),
    (c"trusted.overlay.whiteout", c"user.overlay.whiteout"),
];

fn xattr(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> Result<Option<Vec<u8>>, LayerError> {
    let mut buf = [0u8; 256];
    match getxattr_at(dir, name, attr, &mut buf) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Copies `trusted.overlay.{opaque,whiteout}` of `name` in `dir` to the
/// `user.overlay.*` name where that is missing. Returns which were added.
fn translate(dir: BorrowedFd<'_>, name: &CStr) -> Result<[bool; 2], LayerError> {
    let mut added = [false; 2];
    for (i, (trusted, user)) in PAIRS.iter().enumerate() {
        let Some(value) = xattr(dir, name, trusted)? else {
            continue;
        };
        if xattr(dir, name, user)?.as_deref() == Some(&value[..]) {
            continue;
        }
        setxattr_at(dir, name, user, &value)?;
        added[i] = true;
    }
    Ok(added)
}

/// Adds `user.overlay.*` markers beside every trusted one in `layer`.
/// Idempotent. Needs a caller that can read trusted xattrs (root).
pub fn add_user_markers(layer: &Layer) -> Result<UserMarkerStats, LayerError> {
    let mut stats = UserMarkerStats::default();
    // Depth first with an explicit stack of (parent, name): only directories
    // with unvisited children stay open, and the thread's stack stays flat.
    let mut pending: Vec<(Arc<OwnedFd>, CString)> = vec![(layer.root().clone(), c".".to_owned())];
    while let Some((parent, name)) = pending.pop() {
        let dir = Arc::new(open_subdir(parent.as_fd(), &name)?);
        stats.directories += 1;
        let [opaque, _] = translate(dir.as_fd(), c".")?;
        stats.opaque_added += u64::from(opaque);
        let mut subdirs: Vec<CString> = Vec::new();
        read_dir(dir.as_fd(), |name, ft, _| {
            match ft {
                FileType::Directory => subdirs.push(name.to_owned()),
                FileType::RegularFile => {
                    let [_, whiteout] = translate(dir.as_fd(), name)?;
                    stats.whiteouts_added += u64::from(whiteout);
                }
                FileType::Unknown => {
                    let st = stat_at(dir.as_fd(), name)?;
                    match FileType::from_raw_mode(st.st_mode) {
                        FileType::Directory => subdirs.push(name.to_owned()),
                        FileType::RegularFile => {
                            let [_, whiteout] = translate(dir.as_fd(), name)?;
                            stats.whiteouts_added += u64::from(whiteout);
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
        pending.extend(subdirs.into_iter().map(|n| (dir.clone(), n)));
    }
    Ok(stats)
}
