//! The non-directories of a layer directory are stat'ed when it is listed
//! (whiteouts hide among char devices and empty files, and `d_type` may be
//! unknown). Each stat is a path lookup that the kernel's reader waits for,
//! so in a big directory two threads share them.

use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;

use rustix::fs::FileType;

use super::Union;
use super::attr::Attr;
use crate::layer::{self, LayerError};

/// What a listing makes of one non-directory.
pub(crate) enum Leaf {
    Whiteout,
    /// Listed, but a lookup takes it for a whiteout (see
    /// [`layer::holds_xattr_whiteouts`]): it gets no attributes.
    Unfound {
        ino: u64,
    },
    Shown {
        ino: u64,
        attr: Attr,
    },
    /// A type the union does not show.
    Unknown,
}

/// Below this many names one thread is quicker than starting another.
const SHARED_FROM: usize = 512;

impl Union {
    /// Stats `names` in `dir` of layer `layer`, in order. Shared by two
    /// threads, the caller is untied from its CPU until `untied` is dropped
    /// (the caller lists the rest of the directory untied too: tying it
    /// again after each batch moved it back and forth).
    pub(crate) fn stat_leaves(
        &self,
        layer: usize,
        dir: BorrowedFd<'_>,
        names: &[CString],
        xattr_whiteouts: &OnceLock<bool>,
        untied: &mut Option<crate::sys::Unpinned>,
    ) -> Result<Vec<Leaf>, LayerError> {
        let one = |name: &CString| -> Result<Leaf, LayerError> {
            let st = layer::stat_at(dir, name)?;
            if layer::is_overlay_whiteout(dir, name, &st) {
                // A listing takes an xattr whiteout (a regular file) for one
                // only where its directory says it holds such whiteouts, as
                // kernel overlayfs lists them.
                let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
                if !regular || *xattr_whiteouts.get_or_init(|| layer::holds_xattr_whiteouts(dir)) {
                    return Ok(Leaf::Whiteout);
                }
                let ino = self.entry_ino(layer, dir, name, st.st_ino);
                return Ok(Leaf::Unfound { ino });
            }
            let ino = self.entry_ino(layer, dir, name, st.st_ino);
            let st = self.logical(layer, dir, name, st);
            Ok(Attr::from_stat(ino, &st).map_or(Leaf::Unknown, |attr| Leaf::Shown { ino, attr }))
        };
        let all = |names: &[CString]| names.iter().map(one).collect::<Result<Vec<_>, _>>();
        if names.len() < SHARED_FROM {
            return all(names);
        }
        let (first, second) = names.split_at(names.len() / 2);
        // The caller may be tied to one CPU (a queue thread): the two halves
        // go wherever there is room.
        untied.get_or_insert_with(crate::sys::unpinned);
        std::thread::scope(|scope| {
            let helper = std::thread::Builder::new().spawn_scoped(scope, || all(second));
            let mut leaves = all(first)?;
            // A thread that could not start (or died) leaves its half to this one.
            let rest = match helper.map(|h| h.join()) {
                Ok(Ok(rest)) => rest,
                _ => all(second),
            }?;
            leaves.extend(rest);
            Ok(leaves)
        })
    }
}
