//! Writing a plan's steps as a layer tree: entries as the merged view shows
//! them, deletions as whiteouts, directories the changes pass through with
//! their merged-view metadata, hard links kept as links.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::FileType;

use super::plan::Step;
use super::view::{Found, find, names};
use crate::layer;
use crate::store::StoreError;
use crate::store::tree_walk::meta_of;
use crate::store::tree_writer::{EntryPath, Special, TreeWriter};

struct Writer<'a> {
    full: BorrowedFd<'a>,
    out: &'a mut TreeWriter,
    dirs_written: HashSet<Vec<u8>>,
    /// First name written of each multiply-linked inode of the view.
    linked: HashMap<u64, EntryPath>,
}

fn entry_path(path: &[u8]) -> Result<EntryPath, StoreError> {
    EntryPath::parse(path.strip_prefix(b"/").unwrap_or(path))
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &path[..i],
    }
}

impl Writer<'_> {
    fn found(&self, path: &[u8]) -> Result<Found, StoreError> {
        find(self.full, path)?.ok_or_else(|| {
            StoreError::entry(path, "vanished from the merged view while committing")
        })
    }

    /// Writes every directory above `path` not written yet.
    fn parents(&mut self, path: &[u8]) -> Result<(), StoreError> {
        let parent = parent_of(path).to_vec();
        if path == b"/" || self.dirs_written.contains(&parent) {
            return Ok(());
        }
        self.parents(&parent)?;
        let f = self.found(&parent)?;
        self.out.dir(
            &entry_path(&parent)?,
            meta_of(f.dir.as_fd(), &f.name, &f.stat)?,
        )?;
        self.dirs_written.insert(parent);
        Ok(())
    }

    fn entry(&mut self, path: &[u8], f: &Found) -> Result<(), StoreError> {
        self.parents(path)?;
        let ep = entry_path(path)?;
        let st = &f.stat;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Directory {
            if self.dirs_written.insert(path.to_vec()) {
                self.out.dir(&ep, meta_of(f.dir.as_fd(), &f.name, st)?)?;
            }
            return Ok(());
        }
        if st.st_nlink > 1 {
            if let Some(first) = self.linked.get(&st.st_ino) {
                return self.out.hardlink(&ep, first);
            }
            self.linked.insert(st.st_ino, ep.clone());
        }
        let meta = meta_of(f.dir.as_fd(), &f.name, st)?;
        let dev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
        match kind {
            FileType::RegularFile => {
                let mut file = std::fs::File::from(layer::open_file(f.dir.as_fd(), &f.name)?);
                self.out.file(&ep, &meta, st.st_size as u64, &mut file)
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(f.dir.as_fd(), &f.name, Vec::new())?;
                self.out.symlink(&ep, &meta, target.as_bytes())
            }
            FileType::CharacterDevice => self.out.special(&ep, &meta, Special::Char(dev.0, dev.1)),
            FileType::BlockDevice => self.out.special(&ep, &meta, Special::Block(dev.0, dev.1)),
            FileType::Fifo => self.out.special(&ep, &meta, Special::Fifo),
            FileType::Socket => self.out.special(&ep, &meta, Special::Socket),
            _ => Err(StoreError::entry(path, "unsupported file type")),
        }
    }

    fn tree(&mut self, path: &[u8], f: &Found) -> Result<(), StoreError> {
        self.entry(path, f)?;
        let dir = f.open_dir()?;
        for name in names(dir.as_fd())? {
            let child_path = {
                let mut p = path.to_vec();
                if p != b"/" {
                    p.push(b'/');
                }
                p.extend_from_slice(&name);
                p
            };
            let mut rel = b"/".to_vec();
            rel.extend_from_slice(&name);
            let Some(child) = find(dir.as_fd(), &rel)? else {
                continue;
            };
            if child.is_dir() {
                self.tree(&child_path, &child)?;
            } else {
                self.entry(&child_path, &child)?;
            }
        }
        Ok(())
    }
}

/// Writes `steps` into `out`, reading entries from the merged view `full`.
pub fn write_steps(
    full: BorrowedFd<'_>,
    steps: &[Step],
    out: &mut TreeWriter,
) -> Result<(), StoreError> {
    let mut w = Writer {
        full,
        out,
        dirs_written: HashSet::new(),
        linked: HashMap::new(),
    };
    let root = w.found(b"/")?;
    w.out.dir(
        &entry_path(b"/")?,
        meta_of(root.dir.as_fd(), &root.name, &root.stat)?,
    )?;
    w.dirs_written.insert(b"/".to_vec());
    for step in steps {
        match step {
            Step::Delete(path) => {
                w.parents(path)?;
                w.out.whiteout(&entry_path(path)?)?;
            }
            Step::Write(path) => {
                let f = w.found(path)?;
                w.entry(path, &f)?;
            }
            Step::WriteTree { path, opaque } => {
                let f = w.found(path)?;
                w.tree(path, &f)?;
                if *opaque {
                    w.out.opaque(&entry_path(path)?)?;
                }
            }
        }
    }
    Ok(())
}
