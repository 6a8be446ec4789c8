//! The union core: merges layers into one tree. It knows layers and inodes,
//! never FUSE types; the FUSE adapter calls it and turns its errors into errnos.

mod attr;
mod copy_up;
mod create;
mod error;
mod file;
mod handles;
mod inode;
mod leaf_stat;
mod links;
mod listing_cache;
mod lookahead;
mod lookup;
mod name;
mod override_stat;
mod readdir;
mod remove;
mod rename;
mod setattr;
mod view;
mod xattr;

use std::os::fd::AsFd;
use std::path::PathBuf;

pub use crate::layer::is_private_xattr;
pub use attr::{Attr, Kind, Time};
pub use create::{Caller, NewEntry};
pub use error::{Error, Result};
pub use inode::{Node, ROOT_INO};
pub use readdir::{DirEntry, Want};
pub use setattr::{SetAttr, SetTime};
pub use view::{IdMap, IdRange, OVERFLOW_ID, OverrideStat, ViewOptions};

use crate::layer::{self, DialectChoice, Layer, LayerError, Upper};
use handles::HandleTable;
use inode::{InoMap, LayerDir, NodeBody, NodeTable};

/// The writable layer of a union: upper and work directories and how to write.
#[derive(Debug, Clone)]
pub struct UpperSpec {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub dialect: DialectChoice,
    /// Skip fsync before publishing copy-ups (faster; not crash-safe).
    pub volatile: bool,
    /// Rename directories with lower contents by a redirect (else EXDEV,
    /// like overlayfs with `redirect_dir=off`).
    pub redirect_dir: bool,
    /// Copy up only the metadata of lower files whose metadata changes.
    pub metacopy: bool,
}

/// Filesystem statistics as statfs reports them.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A union of lower layers, with an optional writable upper layer.
#[derive(Debug)]
pub struct Union {
    /// All layers, top first: the upper (if any) is layer 0.
    layers: Vec<Layer>,
    upper: Option<Upper>,
    inos: InoMap,
    nodes: NodeTable,
    files: HandleTable<file::OpenFile>,
    /// Listings between the reads of a directory.
    listings: listing_cache::ListingCache,
    /// Lists directories ahead of their readers.
    lookahead: lookahead::Lookahead,
    view: ViewOptions,
    /// `UpperSpec::redirect_dir` and `UpperSpec::metacopy`.
    redirect_dir: bool,
    metacopy: bool,
    /// Per layer: the xattr holding owner and mode (`xattr_permissions`).
    overrides: Vec<Option<&'static std::ffi::CStr>>,
    /// Per layer made by the store: the xattr marking its implied directories.
    implied: Vec<Option<&'static std::ffi::CStr>>,
    /// This process's umask when the union was made (see `create::make`).
    process_umask: u32,
    /// This process's effective uid and gid: the owner of what it makes.
    process_ids: (u32, u32),
    /// Per layer: a check of file content on open (`--verify=lazy`).
    checks: Vec<Option<std::sync::Arc<dyn crate::layer::ContentCheck>>>,
}

impl Union {
    /// Opens the lower layers (top first) and the writable layer, if any.
    pub fn new(
        lowers: &[PathBuf],
        upper: Option<&UpperSpec>,
        view: ViewOptions,
    ) -> std::result::Result<Self, LayerError> {
        if lowers.is_empty() {
            return Err(LayerError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "at least one lower layer is needed",
            )));
        }
        let mut layers = Vec::with_capacity(lowers.len() + 1);
        let upper_spec = upper;
        let upper = match upper {
            Some(spec) => {
                let layer = Layer::open(&spec.upper)?;
                let up = Upper::open(&layer, &spec.work, spec.dialect, spec.volatile)?;
                layers.push(layer);
                Some(up)
            }
            None => None,
        };
        for p in lowers {
            layers.push(Layer::open(p)?);
        }
        let inos = InoMap::new(&layers);
        let nodes = NodeTable::default();
        let implied: Vec<Option<&'static std::ffi::CStr>> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 && upper.is_some() {
                    None
                } else {
                    layer::implied_marker(l.root().as_fd())
                }
            })
            .collect();
        let mut overrides: Vec<_> = layers.iter().map(override_stat::detect).collect();
        if let (Some(_), Some(mode)) = (&upper, view.override_stat) {
            let x = override_stat::xattr_name(mode);
            override_stat::mark_root(layers[0].root().as_fd(), x).map_err(|e| {
                LayerError::open(
                    layers[0].path(),
                    std::io::Error::other(format!("cannot record owners in {x:?}: {e}")),
                )
            })?;
            overrides[0] = Some(x);
        }
        // The root's metadata: the top layer's, unless the store marks it
        // implied (then the next layer's that is not).
        let shown = (0..layers.len())
            .find(|&i| !is_implied_dir(&implied, i, layers[i].root().as_fd()))
            .unwrap_or(0);
        let mut top = layer::stat_self(layers[shown].root().as_fd())?;
        if let Some(o) =
            overrides[0].and_then(|x| override_stat::read(layers[0].root().as_fd(), c".", x))
        {
            o.apply(&mut top);
        }
        let mut attr = Attr::from_stat(ROOT_INO, &top)
            .ok_or_else(|| LayerError::Io(std::io::Error::from_raw_os_error(libc::ENOTDIR)))?;
        if layers.len() > 1 {
            attr.nlink = 1;
        }
        let root_layers = layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerDir::new(i, l.root().clone()))
            .collect();
        nodes.insert_root(Node::new(
            None,
            c"",
            NodeBody::Dir {
                layers: root_layers,
            },
            &attr,
        ));
        Ok(Union {
            layers,
            upper,
            inos,
            nodes,
            files: HandleTable::default(),
            listings: listing_cache::ListingCache::default(),
            lookahead: lookahead::Lookahead::default(),
            view,
            checks: Vec::new(),
            implied,
            process_umask: process_umask(),
            process_ids: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            overrides,
            redirect_dir: upper_spec.is_some_and(|s| s.redirect_dir),
            metacopy: upper_spec.is_some_and(|s| s.metacopy),
        })
    }

    /// Of a union directory's layer directories, the one whose metadata the
    /// merged view shows: the top one, unless the store marked it implied.
    pub(crate) fn attr_dir<'a>(&self, layers: &'a [LayerDir]) -> &'a LayerDir {
        layers
            .iter()
            .find(|ld| !is_implied_dir(&self.implied, ld.layer, ld.fd.as_fd()))
            .unwrap_or(&layers[0])
    }

    /// Installs content checks for the lower layers (top first, as given
    /// to [`Union::new`]); `None` leaves a layer unchecked.
    pub fn set_content_checks(
        &mut self,
        lowers: Vec<Option<std::sync::Arc<dyn layer::ContentCheck>>>,
    ) {
        let skip = usize::from(self.upper.is_some());
        self.checks = (0..skip).map(|_| None).chain(lowers).collect();
    }

    /// Opens the lower file `name` in `dir` (of layer `layer`) for reading,
    /// checking its content the first time if the layer asks for it.
    pub(crate) fn open_lower(
        &self,
        layer: usize,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::CStr,
    ) -> Result<std::os::fd::OwnedFd> {
        let fd = layer::open_file(dir, name)?;
        if let Some(Some(check)) = self.checks.get(layer) {
            let ino = layer::stat_self(fd.as_fd())?.st_ino;
            check.check(fd.as_fd(), ino).map_err(|_| Error::Corrupt)?;
        }
        Ok(fd)
    }

    /// The attributes the mount shows for `attr` (id mapping, squashing...).
    pub fn shown(&self, attr: Attr) -> Attr {
        self.view.shown(attr)
    }

    pub fn view(&self) -> &ViewOptions {
        &self.view
    }

    /// Mutations need a writable layer.
    pub fn check_writable(&self) -> Result<()> {
        match self.upper {
            Some(_) => Ok(()),
            None => Err(Error::ReadOnly),
        }
    }

    pub fn is_writable(&self) -> bool {
        self.upper.is_some()
    }

    /// Whether the union itself can clear setuid/setgid when an unprivileged
    /// caller writes or truncates: the upper files' modes are the real ones
    /// (not recorded in an xattr, as with `xattr_permissions`).
    pub fn drops_setid(&self) -> bool {
        self.is_writable() && self.upper_override().is_none()
    }

    /// fsync of a union directory's upper directory, if it has one.
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let node = self.nodes.get(ino)?;
        let layers = node.dir_layers()?;
        if let (Some(upper), Some(ld)) = (&self.upper, layers.first())
            && self.is_upper(ld.layer)
        {
            upper.sync_dir(ld.fd.as_fd())?;
        }
        Ok(())
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Statistics of the top layer's filesystem.
    pub fn statfs(&self) -> Result<StatFs> {
        let st = self.layers[0].statvfs()?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: u32::try_from(st.f_bsize).unwrap_or(4096),
            namelen: u32::try_from(st.f_namemax).unwrap_or(255),
            frsize: u32::try_from(st.f_frsize).unwrap_or(4096),
        })
    }

    /// Number of inodes the kernel currently holds (for tests and metrics).
    pub fn live_inodes(&self) -> usize {
        self.nodes.len()
    }
}

/// The umask from /proc/self/status (reading it with umask(2) would change it).
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Whether directory `dir` of layer `layer` is one the store marked implied
/// (made for a tar's entries below it, with no metadata of its own).
fn is_implied_dir(
    implied: &[Option<&'static std::ffi::CStr>],
    layer: usize,
    dir: std::os::fd::BorrowedFd<'_>,
) -> bool {
    implied
        .get(layer)
        .copied()
        .flatten()
        .is_some_and(|x| layer::has_marker(dir, c".", x))
}
