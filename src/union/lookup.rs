//! Lookup across layers: top-down; a whiteout or a non-directory ends the
//! search; a directory collects the same-named directories below it until an
//! opaque one.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::Union;
use super::attr::{Attr, Kind};
use super::error::{Error, Result};
use super::inode::{LayerDir, Node, NodeBody};
use crate::layer::{self, Presence, Redirect};

/// Redirects followed while resolving one directory: hostile layers could
/// chain them in a loop.
const MAX_REDIRECTS: u32 = 16;

/// From this many layers in a union directory, lookups use the lower
/// layers' name indexes.
const INDEX_MIN_LAYERS: usize = 8;

/// Validates a single name coming from the kernel.
pub(crate) fn checked_name(name: &OsStr) -> Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(Error::InvalidName);
    }
    if layer::is_marker_name(bytes) {
        return Err(Error::InvalidName);
    }
    if bytes.len() > 255 {
        return Err(Error::Io(std::io::Error::from_raw_os_error(
            libc::ENAMETOOLONG,
        )));
    }
    CString::new(bytes).map_err(|_| Error::InvalidName)
}

pub(crate) fn attr_of(ino: u64, st: &rustix::fs::Stat) -> Result<Attr> {
    Attr::from_stat(ino, st).ok_or_else(|| Error::Io(std::io::Error::from_raw_os_error(libc::EIO)))
}

/// The top-most real entry for a name in a union directory.
pub(crate) struct Top<'a> {
    pub index: usize,
    pub ld: &'a LayerDir,
    pub stat: rustix::fs::Stat,
}

/// What a search for a name in a union directory's layers found.
pub(crate) enum Found<'a> {
    Top(Top<'a>),
    /// The layer at this index (of those searched) whites the name out.
    WhiteoutAt(usize),
    Nothing,
}

impl Union {
    /// The union inode number of a real entry: a copied-up upper entry keeps
    /// the number of its origin.
    pub(crate) fn entry_ino(
        &self,
        layer: usize,
        dir: BorrowedFd<'_>,
        name: &CStr,
        real_ino: u64,
    ) -> u64 {
        if self.is_upper(layer)
            && let Some(origin) = self.read_origin(dir, name)
        {
            return origin;
        }
        self.inos.ino(layer, real_ino)
    }

    /// Finds the top-most entry for `name` among `layers`; `None` if absent
    /// or whited out.
    pub(crate) fn find_top<'a>(
        &self,
        layers: &'a [LayerDir],
        name: &CStr,
    ) -> Result<Option<Top<'a>>> {
        Ok(match self.search(layers, name, false)? {
            Found::Top(top) => Some(top),
            Found::WhiteoutAt(_) | Found::Nothing => None,
        })
    }

    /// [`Union::find_top`], telling a whiteout from nothing where
    /// `exact`; otherwise a whiteout in the bottom layer, which hides
    /// nothing, may be taken for nothing.
    pub(crate) fn search<'a>(
        &self,
        layers: &'a [LayerDir],
        name: &CStr,
        exact: bool,
    ) -> Result<Found<'a>> {
        // Deep stacks: most layers lack most names; their listings (read
        // once) say so without a probe each.
        let indexed = layers.len() >= INDEX_MIN_LAYERS;
        for (index, ld) in layers.iter().enumerate() {
            if indexed && !self.is_upper(ld.layer) && !ld.may_hold(name) {
                continue;
            }
            let oci = ld.probes_oci_whiteouts(exact || index + 1 < layers.len());
            match layer::probe(ld.fd.as_fd(), name, oci)? {
                Presence::Absent => continue,
                Presence::Whiteout => return Ok(Found::WhiteoutAt(index)),
                Presence::Entry(stat) => return Ok(Found::Top(Top { index, ld, stat })),
            }
        }
        Ok(Found::Nothing)
    }

    /// Whether a lower layer below `parent`'s upper directory shows `name`,
    /// i.e. whether removing it from upper needs a whiteout.
    pub(crate) fn lower_has(&self, parent: &Node, name: &CStr) -> Result<bool> {
        let layers = parent.dir_layers()?;
        let start = usize::from(layers.first().is_some_and(|ld| self.is_upper(ld.layer)));
        Ok(self.find_top(&layers[start..], name)?.is_some())
    }

    /// Looks `name` up in directory `parent` and counts one kernel reference
    /// to the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Arc<Node>> {
        let name = checked_name(name)?;
        let parent = self.nodes.get(parent)?;
        self.lookup_in(&parent, name)
    }

    pub(crate) fn lookup_in(&self, parent: &Arc<Node>, name: CString) -> Result<Arc<Node>> {
        let layers = parent.dir_layers()?;
        let Some(top) = self.find_top(&layers, &name)? else {
            return Err(Error::NotFound);
        };
        let ino = self.entry_ino(top.ld.layer, top.ld.fd.as_fd(), &name, top.stat.st_ino);
        if let Some(node) = self.nodes.remember_known(ino) {
            // A lower name of an inode already copied up joins the copy, so
            // that every name the kernel knows is in the upper layer.
            let copied = matches!(node.state().body, NodeBody::Upper { .. });
            if copied
                && !self.is_upper(top.ld.layer)
                && let Err(e) = self.shared_copy(parent, &name, ino, &top.stat)
            {
                self.nodes.forget(ino, 1);
                return Err(e);
            }
            node.relocate(parent.clone(), &name);
            if let Err(e) = self.refresh_attr(&node) {
                self.nodes.forget(ino, 1);
                return Err(e);
            }
            return Ok(node);
        }
        let st = self.logical(top.ld.layer, top.ld.fd.as_fd(), &name, top.stat);
        let mut attr = attr_of(ino, &st)?;
        let body = if attr.kind != Kind::Dir {
            if self.is_upper(top.ld.layer) {
                let body = self.upper_leaf(parent, top.ld.fd.as_fd(), &name, &top.stat)?;
                // A metadata-only copy is sparse: its blocks are the lower file's.
                if let NodeBody::Upper { data: Some(d), .. } = &body
                    && let Ok(lst) = layer::stat_at(d.dir.as_fd(), &d.name)
                {
                    attr.blocks = u64::try_from(lst.st_blocks).unwrap_or(0);
                }
                body
            } else if let Some((body, st)) = self.shared_copy(parent, &name, ino, &top.stat)? {
                // Another name of this lower inode was copied up: this one is that copy.
                attr = attr_of(ino, &st)?;
                body
            } else {
                Union::lower_leaf(top.ld.layer, &top.ld.fd)
            }
        } else {
            let dirs = self.collect_dirs(&layers[top.index..], &name)?;
            let shown = self.attr_dir(&dirs);
            if !Arc::ptr_eq(&shown.fd, &dirs[0].fd) {
                let st = layer::stat_self(shown.fd.as_fd())?;
                attr = attr_of(ino, &self.logical(shown.layer, shown.fd.as_fd(), c".", st))?;
            }
            // Like overlayfs: the link count of a directory merged from several
            // layers is not meaningful, so report 1 ("unknown", as find expects).
            if dirs.len() > 1 {
                attr.nlink = 1;
            }
            NodeBody::Dir {
                layers: dirs.into(),
            }
        };
        Ok(self
            .nodes
            .remember(Node::new(Some(parent.clone()), &name, body, &attr)))
    }

    /// The layer directories of union directory `name`, starting at the
    /// top-most layer in `layers` (which must hold a directory there).
    pub(crate) fn collect_dirs(&self, layers: &[LayerDir], name: &CStr) -> Result<Vec<LayerDir>> {
        self.collect_dirs_within(layers, name, MAX_REDIRECTS)
    }

    /// [`Self::collect_dirs`], following at most `budget` absolute redirects.
    /// A directory with a redirect takes its lower layers from the redirect's
    /// target instead of its own name: that is how a renamed directory keeps
    /// its lower contents, and the name it now has below is hidden.
    fn collect_dirs_within(
        &self,
        layers: &[LayerDir],
        name: &CStr,
        budget: u32,
    ) -> Result<Vec<LayerDir>> {
        let mut dirs = Vec::new();
        let mut name = name.to_owned();
        for (index, ld) in layers.iter().enumerate() {
            // A whiteout in the bottom layer hides nothing.
            let oci = ld.probes_oci_whiteouts(index + 1 < layers.len());
            match layer::probe(ld.fd.as_fd(), &name, oci)? {
                Presence::Absent => continue,
                Presence::Whiteout => break,
                Presence::Entry(st) if Kind::from_mode(st.st_mode) == Some(Kind::Dir) => {
                    let fd = Arc::new(layer::open_subdir(ld.fd.as_fd(), &name)?);
                    let (opaque, redirect) = layer::dir_marks(fd.as_fd())?;
                    dirs.push(LayerDir::new(ld.layer, fd));
                    match redirect {
                        _ if opaque => break,
                        None => {}
                        Some(Redirect::Relative(other)) => name = other,
                        Some(Redirect::Absolute(_)) if budget == 0 => {
                            tracing::warn!(?name, "too many directory redirects; not followed");
                            break;
                        }
                        Some(Redirect::Absolute(path)) => {
                            dirs.extend(self.dirs_at_within(ld.layer, &path, budget - 1)?);
                            break;
                        }
                    }
                }
                Presence::Entry(_) => break,
            }
        }
        Ok(dirs)
    }

    /// The directories at `path` (from the root) of the layers below `above`.
    pub(crate) fn dirs_at(&self, above: usize, path: &[CString]) -> Result<Vec<LayerDir>> {
        self.dirs_at_within(above, path, MAX_REDIRECTS)
    }

    /// [`Self::dirs_at`], following at most `budget` redirects.
    pub(crate) fn dirs_at_within(
        &self,
        above: usize,
        path: &[CString],
        budget: u32,
    ) -> Result<Vec<LayerDir>> {
        let mut dirs: Vec<LayerDir> = self
            .layers
            .iter()
            .enumerate()
            .skip(above + 1)
            .map(|(i, l)| LayerDir::new(i, l.root().clone()))
            .collect();
        for comp in path {
            if dirs.is_empty() {
                break;
            }
            dirs = self.collect_dirs_within(&dirs, comp, budget)?;
        }
        Ok(dirs)
    }

    /// Drops `n` kernel references to `ino`.
    /// Whether the kernel holds node `ino` (see [`Union::forget`]).
    pub fn is_held(&self, ino: u64) -> bool {
        self.nodes.is_held(ino)
    }

    /// Whether `ino` is a directory the kernel holds.
    pub fn is_held_dir(&self, ino: u64) -> bool {
        self.nodes.get(ino).is_ok_and(|n| n.is_dir())
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if self.nodes.forget(ino, n) {
            self.listings.forget(ino);
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let node = self.nodes.get(ino)?;
        self.refresh_attr(&node)
    }

    /// Current attributes: re-read for anything in the upper layer.
    pub(crate) fn refresh_attr(&self, node: &Node) -> Result<Attr> {
        let (st, merged) = {
            let state = node.state();
            match &state.body {
                NodeBody::Upper { fd, data } => {
                    let mut st = layer::stat_self(fd.as_fd())?;
                    // A metadata-only copy is sparse: its blocks are the lower file's.
                    if let Some(d) = data
                        && let Ok(lst) = layer::stat_at(d.dir.as_fd(), &d.name)
                    {
                        st.st_blocks = lst.st_blocks;
                    }
                    (self.logical(0, fd.as_fd(), c"", st), false)
                }
                NodeBody::Dir { layers } if self.is_upper(layers[0].layer) => {
                    let st = layer::stat_self(layers[0].fd.as_fd())?;
                    (
                        self.logical(0, layers[0].fd.as_fd(), c".", st),
                        layers.len() > 1,
                    )
                }
                _ => return Ok(state.attr(node.ino())),
            }
        };
        let mut attr = attr_of(node.ino(), &st)?;
        if merged {
            attr.nlink = 1;
        }
        node.update(|s| s.set_attr(&attr));
        Ok(attr)
    }
}
