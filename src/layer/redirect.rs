//! Directory redirects: a directory renamed in the upper layer records where
//! its lower-layer contents live, in the spirit of overlayfs' `redirect_dir`.
//! The value is the kernel's: an absolute path from the layer root
//! (`/a/b`), or a bare name meaning "this name in the same parent".

use std::ffi::{CStr, CString};
use std::os::fd::BorrowedFd;

use super::{Dialect, LayerError, Upper};
use crate::sys::{getxattr_at, listxattr_at, setxattr_at};

/// Read in this order; the first present wins.
pub(super) const REDIRECT_XATTRS: [&CStr; 4] = [
    c"trusted.overlay.redirect",
    c"user.overlay.redirect",
    c"trusted.stratafs.redirect",
    c"user.stratafs.redirect",
];

/// Where the lower layers of a redirected directory are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Components of a path from the layer root.
    Absolute(Vec<CString>),
    /// A name in the same parent directory.
    Relative(CString),
}

impl Redirect {
    pub fn parse(value: &[u8]) -> Option<Redirect> {
        let value = value.strip_suffix(b"\0").unwrap_or(value);
        if let Some(path) = value.strip_prefix(b"/") {
            let parts = path
                .split(|b| *b == b'/')
                .filter(|c| !c.is_empty())
                .map(|c| {
                    if c == b"." || c == b".." {
                        None
                    } else {
                        CString::new(c).ok()
                    }
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Redirect::Absolute(parts))
        } else if value.is_empty() || value.contains(&b'/') || value == b"." || value == b".." {
            None
        } else {
            CString::new(value).ok().map(Redirect::Relative)
        }
    }

    /// The kernel's on-disk form.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Redirect::Absolute(parts) => {
                if parts.is_empty() {
                    return b"/".to_vec();
                }
                let mut v = Vec::new();
                for p in parts {
                    v.push(b'/');
                    v.extend_from_slice(p.to_bytes());
                }
                v
            }
            Redirect::Relative(name) => name.to_bytes().to_vec(),
        }
    }
}

/// The redirect recorded on directory `dir` (an O_PATH fd is fine), if any.
/// A malformed value (`..`, empty) is ignored, as the kernel ignores it.
pub fn read_redirect(dir: BorrowedFd<'_>) -> Option<Redirect> {
    read_redirect_at(dir, c".")
}

/// The redirect recorded on `name` in `dir` (a metadata-only copy's data path).
pub fn read_redirect_at(dir: BorrowedFd<'_>, name: &CStr) -> Option<Redirect> {
    let mut buf = vec![0u8; 4096];
    for attr in REDIRECT_XATTRS {
        if let Ok(n) = getxattr_at(dir, name, attr, &mut buf) {
            return Redirect::parse(&buf[..n]);
        }
    }
    None
}

/// Marks of a metadata-only copy, the kernel's (`metacopy=on`) and stratafs'.
pub const METACOPY_XATTRS: [&CStr; 4] = [
    c"trusted.overlay.metacopy",
    c"user.overlay.metacopy",
    c"trusted.stratafs.metacopy",
    c"user.stratafs.metacopy",
];

/// Whether `name` in `dir` is a metadata-only copy: one listxattr, since
/// every regular file looked up is asked.
pub fn is_metacopy(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    let mut buf = [0u8; 1024];
    let n = match listxattr_at(dir, name, &mut buf) {
        Ok(n) => n,
        // A longer list than fits: ask for each name.
        Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
            return METACOPY_XATTRS
                .iter()
                .any(|x| getxattr_at(dir, name, x, &mut []).is_ok());
        }
        Err(_) => return false,
    };
    buf[..n]
        .split(|b| *b == 0)
        .any(|x| METACOPY_XATTRS.iter().any(|m| m.to_bytes() == x))
}

/// Every redirect xattr name, for removing them.
pub const ALL_REDIRECT_XATTRS: [&CStr; 4] = REDIRECT_XATTRS;

impl Upper {
    /// The xattr this mount records redirects in: the kernel's name in the
    /// overlay dialect (so kernel overlayfs with `redirect_dir=on` follows
    /// them), the private one otherwise.
    pub fn redirect_xattr(&self) -> CString {
        match self.dialect() {
            Dialect::Overlay { trusted: true } => c"trusted.overlay.redirect".to_owned(),
            Dialect::Overlay { trusted: false } => c"user.overlay.redirect".to_owned(),
            Dialect::Oci => self.private_xattr("redirect"),
        }
    }

    /// The xattr marking a metadata-only copy: the kernel's name in the
    /// overlay dialect (kernel overlayfs with `metacopy=on` reads such a
    /// copy, its data found through the redirect), the private one otherwise.
    pub fn metacopy_xattr(&self) -> CString {
        match self.dialect() {
            Dialect::Overlay { trusted: true } => c"trusted.overlay.metacopy".to_owned(),
            Dialect::Overlay { trusted: false } => c"user.overlay.metacopy".to_owned(),
            Dialect::Oci => self.private_xattr("metacopy"),
        }
    }

    /// Records on upper directory `dir` that its lower contents live at `r`.
    pub fn set_redirect(&self, dir: BorrowedFd<'_>, r: &Redirect) -> Result<(), LayerError> {
        setxattr_at(dir, c".", &self.redirect_xattr(), &r.to_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_forms_and_rejects_escapes() {
        assert_eq!(
            Redirect::parse(b"/a/b"),
            Some(Redirect::Absolute(vec![c"a".to_owned(), c"b".to_owned()]))
        );
        assert_eq!(
            Redirect::parse(b"b"),
            Some(Redirect::Relative(c"b".to_owned()))
        );
        assert_eq!(Redirect::parse(b"/a/../b"), None);
        assert_eq!(Redirect::parse(b"a/b"), None);
        assert_eq!(Redirect::parse(b""), None);
        assert_eq!(Redirect::Absolute(vec![c"x".to_owned()]).to_bytes(), b"/x");
    }
}
