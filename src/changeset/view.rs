//! Reading a merged tree (a mount) by path, relative to its root fd, as
//! manifest records.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Stat};

use crate::layer;
use crate::store::{Record, StoreError, tree_walk};

/// One entry of a view: where it is and what it is.
pub struct Found {
    pub dir: OwnedFd,
    pub name: CString,
    pub stat: Stat,
}

impl Found {
    pub fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.stat.st_mode) == FileType::Directory
    }

    /// Its manifest record (content hashed for regular files).
    pub fn record(&self, path: &[u8]) -> Result<Record, StoreError> {
        let visit = tree_walk::Visit {
            path,
            dir: self.dir.as_fd(),
            name: &self.name,
            item: tree_walk::Item::Entry {
                stat: &self.stat,
                opaque: false,
            },
        };
        Ok(tree_walk::record_of(&visit, &mut |v, _| tree_walk::hash_file(v))?.0)
    }

    /// An O_PATH handle on the directory itself.
    pub fn open_dir(&self) -> Result<OwnedFd, StoreError> {
        Ok(layer::open_subdir(self.dir.as_fd(), &self.name)?)
    }
}

/// Looks `path` (`/`-rooted) up beneath `root` without following symlinks.
pub fn find(root: BorrowedFd<'_>, path: &[u8]) -> Result<Option<Found>, StoreError> {
    let parts: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let mut dir = rustix::io::dup(root)?;
    let Some((last, parents)) = parts.split_last() else {
        let stat = layer::stat_at(root, c".")?;
        return Ok(Some(Found {
            dir,
            name: c".".to_owned(),
            stat,
        }));
    };
    for p in parents {
        let Ok(c) = CString::new(*p) else {
            return Ok(None);
        };
        dir = match layer::open_subdir(dir.as_fd(), &c) {
            Ok(d) => d,
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
    }
    let Ok(name) = CString::new(*last) else {
        return Ok(None);
    };
    match layer::stat_at(dir.as_fd(), &name) {
        Ok(stat) => Ok(Some(Found { dir, name, stat })),
        Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names in directory `dir` (an O_PATH handle), sorted.
pub fn names(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    layer::read_dir(dir, |n, _, _| {
        out.push(n.to_bytes().to_vec());
        Ok(())
    })?;
    out.sort();
    Ok(out)
}
