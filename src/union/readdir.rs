//! Merged directory listings: every contributing layer read top-down, names
//! de-duplicated, whiteouts applied, markers hidden. A listing is taken once
//! per open handle, so offsets (telldir/seekdir) index a stable snapshot.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::hash::{BuildHasher, RandomState};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::Mutex;
use rustix::fs::FileType;

use super::Union;
use super::attr::{Attr, Kind};
use super::error::{Error, Result};
use super::inode::Node;
use crate::layer;

/// One entry of a listing, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    pub name: &'a OsStr,
    pub ino: u64,
    pub kind: Kind,
    /// For a non-directory of a read-only union: which of the directory's
    /// layers holds it, and its attributes, so that readdirplus needs no
    /// second lookup.
    leaf: Option<&'a (usize, Attr)>,
}

/// 16 bytes per entry.
#[derive(Debug)]
struct Listed {
    ino: u64,
    /// End of the name in [`Listing::names`]; it starts where the previous ends.
    name_end: u32,
    /// The kind in the low bits; above them, one more than the index into
    /// [`Listing::leaves`], or 0.
    kind_leaf: u32,
}

const KIND_BITS: u32 = 3;

impl Listed {
    fn kind(&self) -> Kind {
        Kind::from_index(self.kind_leaf & ((1 << KIND_BITS) - 1))
    }

    fn leaf(&self) -> Option<usize> {
        (self.kind_leaf >> KIND_BITS)
            .checked_sub(1)
            .map(|l| l as usize)
    }
}

/// A merged directory listing, compact: a directory of 100k entries is read
/// once per open handle and held while the kernel reads it.
#[derive(Debug, Default)]
pub struct Listing {
    names: Vec<u8>,
    entries: Vec<Listed>,
    leaves: Vec<(usize, Attr)>,
}

impl Listing {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `i`, whose offset is `i + 1`.
    pub fn get(&self, i: usize) -> Option<DirEntry<'_>> {
        let e = self.entries.get(i)?;
        Some(DirEntry {
            name: OsStr::from_bytes(self.name(i)),
            ino: e.ino,
            kind: e.kind(),
            leaf: e.leaf().and_then(|l| self.leaves.get(l)),
        })
    }

    /// The entries from `offset` on (offsets as readdir reports them: entry
    /// `i` has offset `i + 1`), each with its offset.
    pub fn entries_after(&self, offset: u64) -> impl Iterator<Item = (u64, DirEntry<'_>)> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        (start..self.len()).filter_map(|i| Some((i as u64 + 1, self.get(i)?)))
    }

    fn name(&self, i: usize) -> &[u8] {
        let start = match i {
            0 => 0,
            _ => self.entries[i - 1].name_end as usize,
        };
        &self.names[start..self.entries[i].name_end as usize]
    }

    /// Gives back what the vectors grew beyond their contents (up to half of
    /// a big listing).
    fn shrink(&mut self) {
        self.names.shrink_to_fit();
        self.entries.shrink_to_fit();
        self.leaves.shrink_to_fit();
    }

    fn push(&mut self, name: &[u8], ino: u64, kind: Kind, leaf: Option<(usize, Attr)>) {
        self.names.extend_from_slice(name);
        // (An entry beyond what the bits hold is looked up instead.)
        let leaf = match leaf {
            Some(l) if self.leaves.len() < (u32::MAX >> KIND_BITS) as usize => {
                self.leaves.push(l);
                self.leaves.len() as u32
            }
            _ => 0,
        };
        self.entries.push(Listed {
            ino,
            name_end: self.names.len() as u32,
            kind_leaf: kind as u32 | leaf << KIND_BITS,
        });
    }
}

/// An open directory handle. Its listing is taken at the first readdir, not
/// at opendir: the kernel answers most re-reads of a directory from its own
/// cache and then never asks for one.
#[derive(Debug)]
pub struct OpenDir {
    node: Arc<Node>,
    listing: Mutex<Option<Arc<Listing>>>,
}

impl Union {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        node.dir_layers()?;
        Ok(self.dirs.insert(OpenDir {
            node,
            listing: Mutex::new(None),
        }))
    }

    /// The snapshot of an open directory handle; entry `i` has offset `i + 1`.
    pub fn readdir(&self, fh: u64) -> Result<Arc<Listing>> {
        let dir = self.dirs.get(fh)?;
        let mut listing = dir.listing.lock();
        if let Some(entries) = &*listing {
            return Ok(entries.clone());
        }
        let entries = Arc::new(self.list(&dir.node)?);
        *listing = Some(entries.clone());
        Ok(entries)
    }

    /// The node of a listed entry, counting one kernel reference, as
    /// [`Union::lookup`] would give it; a non-directory needs no layer access.
    pub fn lookup_listed(&self, parent: u64, entry: &DirEntry<'_>) -> Result<Arc<Node>> {
        let dir_node = self.nodes.get(parent)?;
        let name = super::lookup::checked_name(entry.name)?;
        // With a writable layer the listing may be older than the tree: the
        // name may now be another file. Only a fresh lookup is safe.
        let Some(&(source, attr)) = entry.leaf.filter(|_| self.upper.is_none()) else {
            return self.lookup_in(&dir_node, name);
        };
        if let Some(node) = self.nodes.remember_known(entry.ino) {
            node.relocate(dir_node, &name);
            return Ok(node);
        }
        let layers = dir_node.dir_layers()?;
        let ld = layers.get(source).ok_or(Error::NotFound)?;
        // Only read-only unions get here: every layer is a lower one.
        let body = Union::lower_leaf(ld.layer, &ld.fd);
        Ok(self
            .nodes
            .remember(Node::new(Some(dir_node), &name, body, &attr)))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }

    pub(crate) fn list(&self, node: &Node) -> Result<Listing> {
        let layers = node.dir_layers()?;
        let parent = node.parent().map_or(super::ROOT_INO, |p| p.ino());
        let mut entries = Listing::default();
        entries.push(b".", node.ino(), Kind::Dir, None);
        entries.push(b"..", parent, Kind::Dir, None);
        // Only a read-only union may answer readdirplus from the listing.
        let keep_attrs = self.upper.is_none();
        // Names already decided by a higher layer: shown (indexes into the
        // listing, which holds their names), or whited out.
        let mut decided = Decided::default();
        for (source, ld) in layers.iter().enumerate() {
            let dir = ld.fd.as_fd();
            // An OCI whiteout hides only lower layers, so apply this layer's
            // whiteouts after reading all of it.
            let mut whiteouts: Vec<Vec<u8>> = Vec::new();
            layer::read_dir(dir, |name, ftype, real_ino| {
                let bytes = name.to_bytes();
                if layer::is_marker_name(bytes) {
                    if let Some(target) = layer::oci_whiteout_target(name) {
                        whiteouts.push(target.to_vec());
                    }
                    return Ok(());
                }
                if decided.contains(&entries, bytes) {
                    return Ok(());
                }
                if ftype == FileType::Directory {
                    let ino = self.entry_ino(ld.layer, dir, name, real_ino);
                    entries.push(bytes, ino, Kind::Dir, None);
                } else {
                    // Whiteouts hide among char devices and empty files, and
                    // d_type may be unknown: every non-directory is stat'ed.
                    let st = layer::stat_at(dir, name)?;
                    if layer::is_overlay_whiteout(dir, name, &st) {
                        whiteouts.push(bytes.to_vec());
                        return Ok(());
                    }
                    let ino = self.entry_ino(ld.layer, dir, name, st.st_ino);
                    let st = self.logical(ld.layer, dir, name, st);
                    let Some(attr) = Attr::from_stat(ino, &st) else {
                        return Ok(());
                    };
                    let leaf = (keep_attrs && attr.kind != Kind::Dir).then_some((source, attr));
                    entries.push(bytes, ino, attr.kind, leaf);
                }
                decided.shown(&entries, entries.len() - 1);
                Ok(())
            })?;
            decided.hidden.extend(whiteouts);
        }
        entries.shrink();
        Ok(entries)
    }
}

/// The names a listing has decided while it is built. Shown names are kept
/// as indexes into the listing rather than copies: a directory of 100k
/// entries would otherwise allocate 100k names twice.
#[derive(Default)]
struct Decided {
    shown: HashTable<u32>,
    hasher: RandomState,
    hidden: HashSet<Vec<u8>>,
}

impl Decided {
    fn contains(&self, listing: &Listing, name: &[u8]) -> bool {
        let hash = self.hasher.hash_one(name);
        self.shown
            .find(hash, |&i| listing.name(i as usize) == name)
            .is_some()
            || self.hidden.contains(name)
    }

    /// Entry `i` of `listing` is decided.
    fn shown(&mut self, listing: &Listing, i: usize) {
        let hash = self.hasher.hash_one(listing.name(i));
        let hasher = &self.hasher;
        self.shown.insert_unique(hash, i as u32, |&j| {
            hasher.hash_one(listing.name(j as usize))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_kind_and_leaf_in_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Listed>(), 16);
        let attr = |ino| Attr {
            ino,
            kind: Kind::Symlink,
            perm: 0o777,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 3,
            blocks: 0,
            blksize: 4096,
            atime: super::super::Time { sec: 1, nsec: 2 },
            mtime: super::super::Time { sec: 3, nsec: 4 },
            ctime: super::super::Time { sec: 5, nsec: 6 },
        };
        let mut l = Listing::default();
        l.push(b"d", 10, Kind::Dir, None);
        l.push(b"link", 11, Kind::Symlink, Some((2, attr(11))));
        l.push(b"dev", 12, Kind::BlockDev, None);
        l.push(b"f", 13, Kind::File, Some((1, attr(13))));
        l.shrink();
        let got: Vec<_> = l
            .entries_after(0)
            .map(|(off, e)| {
                (
                    off,
                    e.name.to_owned(),
                    e.ino,
                    e.kind,
                    e.leaf.map(|&(s, a)| (s, a.ino)),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "d".into(), 10, Kind::Dir, None),
                (2, "link".into(), 11, Kind::Symlink, Some((2, 11))),
                (3, "dev".into(), 12, Kind::BlockDev, None),
                (4, "f".into(), 13, Kind::File, Some((1, 13))),
            ]
        );
        assert_eq!(l.entries_after(3).count(), 1);
    }
}
