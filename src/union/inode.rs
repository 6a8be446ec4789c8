//! Union inodes: stable inode numbers and the table of inodes the kernel holds.
//!
//! An inode number is derived from the real object it shows — the layer
//! filesystem and the real inode number — never from a counter. So it is the
//! same for the life of the mount, after a remount, between readdir and stat,
//! and for every hard link of one file. The FUSE node id is the same number.

use std::collections::HashMap;
use std::ffi::CString;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::attr::Attr;
use super::error::{Error, Result};
use crate::layer::Layer;

/// FUSE's fixed node id of the mount root.
pub const ROOT_INO: u64 = 1;

/// Bits of the inode number left for the real inode number; the bits above
/// select the layer filesystem, as the kernel's `xino` does.
const INO_BITS: u32 = 56;
/// The top bit marks numbers that did not fit and were hashed instead.
const MAX_FS_INDEX: usize = (1 << (63 - INO_BITS)) - 1;

/// Maps (layer, real inode number) to a union inode number.
#[derive(Debug)]
pub struct InoMap {
    /// Per layer: its filesystem's index among the distinct filesystems of the
    /// stack (in layer order), and its device number.
    layer_fs: Vec<(usize, u64)>,
}

impl InoMap {
    pub fn new(layers: &[Layer]) -> Self {
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let layer_fs = layers
            .iter()
            .map(|l| {
                let next = seen.len();
                (*seen.entry(l.dev()).or_insert(next), l.dev())
            })
            .collect();
        InoMap { layer_fs }
    }

    pub fn ino(&self, layer: usize, real_ino: u64) -> u64 {
        let (fs, dev) = self.layer_fs[layer];
        if fs <= MAX_FS_INDEX && real_ino < (1 << INO_BITS) {
            let ino = ((fs as u64) << INO_BITS) | real_ino;
            if ino != ROOT_INO && ino != 0 {
                return ino;
            }
        }
        let mut h = DefaultHasher::new();
        (dev, real_ino).hash(&mut h);
        (1 << 63) | (h.finish() & ((1 << 63) - 1))
    }
}

/// A directory of one layer that contributes to a union directory.
#[derive(Debug)]
pub struct LayerDir {
    pub layer: usize,
    pub fd: Arc<OwnedFd>,
}

#[derive(Debug)]
pub enum NodeBody {
    /// A union directory: its layers, top first, cut below the first opaque one.
    Dir { layers: Vec<LayerDir>, parent: u64 },
    /// Anything else: it lives in exactly one layer, as `name` in `dir`.
    Leaf {
        layer: usize,
        dir: Arc<OwnedFd>,
        name: CString,
    },
}

#[derive(Debug)]
pub struct Node {
    pub attr: Attr,
    pub body: NodeBody,
    lookups: AtomicU64,
    /// Filtered xattr name list, read once: lower layers never change.
    pub xattr_names: OnceLock<Vec<u8>>,
}

impl Node {
    pub fn new(attr: Attr, body: NodeBody) -> Self {
        Node {
            attr,
            body,
            lookups: AtomicU64::new(0),
            xattr_names: OnceLock::new(),
        }
    }

    pub fn ino(&self) -> u64 {
        self.attr.ino
    }

    /// The real entry that carries this node's metadata: a directory fd and a
    /// name in it (`.` for a directory itself).
    pub fn location(&self) -> (BorrowedFd<'_>, &std::ffi::CStr) {
        match &self.body {
            NodeBody::Dir { layers, .. } => (layers[0].fd.as_fd(), c"."),
            NodeBody::Leaf { dir, name, .. } => (dir.as_fd(), name.as_c_str()),
        }
    }

    pub fn dir_layers(&self) -> Result<&[LayerDir]> {
        match &self.body {
            NodeBody::Dir { layers, .. } => Ok(layers),
            NodeBody::Leaf { .. } => Err(Error::NotDir),
        }
    }
}

/// The inodes the kernel currently knows, with their lookup counts.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
}

impl NodeTable {
    pub fn insert_root(&self, node: Node) {
        // The root is never forgotten.
        node.lookups.store(u64::MAX / 2, Ordering::Relaxed);
        self.nodes.insert(ROOT_INO, Arc::new(node));
    }

    pub fn get(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|n| n.clone())
            .ok_or(Error::StaleInode(ino))
    }

    /// Counts one more kernel reference to `ino` if it is known.
    pub fn remember_known(&self, ino: u64) -> Option<Arc<Node>> {
        match self.nodes.entry(ino) {
            Entry::Occupied(e) => {
                e.get().lookups.fetch_add(1, Ordering::Relaxed);
                Some(e.get().clone())
            }
            Entry::Vacant(_) => None,
        }
    }

    /// Counts one more kernel reference, inserting `node` if its number is new.
    pub fn remember(&self, node: Node) -> Arc<Node> {
        match self.nodes.entry(node.ino()) {
            Entry::Occupied(e) => {
                e.get().lookups.fetch_add(1, Ordering::Relaxed);
                e.get().clone()
            }
            Entry::Vacant(v) => {
                node.lookups.store(1, Ordering::Relaxed);
                v.insert(Arc::new(node)).clone()
            }
        }
    }

    /// Drops `n` kernel references; the node goes away with the last one.
    pub fn forget(&self, ino: u64, n: u64) {
        let reached_zero = match self.nodes.get(&ino) {
            Some(node) => {
                let prev = node
                    .lookups
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                        Some(c.saturating_sub(n))
                    })
                    .unwrap_or(0);
                prev <= n
            }
            None => false,
        };
        if reached_zero {
            // Re-checked under the shard lock: a lookup may have raced us.
            self.nodes
                .remove_if(&ino, |_, node| node.lookups.load(Ordering::Relaxed) == 0);
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}
