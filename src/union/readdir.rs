//! Merged directory listings: every contributing layer read top-down, names
//! de-duplicated, whiteouts applied, markers hidden. A listing is taken once
//! per open handle, so offsets (telldir/seekdir) index a stable snapshot.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::FileType;

use super::Union;
use super::attr::{Attr, Kind};
use super::error::{Error, Result};
use super::inode::{Node, NodeState};
use crate::layer;

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
    /// For a non-directory: which of the directory's layers holds it, and its
    /// attributes, so that readdirplus needs no second lookup.
    leaf: Option<(usize, Attr)>,
}

impl DirEntry {
    fn dot(name: &str, ino: u64) -> Self {
        DirEntry {
            name: name.into(),
            ino,
            kind: Kind::Dir,
            leaf: None,
        }
    }
}

/// An open directory handle. Its listing is taken at the first readdir, not
/// at opendir: the kernel answers most re-reads of a directory from its own
/// cache and then never asks for one.
#[derive(Debug)]
pub struct OpenDir {
    node: Arc<Node>,
    listing: Mutex<Option<Arc<Vec<DirEntry>>>>,
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
    pub fn readdir(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
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
    pub fn lookup_listed(&self, parent: u64, entry: &DirEntry) -> Result<Arc<Node>> {
        let dir_node = self.nodes.get(parent)?;
        let name = super::lookup::checked_name(&entry.name)?;
        // With a writable layer the listing may be older than the tree: the
        // name may now be another file. Only a fresh lookup is safe.
        let Some((source, attr)) = entry.leaf.filter(|_| self.upper.is_none()) else {
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

    pub(crate) fn list(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let layers = node.dir_layers()?;
        let parent = node.parent().map_or(super::ROOT_INO, |p| p.ino());
        let mut entries = vec![DirEntry::dot(".", node.ino()), DirEntry::dot("..", parent)];
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
                let entry = if ftype == FileType::Directory {
                    DirEntry {
                        name: OsString::from_vec(bytes.to_vec()),
                        ino: self.entry_ino(ld.layer, dir, name, real_ino),
                        kind: Kind::Dir,
                        leaf: None,
                    }
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
                    DirEntry {
                        name: OsString::from_vec(bytes.to_vec()),
                        ino,
                        kind: attr.kind,
                        leaf: (attr.kind != Kind::Dir).then_some((source, attr)),
                    }
                };
                decided.insert(bytes.to_vec());
                entries.push(entry);
                Ok(())
            })?;
            decided.extend(whiteouts);
        }
        Ok(entries)
    }
}
