//! The union core: merges layers into one tree. It knows layers and inodes,
//! never FUSE types; the FUSE adapter calls it and turns its errors into errnos.

mod attr;
mod error;
mod file;
mod handles;
mod inode;
mod lookup;
mod readdir;
mod xattr;

use std::os::fd::AsFd;
use std::path::PathBuf;

pub use attr::{Attr, Kind, Time};
pub use error::{Error, Result};
pub use inode::{Node, ROOT_INO};
pub use readdir::DirEntry;
pub use xattr::is_private_xattr;

use crate::layer::{self, Layer, LayerError};
use handles::HandleTable;
use inode::{InoMap, LayerDir, NodeBody, NodeTable};

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

/// A read-only union of lower layers.
#[derive(Debug)]
pub struct Union {
    layers: Vec<Layer>,
    inos: InoMap,
    nodes: NodeTable,
    files: HandleTable<file::OpenFile>,
    dirs: HandleTable<Vec<DirEntry>>,
}

impl Union {
    /// Opens the lower layers, top first.
    pub fn new(lowers: &[PathBuf]) -> std::result::Result<Self, LayerError> {
        if lowers.is_empty() {
            return Err(LayerError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "at least one lower layer is needed",
            )));
        }
        let layers = lowers
            .iter()
            .map(|p| Layer::open(p))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let inos = InoMap::new(&layers);
        let nodes = NodeTable::default();
        let top = layer::stat_self(layers[0].root().as_fd())?;
        let mut attr = Attr::from_stat(ROOT_INO, &top)
            .ok_or_else(|| LayerError::Io(std::io::Error::from_raw_os_error(libc::ENOTDIR)))?;
        if layers.len() > 1 {
            attr.nlink = 1;
        }
        let root_layers = layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerDir {
                layer: i,
                fd: l.root().clone(),
            })
            .collect();
        nodes.insert_root(Node::new(
            attr,
            NodeBody::Dir {
                layers: root_layers,
                parent: ROOT_INO,
            },
        ));
        Ok(Union {
            layers,
            inos,
            nodes,
            files: HandleTable::default(),
            dirs: HandleTable::default(),
        })
    }

    /// Every mutation is refused until the union has a writable layer.
    pub fn check_writable(&self) -> Result<()> {
        Err(Error::ReadOnly)
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
