//! Merged directory listings: every contributing layer read top-down, names
//! de-duplicated, whiteouts applied, markers hidden.
//!
//! There are no directory handles (the kernel is told that opendir is not
//! implemented, which saves two requests per directory opened, and caches
//! listings itself). A read from offset 0 takes a fresh listing, unless
//! nothing changed since the one kept was taken; the reads that go on from
//! a later offset reuse it while it is kept (see `listing_cache`). Offsets are
//! cookies derived from a keyed hash of each name, in whose order a listing
//! is kept, so a position stays meaningful in a listing taken again after a
//! change: no name is skipped or repeated, as in ext4's hashed directories.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::hash::{BuildHasher, RandomState};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

use hashbrown::HashTable;
use rustix::fs::FileType;

use super::Union;
use super::attr::{Attr, Kind};
use super::error::{Error, Result};
use super::inode::{LayerDir, Node, NodeBody};
use super::leaf_stat::Leaf;
use crate::layer::{self, LayerError};

/// Subdirectories looked up ahead by one thread at least...
const WARM_PER_THREAD: usize = 8;
/// ...by this many threads at most.
const WARM_THREADS: usize = 4;

/// What a reader of a directory wants of its files: their attributes (an
/// `ls -l`, and every reader until it shows otherwise), or only their names
/// and types (a `find`: the files of such a listing are not stat'ed unless
/// a whiteout could hide among them, and a later lookup stats each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Attrs,
    Names,
}

/// A listing made ahead of its reader, with the layer directories read.
pub(super) struct Ahead {
    layers: Vec<LayerDir>,
    listing: Arc<Listing>,
}

/// One entry of a listing, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    pub name: &'a OsStr,
    pub ino: u64,
    pub kind: Kind,
    /// For a non-directory: which of the directory's layers holds it, and
    /// its attributes, so that readdirplus needs no second lookup (see
    /// [`Union::lookup_listed`] for when they may be used).
    leaf: Option<&'a (usize, Attr)>,
    /// For a non-directory of a lower layer: which of the directory's layers
    /// holds it, kept when its attributes are not.
    source: Option<usize>,
}

/// 20 bytes per entry (packed: a 100k-entry listing is held while the
/// kernel holds a node for each entry; fields are only ever copied out).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Listed {
    ino: u64,
    /// Its offset (see [`Listing::order_by_cookie`]).
    cookie: u32,
    /// Where the name starts in [`Listing::names`] (it ends at a NUL).
    name_start: u32,
    /// The kind in the low bits; above them [`SOURCE_FLAG`], and above
    /// that one more than the index into [`Listing::leaves`] or, with the
    /// flag, than the layer holding the entry; or 0.
    kind_leaf: u32,
}

const KIND_BITS: u32 = 3;
const SOURCE_FLAG: u32 = 1 << KIND_BITS;
const TAIL_SHIFT: u32 = KIND_BITS + 1;

/// Names' cookies: after "." and "..", and below 2^31 however many equal
/// hashes push them up (up to 64M names): a 32-bit program's readdir fails
/// with EOVERFLOW on an offset its `off_t` cannot hold, so no offset needs
/// more than 31 bits, as ext4 gives such programs. Equal hashes are then
/// not rare in a big directory; they only take the next free values.
const FIRST_NAME_COOKIE: u32 = 3;
const COOKIE_SPAN: u64 = (1 << 31) - (1 << 26);

impl Listed {
    fn kind(&self) -> Kind {
        Kind::from_index(self.kind_leaf & ((1 << KIND_BITS) - 1))
    }

    fn tail(&self) -> Option<usize> {
        (self.kind_leaf >> TAIL_SHIFT)
            .checked_sub(1)
            .map(|l| l as usize)
    }

    fn leaf(&self) -> Option<usize> {
        self.tail().filter(|_| self.kind_leaf & SOURCE_FLAG == 0)
    }

    fn source(&self) -> Option<usize> {
        self.tail().filter(|_| self.kind_leaf & SOURCE_FLAG != 0)
    }
}

/// A merged directory listing, compact: a directory of 100k entries is read
/// once per pass of a reader and held while the kernel reads it.
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

    /// Entry `i`.
    pub fn get(&self, i: usize) -> Option<DirEntry<'_>> {
        let e = self.entries.get(i)?;
        let leaf = e.leaf().and_then(|l| self.leaves.get(l));
        Some(DirEntry {
            name: OsStr::from_bytes(self.name(i)),
            ino: { e.ino },
            kind: e.kind(),
            leaf,
            source: leaf.map(|&(s, _)| s).or(e.source()),
        })
    }

    /// The entries after position `offset` (0, or the offset reported with
    /// an entry), each with its offset.
    pub fn entries_after(&self, offset: u64) -> impl Iterator<Item = (u64, DirEntry<'_>)> {
        let start = self
            .entries
            .partition_point(|e| u64::from(e.cookie) <= offset);
        (start..self.len()).filter_map(|i| Some((u64::from(self.entries[i].cookie), self.get(i)?)))
    }

    /// Whether a reader at `offset` has seen every entry.
    fn read_to_end(&self, offset: u64) -> bool {
        self.entries
            .last()
            .is_none_or(|e| u64::from(e.cookie) <= offset)
    }

    /// Puts the entries in cookie order and gives each its cookie: "." and
    /// ".." come first (1 and 2), then the names by a keyed hash of each (the
    /// key is the mount's: names cannot be chosen to collide). Equal hashes,
    /// ordered by name, take the next free cookies.
    fn order_by_cookie(&mut self, key: &RandomState) {
        for i in 0..self.len() {
            self.entries[i].cookie = match i {
                0 | 1 => i as u32 + 1,
                _ => FIRST_NAME_COOKIE + (key.hash_one(self.name(i)) % COOKIE_SPAN) as u32,
            };
        }
        // In place: a listing of 100k entries is not copied to be sorted.
        let names = &self.names;
        self.entries.sort_unstable_by(|a, b| {
            let name = |e: &Listed| name_at(names, e.name_start);
            let (ca, cb) = (a.cookie, b.cookie);
            ca.cmp(&cb).then_with(|| name(a).cmp(name(b)))
        });
        let mut last: u32 = 0;
        for e in &mut self.entries {
            last = { e.cookie }.max(last.saturating_add(1));
            e.cookie = last;
        }
    }

    fn name(&self, i: usize) -> &[u8] {
        name_at(&self.names, self.entries[i].name_start)
    }

    /// Gives back what the vectors grew beyond their contents (up to half of
    /// a big listing).
    fn shrink(&mut self) {
        self.names.shrink_to_fit();
        self.entries.shrink_to_fit();
        self.leaves.shrink_to_fit();
    }

    fn push(&mut self, name: &[u8], ino: u64, kind: Kind, leaf: Option<(usize, Attr)>) {
        let name_start = self.names.len() as u32;
        self.names.extend_from_slice(name);
        self.names.push(0);
        // (An entry beyond what the bits hold is looked up instead.)
        let tail = match leaf {
            Some(l) if self.leaves.len() < (u32::MAX >> TAIL_SHIFT) as usize => {
                self.leaves.push(l);
                self.leaves.len() as u32
            }
            _ => 0,
        };
        self.entries.push(Listed {
            ino,
            cookie: 0,
            name_start,
            kind_leaf: kind as u32 | tail << TAIL_SHIFT,
        });
    }

    /// Like [`Listing::push`] for an entry of lower layer `source`, whose
    /// attributes are not kept.
    fn push_from(&mut self, name: &[u8], ino: u64, kind: Kind, source: usize) {
        self.push(name, ino, kind, None);
        if let (Some(e), Ok(tail)) = (self.entries.last_mut(), u32::try_from(source + 1))
            && tail <= u32::MAX >> TAIL_SHIFT
        {
            e.kind_leaf |= SOURCE_FLAG | tail << TAIL_SHIFT;
        }
    }
}

/// The NUL-terminated name at `start` of a listing's name buffer.
fn name_at(names: &[u8], start: u32) -> &[u8] {
    let name = names.get(start as usize..).unwrap_or_default();
    match name.iter().position(|&b| b == 0) {
        Some(end) => &name[..end],
        None => name,
    }
}

impl Union {
    /// The listing of directory `ino` for a read from `offset` on (see the
    /// module comment).
    pub fn readdir(&self, ino: u64, offset: u64, want: Want) -> Result<Arc<Listing>> {
        if let Some(listing) = self.kept_listing(ino, offset) {
            return Ok(listing);
        }
        if offset == 0 {
            self.lookahead.claim(ino);
            if let Some(listing) = self.kept_listing(ino, offset) {
                return Ok(listing);
            }
        }
        let node = self.nodes.get(ino)?;
        let stamp = self.listings.stamp();
        let mut listing = self.list(&node, want)?;
        listing.order_by_cookie(self.listings.key());
        let listing = Arc::new(listing);
        if !listing.read_to_end(offset) {
            self.listings.insert(ino, listing.clone(), stamp);
        }
        Ok(listing)
    }

    fn kept_listing(&self, ino: u64, offset: u64) -> Option<Arc<Listing>> {
        let listing = self.listings.get(ino, offset == 0)?;
        if listing.read_to_end(offset) {
            self.listings.read_through(ino, &listing);
        }
        Some(listing)
    }

    /// The node of a listed entry, counting one kernel reference, as
    /// [`Union::lookup`] would give it. A non-directory needs no layer
    /// access if the listing kept its attributes, else one stat in the
    /// layer that holds it (a lookup would look in every layer above it
    /// first, and in a big directory those misses cost the most).
    /// `want` is what the reader wants of the files of the subdirectories
    /// it is handed (which are listed ahead for it).
    pub fn lookup_listed(
        &self,
        parent: u64,
        entry: &DirEntry<'_>,
        want: Want,
    ) -> Result<Arc<Node>> {
        let dir_node = self.nodes.get(parent)?;
        let name = super::lookup::checked_name(entry.name)?;
        if entry.kind == Kind::Dir {
            let node = self.lookup_in(&dir_node, name)?;
            if node.is_dir() {
                self.lookahead
                    .push(parent, node.ino(), self.listings.changes(), want);
            }
            return Ok(node);
        }
        let listed = match (entry.leaf, entry.source) {
            (Some(&leaf), _) => Some(leaf),
            (None, Some(source)) if self.listed_dir_is_current(&dir_node) => self
                .listed_attr(&dir_node, source, &name, entry.ino)
                .map(|attr| (source, attr)),
            _ => None,
        };
        let Some((source, attr)) = listed.filter(|(_, attr)| {
            self.upper.is_none() || self.listed_leaf_is_current(&dir_node, attr)
        }) else {
            return self.lookup_in(&dir_node, name);
        };
        if let Some(node) = self.nodes.remember_known(entry.ino) {
            node.relocate(dir_node, &name);
            return Ok(node);
        }
        // Every layer here is a lower one. (The one layer directory is
        // taken, not a copy of all: this runs for every entry of a
        // readdirplus.)
        let body = match &dir_node.state().body {
            NodeBody::Dir { layers } => {
                let ld = layers.get(source).ok_or(Error::NotFound)?;
                Union::lower_leaf(ld.layer, &ld.fd)
            }
            _ => return Err(Error::NotDir),
        };
        Ok(self
            .nodes
            .remember(Node::new(Some(dir_node), &name, body, &attr)))
    }

    /// Whether a listed lower file of a writable union is still what its
    /// name shows. A listing may be older than the tree, but every change
    /// under a directory (a copy-up, a new name, a whiteout) first gives it an
    /// upper directory, and its node takes that into its layers before the
    /// change is made: a directory that has none now has changed nothing
    /// since it was listed. (A file copied up has a node the kernel holds,
    /// which is taken instead.) Another name of a hard-linked file may have
    /// been copied up elsewhere; a lookup joins it to that copy.
    fn listed_leaf_is_current(&self, dir: &Node, attr: &Attr) -> bool {
        attr.nlink <= 1 && self.listed_dir_is_current(dir)
    }

    /// Whether directory `dir` has the layers it was listed with: it has no
    /// upper layer (the only one it can gain).
    fn listed_dir_is_current(&self, dir: &Node) -> bool {
        matches!(&dir.state().body, NodeBody::Dir { layers }
            if layers.first().is_some_and(|l| !self.is_upper(l.layer)))
    }

    /// The attributes of `name`, found in layer `source` of directory `dir`
    /// when it was listed as `ino`; `None` if that cannot be had (a lookup
    /// then finds out why).
    fn listed_attr(&self, dir: &Node, source: usize, name: &CString, ino: u64) -> Option<Attr> {
        // (The node's lock is not held across the stat.)
        let (layer, fd) = match &dir.state().body {
            NodeBody::Dir { layers } => {
                let ld = layers.get(source)?;
                (ld.layer, ld.fd.clone())
            }
            _ => return None,
        };
        let st = layer::stat_at(fd.as_fd(), name).ok()?;
        // (Listed by name, a lookup takes it for a whiteout.)
        if layer::is_overlay_whiteout(fd.as_fd(), name, &st) {
            return None;
        }
        let st = self.logical(layer, fd.as_fd(), name, st);
        Attr::from_stat(ino, &st).filter(|a| a.kind != Kind::Dir)
    }

    /// Lists directory `ino` ahead of its reader (see `lookahead`), unless
    /// a name in it changed since it was asked for (its names are changing:
    /// the listing would be stale before it is read), a listing is kept
    /// already, or the directory is big.
    pub(super) fn list_ahead(&self, ino: u64, changes: u64, want: Want) -> Option<Ahead> {
        if self.listings.changed_since(ino, changes) || self.listings.holds_current(ino) {
            return None;
        }
        let node = self.nodes.get(ino).ok()?;
        let layers = node.dir_layers().ok()?;
        let bytes: i64 = layers
            .iter()
            .map(|ld| layer::stat_self(ld.fd.as_fd()).map_or(i64::MAX / 64, |st| st.st_size))
            .sum();
        if bytes > super::lookahead::MAX_DIR_BYTES {
            return None;
        }
        let stamp = self.listings.stamp();
        let listing = match self.list(&node, want) {
            Ok(mut listing) => {
                listing.order_by_cookie(self.listings.key());
                Arc::new(listing)
            }
            Err(e) => {
                tracing::debug!(ino, error = %e, "cannot list ahead");
                return None;
            }
        };
        self.listings.insert(ino, listing.clone(), stamp);
        Some(Ahead { layers, listing })
    }

    /// Looks up the subdirectories of a listing made ahead in each layer,
    /// as its reader's readdirplus will: their inodes lie elsewhere on disk
    /// than the files' the listing read, and each would be read while the
    /// reader waits. Several threads share them, each waiting for its own
    /// disk reads (the reader takes them in order: so do the threads).
    pub(super) fn warm_subdirs(&self, ahead: &Ahead) {
        let Ahead { layers, listing } = ahead;
        let names: Vec<CString> = (0..listing.len())
            .filter_map(|i| listing.get(i))
            .skip(2)
            .filter(|e| e.kind == Kind::Dir)
            .filter_map(|e| super::lookup::checked_name(e.name).ok())
            .collect();
        let look = |k: usize, step: usize| {
            for name in names.iter().skip(k).step_by(step) {
                if let Ok(Some(top)) = self.find_top(layers, name) {
                    let _ = self.collect_dirs(&layers[top.index..], name);
                }
            }
        };
        let threads = (names.len() / WARM_PER_THREAD).clamp(1, WARM_THREADS);
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads)
                .map(|k| {
                    let started =
                        std::thread::Builder::new().spawn_scoped(scope, move || look(k, threads));
                    (k, started)
                })
                .collect();
            look(0, threads);
            for (k, helper) in helpers {
                // A thread that could not start leaves its share to this one.
                if helper.map(|h| h.join()).is_err() {
                    look(k, threads);
                }
            }
        });
    }

    pub(crate) fn list(&self, node: &Node, want: Want) -> Result<Listing> {
        let layers = node.dir_layers()?;
        let parent = node.parent().map_or(super::ROOT_INO, |p| p.ino());
        let mut entries = Listing::default();
        entries.push(b".", node.ino(), Kind::Dir, None);
        entries.push(b"..", parent, Kind::Dir, None);
        // Attributes the listing may answer readdirplus with (see
        // `listed_leaf_is_current`): a writable union's only in a directory
        // without an upper layer, and not for all of a big one.
        let keep_attrs = match self.upper {
            None => usize::MAX,
            Some(_) if layers.first().is_none_or(|l| self.is_upper(l.layer)) => 0,
            Some(_) => WRITABLE_LEAVES,
        };
        // Names already decided by a higher layer: shown (indexes into the
        // listing, which holds their names), or whited out.
        let mut decided = Decided::default();
        // Set once a batch of stats is shared by two threads.
        let mut untied = None;
        for (source, ld) in layers.iter().enumerate() {
            let dir = ld.fd.as_fd();
            let lower = !self.is_upper(ld.layer);
            let mut pass = LayerPass {
                union: self,
                source,
                ld,
                keep_attrs,
                xattr_whiteouts: OnceLock::new(),
                pending: Vec::new(),
                whiteouts: Vec::new(),
            };
            layer::read_dir(dir, |name, ftype, real_ino| {
                let bytes = name.to_bytes();
                if layer::is_marker_name(bytes) {
                    if let Some(target) = layer::oci_whiteout_target(name) {
                        pass.whiteouts.push(target.to_vec());
                    }
                    return Ok(());
                }
                if decided.contains(&entries, bytes) {
                    return Ok(());
                }
                // A whiteout this mount made is a link of its shared one:
                // known by its inode number, without a stat.
                if !lower
                    && let Some(upper) = &self.upper
                    && upper.is_shared_whiteout(ftype, real_ino)
                {
                    pass.whiteouts.push(bytes.to_vec());
                    return Ok(());
                }
                let plain = match ftype {
                    FileType::RegularFile => Some(Kind::File),
                    FileType::Symlink => Some(Kind::Symlink),
                    _ => None,
                };
                // Files that cannot be whiteouts here are named without a
                // stat when their attributes are not wanted, or not kept
                // (a lookup stats each): the stats are most of a cold
                // listing's time (each reads an inode from disk).
                let unwanted = want == Want::Names
                    || entries.leaves.len() + pass.pending.len() >= pass.keep_attrs;
                let unstated = || {
                    lower
                        && unwanted
                        && !*pass
                            .xattr_whiteouts
                            .get_or_init(|| layer::holds_xattr_whiteouts(dir))
                };
                if let Some(kind) = plain.filter(|_| unstated()) {
                    let ino = self.entry_ino(ld.layer, dir, name, real_ino);
                    entries.push_from(bytes, ino, kind, source);
                    decided.shown(&entries, entries.len() - 1);
                    return Ok(());
                }
                if ftype != FileType::Directory {
                    pass.pending.push(name.to_owned());
                    if pass.pending.len() >= STAT_BATCH {
                        pass.flush(&mut entries, &mut decided, &mut untied)?;
                    }
                    return Ok(());
                }
                let ino = self.entry_ino(ld.layer, dir, name, real_ino);
                entries.push(bytes, ino, Kind::Dir, None);
                decided.shown(&entries, entries.len() - 1);
                Ok(())
            })?;
            pass.flush(&mut entries, &mut decided, &mut untied)?;
            // An OCI whiteout hides only lower layers, so this layer's
            // whiteouts apply once all of it is read.
            decided.hidden.extend(pass.whiteouts);
        }
        entries.shrink();
        Ok(entries)
    }
}

/// Non-directories are stat'ed in batches of this many (see
/// [`Union::stat_leaves`]).
const STAT_BATCH: usize = 1024;

/// A listing in a writable union keeps the attributes of at most this many
/// files (about 100 KiB): the kernel also holds a node for each entry of a
/// big directory it lists with readdirplus, and the daemon's peak size counts
/// both.
const WRITABLE_LEAVES: usize = 1024;

/// One layer directory being read into a listing: its non-directories
/// waiting to be stat'ed, and the whiteouts found in it.
struct LayerPass<'a> {
    union: &'a Union,
    source: usize,
    ld: &'a LayerDir,
    /// How many attributes the listing may keep in all.
    keep_attrs: usize,
    /// See [`layer::holds_xattr_whiteouts`]; asked once needed.
    xattr_whiteouts: OnceLock<bool>,
    pending: Vec<CString>,
    whiteouts: Vec<Vec<u8>>,
}

impl LayerPass<'_> {
    fn flush(
        &mut self,
        entries: &mut Listing,
        decided: &mut Decided,
        untied: &mut Option<crate::sys::Unpinned>,
    ) -> std::result::Result<(), LayerError> {
        let dir = self.ld.fd.as_fd();
        let leaves = self.union.stat_leaves(
            self.ld.layer,
            dir,
            &self.pending,
            &self.xattr_whiteouts,
            untied,
        )?;
        for (name, leaf) in self.pending.drain(..).zip(leaves) {
            match leaf {
                Leaf::Whiteout => self.whiteouts.push(name.into_bytes()),
                Leaf::Unknown => {}
                Leaf::Unfound { ino } => {
                    entries.push(name.to_bytes(), ino, Kind::File, None);
                    decided.shown(entries, entries.len() - 1);
                }
                Leaf::Shown { ino, attr } => {
                    let keep = entries.leaves.len() < self.keep_attrs && attr.kind != Kind::Dir;
                    if keep {
                        entries.push(name.to_bytes(), ino, attr.kind, Some((self.source, attr)));
                    } else if attr.kind != Kind::Dir && !self.union.is_upper(self.ld.layer) {
                        entries.push_from(name.to_bytes(), ino, attr.kind, self.source);
                    } else {
                        entries.push(name.to_bytes(), ino, attr.kind, None);
                    }
                    decided.shown(entries, entries.len() - 1);
                }
            }
        }
        Ok(())
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
impl Listing {
    /// A listing of `n` plain files, for tests of what holds listings.
    pub(super) fn of_files(n: usize) -> Listing {
        let mut l = Listing::default();
        for i in 0..n {
            l.push(format!("f{i}").as_bytes(), 10 + i as u64, Kind::File, None);
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn attr(ino: u64) -> Attr {
        let t = super::super::Time { sec: 1, nsec: 2 };
        Attr {
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
            atime: t,
            mtime: t,
            ctime: t,
        }
    }

    fn listing(key: &RandomState, names: &[&str]) -> Listing {
        let mut l = Listing::default();
        l.push(b".", 1, Kind::Dir, None);
        l.push(b"..", 1, Kind::Dir, None);
        for (i, n) in names.iter().enumerate() {
            let ino = 100 + i as u64;
            match i % 3 {
                0 => l.push(n.as_bytes(), ino, Kind::Dir, None),
                1 => l.push(n.as_bytes(), ino, Kind::Symlink, Some((i, attr(ino)))),
                _ => l.push(n.as_bytes(), ino, Kind::BlockDev, None),
            }
        }
        l.order_by_cookie(key);
        l.shrink();
        l
    }

    #[test]
    fn entries_keep_kind_and_leaf_in_cookie_order() {
        assert_eq!(std::mem::size_of::<Listed>(), 20);
        let key = RandomState::new();
        let names: Vec<String> = (0..500).map(|i| format!("name-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let l = listing(&key, &names);
        let all: Vec<_> = l.entries_after(0).collect();
        assert_eq!(all.len(), 502);
        assert_eq!((all[0].0, all[0].1.name), (1, OsStr::new(".")));
        assert_eq!((all[1].0, all[1].1.name), (2, OsStr::new("..")));
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "cookies increase");
        assert!(all.iter().all(|(c, _)| *c < 1 << 31));
        for (_, e) in &all[2..] {
            let i = names.iter().position(|n| OsStr::new(n) == e.name).unwrap();
            assert_eq!(e.ino, 100 + i as u64);
            let (kind, leaf) = match i % 3 {
                0 => (Kind::Dir, None),
                1 => (Kind::Symlink, Some((i, 100 + i as u64))),
                _ => (Kind::BlockDev, None),
            };
            assert_eq!((e.kind, e.leaf.map(|&(s, a)| (s, a.ino))), (kind, leaf));
        }
        let (mid, _) = all[250];
        assert_eq!(l.entries_after(mid).count(), 251);
        assert!(!l.read_to_end(mid));
        assert!(l.read_to_end(all[501].0));
    }

    /// A reader that goes on in a listing taken again after names were added
    /// and removed sees every name that was there all along exactly once.
    #[test]
    fn a_position_survives_a_new_listing() {
        let key = RandomState::new();
        let before: Vec<String> = (0..300).map(|i| format!("f{i}")).collect();
        let old = listing(&key, &before.iter().map(String::as_str).collect::<Vec<_>>());
        let first: Vec<_> = old.entries_after(0).take(150).collect();
        let pos = first.last().unwrap().0;
        let after: Vec<String> = (100..400).map(|i| format!("f{i}")).collect();
        let new = listing(&key, &after.iter().map(String::as_str).collect::<Vec<_>>());
        let mut seen: Vec<String> = first
            .iter()
            .chain(new.entries_after(pos).collect::<Vec<_>>().iter())
            .map(|(_, e)| e.name.to_string_lossy().into_owned())
            .collect();
        let total = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), total, "no name twice");
        let seen: BTreeSet<String> = seen.into_iter().collect();
        for kept in (100..300).map(|i| format!("f{i}")) {
            assert!(seen.contains(&kept), "{kept} was skipped");
        }
    }
}
