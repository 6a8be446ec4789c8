//! Merged directory listings: every contributing layer read top-down, names
//! de-duplicated, whiteouts applied, markers hidden. A listing is taken once
//! per open handle, so offsets (telldir/seekdir) index a stable snapshot.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use rustix::fs::FileType;

use super::Union;
use super::attr::Kind;
use super::error::{Error, Result};
use super::inode::{Node, NodeBody};
use crate::layer;

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
}

impl Union {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.nodes.get(ino)?;
        let entries = self.list(&node)?;
        Ok(self.dirs.insert(entries))
    }

    /// The snapshot of an open directory handle; entry `i` has offset `i + 1`.
    pub fn readdir(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        self.dirs.get(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }

    fn list(&self, node: &Node) -> Result<Vec<DirEntry>> {
        let NodeBody::Dir { layers, parent } = &node.body else {
            return Err(Error::NotDir);
        };
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino: node.ino(),
                kind: Kind::Dir,
            },
            DirEntry {
                name: "..".into(),
                ino: *parent,
                kind: Kind::Dir,
            },
        ];
        // Names already decided by a higher layer: shown, or whited out.
        let mut decided: HashSet<Vec<u8>> = HashSet::new();
        for ld in layers {
            let dir = ld.fd.as_fd();
            // An OCI whiteout hides only lower layers, so apply this layer's
            // whiteouts after reading all of it.
            let mut whiteouts: Vec<Vec<u8>> = Vec::new();
            layer::read_dir(dir, |name, ftype, real_ino| {
                let bytes = name.to_bytes();
                if layer::is_marker_name(bytes) {
                    if let Some(target) = layer::oci_whiteout_target(name) {
                        whiteouts.push(target.to_vec());
                    }
                    return Ok(());
                }
                if decided.contains(bytes) {
                    return Ok(());
                }
                let kind = match ftype {
                    FileType::CharacterDevice | FileType::RegularFile | FileType::Unknown => {
                        let st = layer::stat_at(dir, name)?;
                        if layer::is_overlay_whiteout(dir, name, &st) {
                            whiteouts.push(bytes.to_vec());
                            return Ok(());
                        }
                        Kind::from_mode(st.st_mode)
                    }
                    other => Kind::from_file_type(other),
                };
                let Some(kind) = kind else {
                    return Ok(());
                };
                decided.insert(bytes.to_vec());
                entries.push(DirEntry {
                    name: OsString::from_vec(bytes.to_vec()),
                    ino: self.inos.ino(ld.layer, real_ino),
                    kind,
                });
                Ok(())
            })?;
            decided.extend(whiteouts);
        }
        Ok(entries)
    }
}
