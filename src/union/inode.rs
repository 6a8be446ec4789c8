//! Union inodes: stable inode numbers and the table of inodes the kernel holds.
//!
//! An inode number is derived from the real object it shows — the layer
//! filesystem and the real inode number — never from a counter. So it is the
//! same for the life of the mount, after a remount, between readdir and stat,
//! and for every hard link of one file. A copied-up entry keeps the number of
//! its origin (recorded in a private xattr). The FUSE node id is the same number.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::attr::{Attr, Kind, PackedAttr};
use super::error::{Error, Result};
use super::name::Name;
use crate::layer::Layer;

/// FUSE's fixed node id of the mount root.
pub const ROOT_INO: u64 = 1;

/// The xattr a write to a file removes.
const CAPABILITY: &[u8] = b"security.capability";
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";

/// Bits of the inode number left for the real inode number; the bits above
/// select the layer filesystem, as the kernel's `xino` does.
const INO_BITS: u32 = 56;
/// The top bit marks numbers that did not fit and were hashed instead. The
/// last index is never given: the FUSE adapter makes its extra node ids
/// there (`fuse::alias`).
const MAX_FS_INDEX: usize = (1 << (63 - INO_BITS)) - 2;

/// Whether `ino` lies where union inode numbers never are (see
/// [`MAX_FS_INDEX`]): a recorded origin there is not one of ours.
pub fn is_reserved_ino(ino: u64) -> bool {
    ino >> INO_BITS == MAX_FS_INDEX as u64 + 1
}

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
#[derive(Debug, Clone)]
pub struct LayerDir {
    pub layer: usize,
    pub fd: Arc<OwnedFd>,
    /// Its names, read once on demand (see [`LayerDir::may_hold`]).
    names: Arc<OnceLock<Option<NameIndex>>>,
    /// Made by this mount with nothing below it: no OCI whiteout can be in
    /// it, since one is written only over a name a lower layer has.
    made_here: bool,
}

/// The names in a lower layer directory, markers included. `None` for a
/// directory too big to keep them all.
type NameIndex = HashSet<Box<[u8]>>;

/// Directories with more entries than this are probed name by name.
const MAX_INDEXED: usize = 16 * 1024;

impl LayerDir {
    pub fn new(layer: usize, fd: Arc<OwnedFd>) -> Self {
        LayerDir {
            layer,
            fd,
            names: Arc::default(),
            made_here: false,
        }
    }

    /// An upper directory just made by this mount, with no layer below it.
    pub fn made_here(layer: usize, fd: Arc<OwnedFd>) -> Self {
        LayerDir {
            made_here: true,
            ..LayerDir::new(layer, fd)
        }
    }

    /// Whether a lookup here must probe for `.wh.NAME`: one may be in this
    /// directory, and `matters` (it would hide a layer below, or the caller
    /// must tell a whiteout from nothing).
    pub fn probes_oci_whiteouts(&self, matters: bool) -> bool {
        matters && !self.made_here
    }

    /// False when this (lower, never changing) directory surely has neither
    /// `name` nor its OCI whiteout: its names are read once, so that a lookup
    /// in a union directory of many layers skips the layers without the name
    /// instead of probing each one.
    pub fn may_hold(&self, name: &CStr) -> bool {
        let Some(names) = self.names.get_or_init(|| read_names(self.fd.as_fd())) else {
            return true;
        };
        if names.contains(name.to_bytes()) {
            return true;
        }
        let wh = [crate::layer::OCI_WHITEOUT_PREFIX, name.to_bytes()].concat();
        names.contains(wh.as_slice())
    }
}

fn read_names(dir: std::os::fd::BorrowedFd<'_>) -> Option<NameIndex> {
    let mut names = NameIndex::new();
    let read = crate::layer::read_dir(dir, |name, _, _| {
        if names.len() >= MAX_INDEXED {
            return Err(crate::layer::LayerError::Io(std::io::Error::other(
                "too many",
            )));
        }
        names.insert(name.to_bytes().into());
        Ok(())
    });
    read.ok().map(|()| names)
}

#[derive(Debug, Clone)]
pub enum NodeBody {
    /// A union directory: its layers, top (upper, if any) first, cut below
    /// the first opaque one.
    Dir { layers: Box<[LayerDir]> },
    /// A non-directory that lives in a lower layer, in `dir` under the
    /// node's name (see [`NodeState::lower_file`]).
    Lower {
        layer: u32,
        /// Whether `data` was looked for: on first open or copy-up, not at
        /// lookup, which must stay cheap for the files never opened.
        checked: bool,
        dir: Arc<OwnedFd>,
        /// For a metadata-only copy in a lower layer (a kernel or stratafs
        /// upper stacked as a lower): the file below holding its data.
        data: Option<Box<LowerData>>,
    },
    /// A non-directory in the upper layer, held by an O_PATH fd so that
    /// renames, hard links and unlinks of its names never lose it. A
    /// metadata-only copy keeps its data in a lower file until first written.
    Upper {
        fd: Arc<OwnedFd>,
        data: Option<Box<LowerData>>,
    },
}

/// The lower file holding the data of a metadata-only copy.
#[derive(Debug, Clone)]
pub struct LowerData {
    pub layer: usize,
    pub dir: Arc<OwnedFd>,
    pub name: CString,
    /// Its path from the root, as recorded in the copy's redirect.
    pub path: Vec<CString>,
}

/// The names of a node besides its primary one, with their directories.
type OtherNames = Vec<(Arc<Node>, CString)>;

/// What few nodes have, boxed so that the others pay one pointer for it.
#[derive(Debug, Default)]
struct Extra {
    /// Other names of a non-directory seen in this mount (hard links in a
    /// lower layer): a copy-up links them to the copy too.
    others: OtherNames,
    /// A lower body's name in its layer directory, once the node's own name
    /// changed (a hard link reached by another name, or the first name
    /// unlinked).
    lower_name: Option<CString>,
    /// The filtered xattr name list, cached until the node changes (see
    /// [`Node::cache_xattrs`]), when not empty.
    xattr_names: Option<Box<[u8]>>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.others.is_empty() && self.lower_name.is_none() && self.xattr_names.is_none()
    }
}

/// What may change about a node: where it is, what backs it, its attributes.
/// Kept small: the kernel may hold a node for every file of a big tree.
#[derive(Debug)]
pub struct NodeState {
    /// The directory it was last seen in, and its name there (for copy-up).
    pub parent: Option<Arc<Node>>,
    pub name: Name,
    extra: Option<Box<Extra>>,
    pub body: NodeBody,
    /// Last known attributes; lower-only entries never change.
    attr: PackedAttr,
}

impl NodeState {
    pub fn attr(&self, ino: u64) -> Attr {
        self.attr.unpack(ino)
    }

    pub fn kind(&self) -> Kind {
        self.attr.kind()
    }

    pub fn set_attr(&mut self, attr: &Attr) {
        self.attr = PackedAttr::pack(attr);
    }

    pub fn others(&self) -> &[(Arc<Node>, CString)] {
        self.extra.as_deref().map_or(&[], |e| e.others.as_slice())
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_default()
    }

    /// Drops the box once nothing is in it.
    fn tidy_extra(&mut self) {
        if self.extra.as_deref().is_some_and(Extra::is_empty) {
            self.extra = None;
        }
    }

    /// The file a lower node reads: its layer, the layer directory, and its
    /// name there.
    pub fn lower_file(&self) -> Option<(usize, &Arc<OwnedFd>, &CStr)> {
        match &self.body {
            NodeBody::Lower { layer, dir, .. } => Some((*layer as usize, dir, self.lower_name())),
            _ => None,
        }
    }

    /// The name of a lower body's file in its layer directory.
    pub fn lower_name(&self) -> &CStr {
        match self.extra.as_deref().and_then(|e| e.lower_name.as_deref()) {
            Some(name) => name,
            None => self.name.as_c_str(),
        }
    }

    /// Gives the node a new primary name, keeping what a lower body needs to
    /// find its file.
    fn rename_to(&mut self, name: Name) -> Name {
        if matches!(self.body, NodeBody::Lower { .. })
            && self.extra.as_ref().is_none_or(|e| e.lower_name.is_none())
        {
            let old = self.name.to_c_string();
            self.extra_mut().lower_name = Some(old);
        }
        std::mem::replace(&mut self.name, name)
    }
}

#[derive(Debug)]
pub struct Node {
    ino: u64,
    state: RwLock<NodeState>,
    lookups: AtomicU64,
    /// Counts changes of the xattr names, so that a reader can tell whether
    /// one came while it was reading; changed only under the state lock (it
    /// lives here, not in the state, only to pack with `copy_up`).
    xattr_generation: AtomicU32,
    /// Serialises copy-up of this node; never held while waiting for another node's.
    pub copy_up: Mutex<()>,
    /// Known to have no visible xattrs, as most files (`ls -l` asks every
    /// file for its ACL and security label). Changed only under the state
    /// lock, like `xattr_generation` (and here for the same reason).
    no_xattrs: AtomicBool,
}

impl Node {
    /// A node for `attr.ino`, reached as `name` in `parent`.
    pub fn new(parent: Option<Arc<Node>>, name: &CStr, body: NodeBody, attr: &Attr) -> Self {
        Node {
            ino: attr.ino,
            state: RwLock::new(NodeState {
                parent,
                name: Name::new(name),
                extra: None,
                body,
                attr: PackedAttr::pack(attr),
            }),
            lookups: AtomicU64::new(0),
            xattr_generation: AtomicU32::new(0),
            copy_up: Mutex::new(()),
            no_xattrs: AtomicBool::new(false),
        }
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn state(&self) -> RwLockReadGuard<'_, NodeState> {
        self.state.read()
    }

    pub fn update(&self, f: impl FnOnce(&mut NodeState)) {
        f(&mut self.state.write());
    }

    pub fn attr(&self) -> Attr {
        self.state.read().attr(self.ino)
    }

    pub fn parent(&self) -> Option<Arc<Node>> {
        self.state.read().parent.clone()
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.state.read().body, NodeBody::Dir { .. })
    }

    pub fn dir_layers(&self) -> Result<Vec<LayerDir>> {
        match &self.state.read().body {
            NodeBody::Dir { layers } => Ok(layers.to_vec()),
            _ => Err(Error::NotDir),
        }
    }

    /// Records the path by which the kernel last reached this node; a
    /// non-directory remembers its other names too.
    pub fn relocate(&self, parent: Arc<Node>, name: &CStr) {
        let mut st = self.state.write();
        let same = |p: &Arc<Node>, n: &CStr| Arc::ptr_eq(p, &parent) && n == name;
        if st.parent.as_ref().is_some_and(|p| same(p, &st.name)) {
            return;
        }
        if let Some(extra) = &mut st.extra {
            extra.others.retain(|(p, n)| !same(p, n));
        }
        let is_dir = matches!(st.body, NodeBody::Dir { .. });
        let old_name = st.rename_to(Name::new(name));
        if let Some(old) = st.parent.replace(parent)
            && !is_dir
        {
            st.extra_mut().others.push((old, old_name.to_c_string()));
        }
        st.tidy_extra();
    }

    /// Whether the node lost its last name (it may still be open).
    pub fn is_detached(&self) -> bool {
        self.ino() != ROOT_INO && self.state.read().parent.is_none()
    }

    /// Forgets the name `name` in `parent` (unlinked, or replaced by a rename);
    /// with no name left, the node lives on only through open fds.
    pub fn detach(&self, parent: &Arc<Node>, name: &CStr) {
        let mut st = self.state.write();
        let same = |p: &Arc<Node>, n: &CStr| Arc::ptr_eq(p, parent) && n == name;
        if let Some(extra) = &mut st.extra {
            extra.others.retain(|(p, n)| !same(p, n));
        }
        if st.parent.as_ref().is_some_and(|p| same(p, &st.name)) {
            match st.extra.as_mut().and_then(|e| e.others.pop()) {
                Some((p, n)) => {
                    st.parent = Some(p);
                    st.rename_to(Name::from(n));
                }
                None => st.parent = None,
            }
        }
        st.tidy_extra();
    }

    pub fn forget_xattrs(&self) {
        let mut st = self.state.write();
        self.xattr_generation.fetch_add(1, Ordering::Relaxed);
        self.no_xattrs.store(false, Ordering::Relaxed);
        if let Some(extra) = &mut st.extra {
            extra.xattr_names = None;
        }
        st.tidy_extra();
    }

    /// Before a write: writes clear `security.capability` (the kernel kills it
    /// on the real file), so a cached list that may hold it is dropped; one
    /// known to lack it stays right.
    pub fn forget_xattrs_for_write(&self) {
        self.forget_xattrs_holding(&[CAPABILITY]);
    }

    /// After a setattr: chown and truncate kill `security.capability`, and
    /// chmod rewrites the access ACL, which the file system drops once the
    /// mode says all it said. None of them adds a name, so a cached list
    /// without those two stays right (the common case: no xattrs at all).
    pub fn forget_xattrs_for_setattr(&self) {
        self.forget_xattrs_holding(&[CAPABILITY, ACL_ACCESS]);
    }

    /// Drops the cached list unless it is known to hold none of `names`.
    fn forget_xattrs_holding(&self, names: &[&[u8]]) {
        let keep = {
            let st = self.state.read();
            self.no_xattrs.load(Ordering::Relaxed)
                || st
                    .extra
                    .as_deref()
                    .and_then(|e| e.xattr_names.as_deref())
                    .is_some_and(|list| !list.split(|b| *b == 0).any(|n| names.contains(&n)))
        };
        if !keep {
            self.forget_xattrs();
        }
    }

    /// The cached xattr name list, or the generation to pass to
    /// [`Node::cache_xattrs`] after reading it.
    pub fn cached_xattrs(&self) -> std::result::Result<Vec<u8>, u32> {
        let st = self.state.read();
        if self.no_xattrs.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let cached = st.extra.as_deref().and_then(|e| e.xattr_names.as_deref());
        cached
            .map(<[u8]>::to_vec)
            .ok_or_else(|| self.xattr_generation.load(Ordering::Relaxed))
    }

    /// Caches `list`, read at `generation`, unless the node changed since.
    pub fn cache_xattrs(&self, generation: u32, list: &[u8]) {
        let mut st = self.state.write();
        if self.xattr_generation.load(Ordering::Relaxed) != generation {
            return;
        }
        if list.is_empty() {
            self.no_xattrs.store(true, Ordering::Relaxed);
        } else {
            st.extra_mut().xattr_names = Some(list.into());
        }
    }
}

/// The inodes the kernel currently knows, with their lookup counts.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    /// Nodes dropped since the allocator was last trimmed.
    dropped: AtomicU64,
}

/// After this many nodes are dropped, free memory goes back to the system:
/// the daemon's size follows what the kernel holds.
const TRIM_EVERY: u64 = 8192;
/// Or after this many, once they are as many as half the nodes still held,
/// so that the tail of a mass forget is returned too.
const TRIM_MIN: u64 = 1024;

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

    /// Drops `n` kernel references; the node goes away with the last one
    /// (then true).
    pub fn forget(&self, ino: u64, n: u64) -> bool {
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
            let removed = self
                .nodes
                .remove_if(&ino, |_, node| node.lookups.load(Ordering::Relaxed) == 0);
            let dropped = match removed {
                Some(_) => self.dropped.fetch_add(1, Ordering::Relaxed) + 1,
                None => 0,
            };
            let gone = removed.is_some();
            let few_left = || dropped * 2 >= self.nodes.len() as u64;
            if dropped >= TRIM_EVERY || (dropped >= TRIM_MIN && few_left()) {
                self.dropped.store(0, Ordering::Relaxed);
                drop(removed);
                self.nodes.shrink_to_fit();
                crate::sys::trim();
            }
            return gone;
        }
        false
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the kernel holds a reference to `ino`.
    pub fn is_held(&self, ino: u64) -> bool {
        self.nodes.contains_key(&ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the FUSE adapter uses for its extra node ids
    /// (`fuse::alias`: index 0x7f) are reserved, and the index the union
    /// gives last is not.
    #[test]
    fn the_last_filesystem_index_is_reserved() {
        assert!(is_reserved_ino((0x7f << 56) | 1));
        assert!(!is_reserved_ino(((MAX_FS_INDEX as u64) << INO_BITS) | 1));
        assert!(!is_reserved_ino(1 << 63 | 5));
    }

    /// The kernel may hold a node for each of millions of files: a field
    /// added here costs its size that many times. With its `Arc` counts and
    /// malloc's header a node of 168 bytes takes a 192-byte block (one of 169
    /// to 184 bytes would take 208).
    #[test]
    fn a_node_stays_small() {
        let size = std::mem::size_of::<Node>();
        eprintln!(
            "Node: {size} bytes, NodeBody: {}",
            std::mem::size_of::<NodeBody>()
        );
        assert!(size <= 168, "Node grew to {size} bytes");
    }
}
