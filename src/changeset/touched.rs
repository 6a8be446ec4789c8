//! What an upper directory touches: every path it holds an entry or a
//! whiteout for, in any dialect, and the directories whose whole content
//! it decides (opaque, or moved with a redirect).

use std::os::fd::BorrowedFd;

use rustix::fs::FileType;

use crate::layer;
use crate::store::StoreError;
use crate::store::tree_walk::{Item, walk};

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
    walk(upper, &mut |v| {
        if v.path == b"/" {
            return Ok(());
        }
        let touch = match v.item {
            Item::Whiteout => Touch::Whiteout,
            Item::Entry { stat, opaque }
                if FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                    && (opaque || layer::read_redirect_at(v.dir, v.name).is_some()) =>
            {
                Touch::Whole
            }
            Item::Entry { .. } => Touch::Entry,
        };
        out.push((v.path.to_vec(), touch));
        Ok(())
    })?;
    Ok(out)
}
