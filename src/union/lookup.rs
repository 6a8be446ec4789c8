//! Lookup across layers: top-down; a whiteout or a non-directory ends the
//! search; a directory collects the same-named directories below it until an
//! opaque one.

use std::ffi::{CString, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::Union;
use super::attr::{Attr, Kind};
use super::error::{Error, Result};
use super::inode::{LayerDir, Node, NodeBody};
use crate::layer::{self, Presence};

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

impl Union {
    /// Looks `name` up in directory `parent` and counts one kernel reference
    /// to the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Arc<Node>> {
        let name = checked_name(name)?;
        let parent = self.nodes.get(parent)?;
        let layers = parent.dir_layers()?;
        let mut below = layers.iter();

        let (top, stat) = loop {
            let Some(ld) = below.next() else {
                return Err(Error::NotFound);
            };
            match layer::probe(ld.fd.as_fd(), &name)? {
                Presence::Absent => continue,
                Presence::Whiteout => return Err(Error::NotFound),
                Presence::Entry(stat) => break (ld, stat),
            }
        };

        let ino = self.inos.ino(top.layer, stat.st_ino);
        if let Some(node) = self.nodes.remember_known(ino) {
            return Ok(node);
        }
        let mut attr = attr_of(ino, &stat)?;
        if attr.kind != Kind::Dir {
            let body = NodeBody::Leaf {
                layer: top.layer,
                dir: top.fd.clone(),
                name,
            };
            return Ok(self.nodes.remember(Node::new(attr, body)));
        }

        let fd = Arc::new(layer::open_subdir(top.fd.as_fd(), &name)?);
        let mut opaque = layer::is_opaque(fd.as_fd())?;
        let mut dirs = vec![LayerDir {
            layer: top.layer,
            fd,
        }];
        for ld in below {
            if opaque {
                break;
            }
            match layer::probe(ld.fd.as_fd(), &name)? {
                Presence::Absent => continue,
                Presence::Whiteout => break,
                Presence::Entry(st) if Kind::from_mode(st.st_mode) == Some(Kind::Dir) => {
                    let fd = Arc::new(layer::open_subdir(ld.fd.as_fd(), &name)?);
                    opaque = layer::is_opaque(fd.as_fd())?;
                    dirs.push(LayerDir {
                        layer: ld.layer,
                        fd,
                    });
                }
                Presence::Entry(_) => break,
            }
        }
        // Like overlayfs: the link count of a directory merged from several
        // layers is not meaningful, so report 1 ("unknown", as find expects).
        if dirs.len() > 1 {
            attr.nlink = 1;
        }
        let body = NodeBody::Dir {
            layers: dirs,
            parent: parent.ino(),
        };
        Ok(self.nodes.remember(Node::new(attr, body)))
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.nodes.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        Ok(self.nodes.get(ino)?.attr)
    }
}
