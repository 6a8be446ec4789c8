//! Extended attributes as seen through the mount: everything the real entry
//! has, minus overlay markers and stratafs' private metadata.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::Union;
use super::error::{Error, Result};
use super::inode::{Node, NodeBody};
use crate::layer::is_private_xattr;
use crate::{layer, sys};

fn filter_list(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for name in raw.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !is_private_xattr(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

fn read_sized(read: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> Result<Vec<u8>> {
    Ok(layer::read_sized(read)?)
}

fn no_data(e: Error) -> Error {
    match &e {
        Error::Io(io) if io.raw_os_error() == Some(libc::ENODATA) => Error::NoAttr,
        _ => e,
    }
}

/// Where a node's xattrs are read from.
enum Target {
    /// `name` beneath directory `dir` (`.` for the directory itself).
    At(Arc<OwnedFd>, CString),
    /// The inode behind an upper O_PATH fd.
    Inode(Arc<OwnedFd>),
}

fn target(union: &Union, node: &Node) -> Target {
    let state = node.state();
    match &state.body {
        NodeBody::Dir { layers } => Target::At(union.attr_dir(layers).fd.clone(), c".".to_owned()),
        NodeBody::Lower { dir, .. } => Target::At(dir.clone(), state.lower_name().to_owned()),
        NodeBody::Upper { fd, .. } => Target::Inode(fd.clone()),
    }
}

fn rustix_io(r: rustix::io::Result<usize>) -> std::io::Result<usize> {
    r.map_err(std::io::Error::from)
}

impl Target {
    fn list(&self) -> Result<Vec<u8>> {
        match self {
            Target::At(dir, name) => read_sized(|buf| sys::listxattr_at(dir.as_fd(), name, buf)),
            Target::Inode(fd) => {
                let path = layer::proc_fd_path(fd.as_fd());
                read_sized(|buf| {
                    if buf.is_empty() {
                        rustix_io(rustix::fs::listxattr_query(path.as_c_str()))
                    } else {
                        rustix_io(rustix::fs::listxattr(path.as_c_str(), buf))
                    }
                })
            }
        }
    }

    fn get(&self, attr: &CStr) -> Result<Vec<u8>> {
        match self {
            Target::At(dir, name) => {
                read_sized(|buf| sys::getxattr_at(dir.as_fd(), name, attr, buf))
            }
            Target::Inode(fd) => {
                let path = layer::proc_fd_path(fd.as_fd());
                read_sized(|buf| {
                    if buf.is_empty() {
                        rustix_io(rustix::fs::getxattr_query(path.as_c_str(), attr))
                    } else {
                        rustix_io(rustix::fs::getxattr(path.as_c_str(), attr, buf))
                    }
                })
            }
        }
    }
}

impl Union {
    /// `noxattrs=1` turns extended attributes off entirely.
    fn xattrs_enabled(&self) -> Result<()> {
        if self.view.no_xattrs {
            return Err(Error::NotSupported);
        }
        Ok(())
    }

    /// The NUL-separated list of visible xattr names.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        self.xattr_names(&node)
    }

    /// [`Union::listxattr`] of a node in hand.
    pub(crate) fn xattr_names(&self, node: &Node) -> Result<Vec<u8>> {
        self.xattrs_enabled()?;
        let generation = match node.cached_xattrs() {
            Ok(list) => return Ok(list),
            Err(generation) => generation,
        };
        let list = filter_list(&target(self, node).list()?);
        node.cache_xattrs(generation, &list);
        Ok(list)
    }

    pub fn getxattr(&self, ino: u64, attr: &OsStr) -> Result<Vec<u8>> {
        self.xattrs_enabled()?;
        let attr = attr.as_bytes();
        if is_private_xattr(attr) {
            return Err(Error::NoAttr);
        }
        // Most queries (ls asks every file for its ACL and security label) are
        // for names the file does not have: answer those from the cached list.
        let names = self.listxattr(ino)?;
        if !names.split(|b| *b == 0).any(|n| n == attr) {
            return Err(Error::NoAttr);
        }
        let node = self.nodes.get(ino)?;
        let attr = CString::new(attr).map_err(|_| Error::NoAttr)?;
        target(self, &node).get(&attr).map_err(no_data)
    }

    pub fn setxattr(&self, ino: u64, attr: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.xattrs_enabled()?;
        self.check_writable()?;
        let attr = self.settable_name(attr)?;
        let node = self.nodes.get(ino)?;
        let fd = self.copy_up_any(&node)?;
        let path = layer::proc_fd_path(fd.as_fd());
        let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
        let result = rustix::fs::setxattr(path.as_c_str(), attr.as_c_str(), value, flags);
        node.forget_xattrs();
        result.map_err(Error::from)
    }

    pub fn removexattr(&self, ino: u64, attr: &OsStr) -> Result<()> {
        self.xattrs_enabled()?;
        self.check_writable()?;
        let attr = self.settable_name(attr)?;
        let node = self.nodes.get(ino)?;
        // Nothing to remove is answered without copying anything up.
        let names = self.listxattr(ino)?;
        if !names.split(|b| *b == 0).any(|n| n == attr.as_bytes()) {
            return Err(Error::NoAttr);
        }
        let fd = self.copy_up_any(&node)?;
        let path = layer::proc_fd_path(fd.as_fd());
        let result = rustix::fs::removexattr(path.as_c_str(), attr.as_c_str());
        node.forget_xattrs();
        result.map_err(|e| no_data(Error::from(e)))
    }

    fn settable_name(&self, attr: &OsStr) -> Result<CString> {
        if is_private_xattr(attr.as_bytes()) {
            return Err(Error::NotSupported);
        }
        CString::new(attr.as_bytes()).map_err(|_| Error::InvalidName)
    }
}
