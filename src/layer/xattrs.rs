//! Which xattrs belong to the overlay machinery rather than to the files,
//! and reading a whole xattr set beneath a directory fd.

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;

use crate::sys::{getxattr_at, listxattr_at};

const PRIVATE_PREFIXES: [&[u8]; 6] = [
    b"trusted.overlay.",
    b"security.fuseoverlayfs.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.stratafs.",
    b"trusted.stratafs.",
];

/// Xattrs of whiteout dialects, overlay bookkeeping and stratafs' own
/// metadata: never shown through a mount, never part of a layer's content.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Calls `read` with a buffer of the size `read(&mut [])` reports, retrying
/// if the value grew in between.
pub fn read_sized(
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<Vec<u8>> {
    loop {
        let size = read(&mut [])?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The xattrs of `name` in `dir` that are not private, sorted by name.
/// A filesystem without xattr support has none.
pub fn content_xattrs(
    dir: BorrowedFd<'_>,
    name: &CStr,
) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = match read_sized(|buf| listxattr_at(dir, name, buf)) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for attr in list.split(|b| *b == 0).filter(|a| !a.is_empty()) {
        if is_private_xattr(attr) {
            continue;
        }
        let Ok(c) = CString::new(attr) else { continue };
        match read_sized(|buf| getxattr_at(dir, name, &c, buf)) {
            Ok(value) => out.push((attr.to_vec(), value)),
            // Removed between list and read.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}
