//! Extended attributes as seen through the mount: everything the layer entry
//! has, minus overlay markers and stratafs' private metadata.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use super::Union;
use super::error::{Error, Result};
use crate::sys;

const PRIVATE_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.stratafs.",
    b"trusted.stratafs.",
];

/// Xattrs that belong to the union's own bookkeeping and never show through.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p))
}

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

/// Calls `read` with a buffer of the size `read(&mut [])` reports, retrying
/// if the value grew in between.
fn read_sized(mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> Result<Vec<u8>> {
    loop {
        let size = read(&mut [])?;
        let mut buf = vec![0u8; size];
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn no_data(e: Error) -> Error {
    match &e {
        Error::Io(io) if io.raw_os_error() == Some(libc::ENODATA) => Error::NoAttr,
        _ => e,
    }
}

impl Union {
    /// The NUL-separated list of visible xattr names.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        if let Some(list) = node.xattr_names.get() {
            return Ok(list.clone());
        }
        let (dir, name) = node.location();
        let raw = read_sized(|buf| sys::listxattr_at(dir, name, buf))?;
        Ok(node.xattr_names.get_or_init(|| filter_list(&raw)).clone())
    }

    pub fn getxattr(&self, ino: u64, attr: &OsStr) -> Result<Vec<u8>> {
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
        let (dir, name) = node.location();
        let attr = CString::new(attr).map_err(|_| Error::NoAttr)?;
        read_sized(|buf| sys::getxattr_at(dir, name, &attr, buf)).map_err(no_data)
    }
}
