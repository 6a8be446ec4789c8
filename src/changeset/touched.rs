//! What an upper directory touches: every path it holds an entry or a
//! whiteout for, in any dialect, and the directories whose whole content
//! it decides (opaque, or moved with a redirect).

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::FileType;

use crate::layer::{self, is_marker_name, is_opaque, is_overlay_whiteout, oci_whiteout_target};
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// The upper holds a whiteout here.
    Whiteout,
    /// A non-directory, or a directory merged with what is below.
    Entry,
    /// A directory whose content is all the upper's view (opaque or redirected).
    Whole,
}

/// Every touched path (`/`-rooted), parents before children.
pub fn touched(upper: BorrowedFd<'_>) -> Result<Vec<(Vec<u8>, Touch)>, StoreError> {
    let mut out = Vec::new();
    walk(upper, b"/", &mut out)?;
    Ok(out)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn walk(
    dir: BorrowedFd<'_>,
    path: &[u8],
    out: &mut Vec<(Vec<u8>, Touch)>,
) -> Result<(), StoreError> {
    let mut names: Vec<CString> = Vec::new();
    layer::read_dir(dir, |n, _, _| {
        names.push(n.to_owned());
        Ok(())
    })?;
    names.sort();
    for name in &names {
        let bytes = name.to_bytes();
        if is_marker_name(bytes) {
            if let Some(target) = oci_whiteout_target(name)
                && names
                    .binary_search_by(|n| n.to_bytes().cmp(target))
                    .is_err()
            {
                out.push((join(path, target), Touch::Whiteout));
            }
            continue;
        }
        let st = layer::stat_at(dir, name)?;
        let child = join(path, bytes);
        if is_overlay_whiteout(dir, name, &st) {
            out.push((child, Touch::Whiteout));
        } else if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = layer::open_subdir(dir, name)?;
            let whole = is_opaque(sub.as_fd())? || layer::read_redirect(sub.as_fd()).is_some();
            out.push((
                child.clone(),
                if whole { Touch::Whole } else { Touch::Entry },
            ));
            walk(sub.as_fd(), &child, out)?;
        } else {
            out.push((child, Touch::Entry));
        }
    }
    Ok(())
}
