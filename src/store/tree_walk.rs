//! Walking a layer tree in any whiteout dialect, parents before children,
//! names in byte order, never following a symlink.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{FileType, Stat};

use super::StoreError;
use super::digest::Digest;
use super::manifest::{Body, Manifest, Meta, Record};
use crate::layer::{self, is_marker_name, is_opaque, is_overlay_whiteout, oci_whiteout_target};

/// What one walked name is.
pub enum Item<'a> {
    /// A real entry; `opaque` only for directories that hide lower layers.
    Entry { stat: &'a Stat, opaque: bool },
    /// A whiteout, in whatever dialect the tree wrote it.
    Whiteout,
}

/// One visited entry: its `/`-rooted path, and where it lives (`name` in
/// `dir`; the root is `.` in itself).
pub struct Visit<'a> {
    pub path: &'a [u8],
    pub dir: BorrowedFd<'a>,
    pub name: &'a CStr,
    pub item: Item<'a>,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Calls `visit` for the root and every entry below it.
pub fn walk(
    root: BorrowedFd<'_>,
    visit: &mut dyn FnMut(Visit<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let stat = layer::stat_at(root, c".")?;
    let opaque = is_opaque(root)?;
    visit(Visit {
        path: b"/",
        dir: root,
        name: c".",
        item: Item::Entry {
            stat: &stat,
            opaque,
        },
    })?;
    walk_dir(root, b"/", visit)
}

fn walk_dir(
    dir: BorrowedFd<'_>,
    path: &[u8],
    visit: &mut dyn FnMut(Visit<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut names: Vec<CString> = Vec::new();
    layer::read_dir(dir, |name, _, _| {
        names.push(name.to_owned());
        Ok(())
    })?;
    names.sort();
    for name in &names {
        let bytes = name.to_bytes();
        if is_marker_name(bytes) {
            // An OCI whiteout hides only lower layers: a real entry of the
            // same name in this layer wins and is all the layer says.
            if let Some(target) = oci_whiteout_target(name)
                && names
                    .binary_search_by(|n| n.to_bytes().cmp(target))
                    .is_err()
            {
                visit(Visit {
                    path: &join(path, target),
                    dir,
                    name,
                    item: Item::Whiteout,
                })?;
            }
            continue;
        }
        let stat = layer::stat_at(dir, name)?;
        let child = join(path, bytes);
        if is_overlay_whiteout(dir, name, &stat) {
            visit(Visit {
                path: &child,
                dir,
                name,
                item: Item::Whiteout,
            })?;
            continue;
        }
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            let sub = layer::open_subdir(dir, name)?;
            // A `.wh.NAME` beside directory NAME deletes the one below: the
            // directory is opaque (the OCI spec; tar imports read it so too).
            let mut wh = crate::layer::OCI_WHITEOUT_PREFIX.to_vec();
            wh.extend_from_slice(bytes);
            let deleted_below = names.binary_search_by(|n| n.to_bytes().cmp(&wh)).is_ok();
            let opaque = deleted_below || is_opaque(sub.as_fd())?;
            visit(Visit {
                path: &child,
                dir,
                name,
                item: Item::Entry {
                    stat: &stat,
                    opaque,
                },
            })?;
            walk_dir(sub.as_fd(), &child, visit)?;
        } else {
            visit(Visit {
                path: &child,
                dir,
                name,
                item: Item::Entry {
                    stat: &stat,
                    opaque: false,
                },
            })?;
        }
    }
    Ok(())
}

/// The manifest metadata of `name` in `dir` with stat `st`.
pub fn meta_of(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> Result<Meta, StoreError> {
    Ok(Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs: layer::content_xattrs(dir, name)?,
    })
}

/// The manifest record of a visited entry; `content` gives a regular
/// file's digest.
pub fn record_of(
    v: &Visit<'_>,
    content: &mut dyn FnMut(&Visit<'_>, &Stat) -> Result<Digest, StoreError>,
) -> Result<(Record, Option<u64>), StoreError> {
    let (stat, opaque) = match v.item {
        Item::Whiteout => {
            return Ok((
                Record {
                    path: v.path.to_vec(),
                    body: Body::Whiteout,
                },
                None,
            ));
        }
        Item::Entry { stat, opaque } => (stat, opaque),
    };
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind == FileType::Directory && !opaque && layer::is_implied(v.dir, v.name) {
        return Ok((
            Record {
                path: v.path.to_vec(),
                body: Body::Implied,
            },
            None,
        ));
    }
    let meta = meta_of(v.dir, v.name, stat)?;
    let major = rustix::fs::major(stat.st_rdev);
    let minor = rustix::fs::minor(stat.st_rdev);
    let body = match kind {
        FileType::Directory => Body::Dir { meta, opaque },
        FileType::RegularFile => Body::File {
            meta,
            size: stat.st_size as u64,
            sha256: content(v, stat)?,
        },
        FileType::Symlink => Body::Symlink {
            meta,
            target: rustix::fs::readlinkat(v.dir, v.name, Vec::new())
                .map_err(std::io::Error::from)?
                .into_bytes(),
        },
        FileType::CharacterDevice => Body::Char { meta, major, minor },
        FileType::BlockDevice => Body::Block { meta, major, minor },
        FileType::Fifo => Body::Fifo { meta },
        FileType::Socket => Body::Socket { meta },
        FileType::Unknown => {
            return Err(StoreError::entry(v.path, "unknown file type"));
        }
    };
    let linked = kind != FileType::Directory && stat.st_nlink > 1;
    Ok((
        Record {
            path: v.path.to_vec(),
            body,
        },
        linked.then_some(stat.st_ino),
    ))
}

/// Hashes the content of a visited regular file.
pub fn hash_file(v: &Visit<'_>) -> Result<Digest, StoreError> {
    let fd = layer::open_file(v.dir, v.name)?;
    let mut file = std::fs::File::from(fd);
    Ok(super::digest::hash_copy(&mut file, None)?.0)
}

/// The canonical manifest of the tree at `root`, hashing every file.
pub fn manifest_of(
    root: BorrowedFd<'_>,
    mut content: impl FnMut(&Visit<'_>, &Stat) -> Result<Digest, StoreError>,
) -> Result<Manifest, StoreError> {
    let mut records = Vec::new();
    walk(root, &mut |v| {
        records.push(record_of(&v, &mut content)?);
        Ok(())
    })?;
    Ok(Manifest::canonical(records))
}
