//! Merged directory listings: every contributing layer read top-down, names
//! de-duplicated, whiteouts applied, markers hidden. A listing is taken once
//! per open handle, so offsets (telldir/seekdir) index a stable snapshot.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::FileType;

use super::Union;
use super::attr::{Attr, Kind};
use super::error::{Error, Result};
use super::inode::{Node, NodeState};
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

#[derive(Debug)]
struct Listed {
    /// End of the name in [`Listing::names`]; it starts where the previous ends.
    name_end: u32,
    kind: Kind,
    /// Index into [`Listing::leaves`].
    leaf: Option<u32>,
    ino: u64,
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
        let start = match i {
            0 => 0,
            _ => self.entries[i - 1].name_end as usize,
        };
        Some(DirEntry {
            name: OsStr::from_bytes(&self.names[start..e.name_end as usize]),
            ino: e.ino,
            kind: e.kind,
            leaf: e.leaf.and_then(|l| self.leaves.get(l as usize)),
        })
    }

    /// The entries from `offset` on (offsets as readdir reports them: entry
    /// `i` has offset `i + 1`), each with its offset.
    pub fn entries_after(&self, offset: u64) -> impl Iterator<Item = (u64, DirEntry<'_>)> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        (start..self.len()).filter_map(|i| Some((i as u64 + 1, self.get(i)?)))
    }

    fn push(&mut self, name: &[u8], ino: u64, kind: Kind, leaf: Option<(usize, Attr)>) {
        self.names.extend_from_slice(name);
        let leaf = leaf.map(|l| {
            self.leaves.push(l);
            (self.leaves.len() - 1) as u32
        });
        self.entries.push(Listed {
            name_end: self.names.len() as u32,
            kind,
            leaf,
            ino,
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
            node.relocate(dir_node, name);
            return Ok(node);
        }
        let layers = dir_node.dir_layers()?;
        let ld = layers.get(source).ok_or(Error::NotFound)?;
        // Only read-only unions get here: every layer is a lower one.
        let body = Union::lower_leaf(ld.layer, &ld.fd, &name);
        Ok(self.nodes.remember(Node::new(NodeState {
            parent: Some(dir_node),
            name,
            others: Vec::new(),
            body,
            attr,
        })))
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
        // Names already decided by a higher layer: shown, or whited out.
        let mut decided: HashSet<Vec<u8>> = HashSet::new();
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
                if decided.contains(bytes) {
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
                decided.insert(bytes.to_vec());
                Ok(())
            })?;
            decided.extend(whiteouts);
        }
        Ok(entries)
    }
}
