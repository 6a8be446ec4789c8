//! Reading whiteouts and opaque markers in every dialect the design lists:
//! char device 0/0, zero-size files carrying an overlay whiteout xattr, OCI
//! `.wh.NAME` files, opaque xattrs (`=y`; `=x` only says "has xattr
//! whiteouts") and the OCI `.wh..wh..opq` file.

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Stat};

use super::redirect::{REDIRECT_XATTRS, Redirect, read_redirect};
use super::{LayerError, stat_at};
use crate::sys::{getxattr_at, listxattr_at};

/// Prefix of OCI whiteout files; no name with it is ever shown or created.
pub const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
pub(super) const OCI_OPAQUE: &CStr = c".wh..wh..opq";

const WHITEOUT_XATTRS: [&CStr; 2] = [c"trusted.overlay.whiteout", c"user.overlay.whiteout"];
const OPAQUE_XATTRS: [&CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    c"user.fuseoverlayfs.opaque",
];

/// Marks a directory a layer holds only because entries below it needed
/// it (an archive never described it): its metadata is not the layer's, so
/// a merged view shows the next lower layer's. Written by the store.
pub const IMPLIED_XATTRS: [&CStr; 2] = [c"trusted.stratafs.implied", c"user.stratafs.implied"];

/// Marks the root of a tree the store made (which may hold implied directories).
pub const STORE_LAYER_XATTRS: [&CStr; 2] = [c"trusted.stratafs.layer", c"user.stratafs.layer"];

/// Whether `name` in `dir` (a directory) is an implied one.
pub fn is_implied(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    IMPLIED_XATTRS.iter().any(|a| has_xattr(dir, name, a))
}

/// For a layer root made by the store: the one xattr that marks its
/// implied directories (the store writes `trusted.*` or `user.*` names,
/// never both), so a lookup asks for that name only. `None` for other layers.
pub fn implied_marker(root: BorrowedFd<'_>) -> Option<&'static CStr> {
    STORE_LAYER_XATTRS
        .iter()
        .zip(IMPLIED_XATTRS)
        .find(|(layer, _)| has_xattr(root, c".", layer))
        .map(|(_, implied)| implied)
}

/// Whether directory `name` in `dir` carries the implied marker `attr`.
pub fn has_marker(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> bool {
    has_xattr(dir, name, attr)
}

/// What a layer directory says about one name.
#[derive(Debug)]
pub enum Presence {
    /// The layer has nothing under this name; look further down.
    Absent,
    /// The layer hides this name in the layers below.
    Whiteout,
    /// The layer has a real entry.
    Entry(Stat),
}

/// True for names reserved to markers (`.wh.*`), which never appear through the mount.
pub fn is_marker_name(name: &[u8]) -> bool {
    name.starts_with(OCI_WHITEOUT_PREFIX)
}

fn has_xattr(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> bool {
    getxattr_at(dir, name, attr, &mut []).is_ok()
}

fn xattr_is_y(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr) -> bool {
    let mut buf = [0u8; 2];
    matches!(getxattr_at(dir, name, attr, &mut buf), Ok(1) if buf[0] == b'y')
}

/// Whether directory `dir` says it may hold xattr whiteouts (an opaque
/// xattr of `x`): kernel overlayfs lists a zero-size file carrying a
/// whiteout xattr as a whiteout only there (a lookup takes it as one
/// anywhere). Elsewhere a listing may name files without a stat each.
pub fn holds_xattr_whiteouts(dir: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 1024];
    let listed = listed_xattrs(dir, c".", &mut buf);
    let mut value = [0u8; 2];
    OPAQUE_XATTRS.iter().any(|attr| {
        listed(attr)
            && matches!(getxattr_at(dir, c".", attr, &mut value), Ok(1) if value[0] == b'x')
    })
}

/// Whether `name` in `dir` may carry each xattr asked about, from one list
/// of its names read into `buf` (a list too long for it, or none to be had:
/// every name may be there).
fn listed_xattrs<'b>(
    dir: BorrowedFd<'_>,
    name: &CStr,
    buf: &'b mut [u8],
) -> impl Fn(&CStr) -> bool + 'b {
    let list = listxattr_at(dir, name, buf).ok().map(|n| &buf[..n]);
    move |attr: &CStr| list.is_none_or(|l| l.split(|b| *b == 0).any(|n| n == attr.to_bytes()))
}

/// Whether `stat` (of `name` in `dir`) is a whiteout in the overlay dialects.
pub fn is_overlay_whiteout(dir: BorrowedFd<'_>, name: &CStr, stat: &Stat) -> bool {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::CharacterDevice => stat.st_rdev == 0,
        // Every empty file of a listing or lookup is asked: one list of its
        // names answers for both dialects (most have none).
        FileType::RegularFile if stat.st_size == 0 => {
            let mut buf = [0u8; 256];
            let listed = listed_xattrs(dir, name, &mut buf);
            WHITEOUT_XATTRS
                .iter()
                .any(|attr| listed(attr) && has_xattr(dir, name, attr))
        }
        _ => false,
    }
}

pub(super) fn oci_whiteout_name(name: &CStr) -> Option<CString> {
    let mut bytes = OCI_WHITEOUT_PREFIX.to_vec();
    bytes.extend_from_slice(name.to_bytes());
    CString::new(bytes).ok()
}

fn exists(dir: BorrowedFd<'_>, name: &CStr) -> Result<bool, LayerError> {
    match stat_at(dir, name) {
        Ok(_) => Ok(true),
        Err(LayerError::Io(e))
            if matches!(
                e.raw_os_error(),
                // EINVAL: a stratafs mount refuses marker names outright.
                Some(libc::ENOENT) | Some(libc::ENAMETOOLONG) | Some(libc::EINVAL)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Looks `name` up in one layer directory; its OCI whiteout (`.wh.NAME`)
/// only if `oci_whiteouts` (the caller knows when none can be there, or
/// when one would hide nothing).
pub fn probe(
    dir: BorrowedFd<'_>,
    name: &CStr,
    oci_whiteouts: bool,
) -> Result<Presence, LayerError> {
    match stat_at(dir, name) {
        Ok(stat) if is_overlay_whiteout(dir, name, &stat) => Ok(Presence::Whiteout),
        Ok(stat) => Ok(Presence::Entry(stat)),
        Err(LayerError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
            if !oci_whiteouts {
                return Ok(Presence::Absent);
            }
            // An OCI whiteout only hides layers below; a real entry of the same
            // name in this layer (checked above) wins.
            match oci_whiteout_name(name) {
                Some(wh) if exists(dir, &wh)? => Ok(Presence::Whiteout),
                _ => Ok(Presence::Absent),
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether the directory `dir` hides the layers below it.
pub fn is_opaque(dir: BorrowedFd<'_>) -> Result<bool, LayerError> {
    if OPAQUE_XATTRS.iter().any(|attr| xattr_is_y(dir, c".", attr)) {
        return Ok(true);
    }
    exists(dir, OCI_OPAQUE)
}

/// Whether the layer directory `dir` hides the layers below it and, if not,
/// its redirect: [`is_opaque`] and [`read_redirect`] at once, asking only
/// for the xattrs its list holds (they ask for seven names each time, and
/// most directories have no xattrs at all).
pub fn dir_marks(dir: BorrowedFd<'_>) -> Result<(bool, Option<Redirect>), LayerError> {
    let mut buf = [0u8; 1024];
    let listed = listed_xattrs(dir, c".", &mut buf);
    let opaque = OPAQUE_XATTRS
        .iter()
        .any(|attr| listed(attr) && xattr_is_y(dir, c".", attr))
        || exists(dir, OCI_OPAQUE)?;
    let redirect = if !opaque && REDIRECT_XATTRS.iter().any(|attr| listed(attr)) {
        read_redirect(dir)
    } else {
        None
    };
    Ok((opaque, redirect))
}

/// For a directory entry seen while reading a layer directory: the name it
/// whites out if it is an OCI whiteout file, `None` otherwise.
pub fn oci_whiteout_target(name: &CStr) -> Option<&[u8]> {
    let bytes = name.to_bytes();
    let target = bytes.strip_prefix(OCI_WHITEOUT_PREFIX)?;
    // `.wh..wh.*` are OCI/aufs meta files (opaque marker, link dirs), not whiteouts.
    if target.starts_with(OCI_WHITEOUT_PREFIX) || target.is_empty() {
        return None;
    }
    Some(target)
}

/// Convenience for callers holding an `OsStr` name.
pub fn to_cstring(name: &std::ffi::OsStr) -> Option<CString> {
    CString::new(name.as_bytes()).ok()
}
