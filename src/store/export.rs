//! `layer export`: a deterministic OCI layer tar from a stored layer. The
//! same layer always gives the same bytes: entries depth first, names in
//! byte order with a directory's whiteouts (`.wh..wh..opq` first) before
//! its other entries, PAX records for long names, nanosecond or negative
//! times, large ids and xattrs; numeric ids only, no user or group names.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tar::{EntryType, Header};

use super::digest::Digest;
use super::layout::Store;
use super::manifest::{Body, Manifest, Meta, Record};
use super::{StoreError, pax_time};
use crate::layer;

const USTAR_MAX_ID: u32 = 0o7777777;

impl Store {
    /// Writes layer `d` as a tar to `out`.
    pub fn export_layer(&self, d: &Digest, out: &mut dyn Write) -> Result<(), StoreError> {
        let manifest = self.manifest(d)?;
        let tree = layer::Layer::open(&self.tree_path(d))?;
        let mut ex = Exporter {
            manifest: &manifest,
            tree: tree.root().as_fd(),
            builder: tar::Builder::new(out),
            first_emitted: HashMap::new(),
            children: children_of(&manifest),
        };
        if let Some(root) = manifest.find(b"/") {
            ex.root(root)?;
        }
        ex.dir(b"/")?;
        ex.builder.finish()?;
        Ok(())
    }
}

fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(0) => b"/",
        Some(i) => &path[..i],
        None => b"/",
    }
}

/// Each directory's records, by name.
fn children_of(m: &Manifest) -> HashMap<Vec<u8>, Vec<&Record>> {
    let mut out: HashMap<Vec<u8>, Vec<&Record>> = HashMap::new();
    for r in m.records.iter().filter(|r| r.path != b"/") {
        out.entry(parent_of(&r.path).to_vec()).or_default().push(r);
    }
    out
}

struct Exporter<'a, W: Write> {
    manifest: &'a Manifest,
    tree: BorrowedFd<'a>,
    builder: tar::Builder<W>,
    /// Per inode (its manifest record's path): the first name written, which
    /// later names link to.
    first_emitted: HashMap<Vec<u8>, Vec<u8>>,
    children: HashMap<Vec<u8>, Vec<&'a Record>>,
}

fn tar_name(path: &[u8], dir: bool) -> Vec<u8> {
    let mut name = path.strip_prefix(b"/").unwrap_or(path).to_vec();
    if dir {
        name.push(b'/');
    }
    name
}

impl<W: Write> Exporter<'_, W> {
    fn root(&mut self, root: &Record) -> Result<(), StoreError> {
        // An implied root (the archive had no `./`) is not written either.
        if let Body::Dir { meta, opaque } = &root.body {
            self.header(
                b"./",
                EntryType::Directory,
                Some(meta),
                0,
                None,
                &mut std::io::empty(),
            )?;
            if *opaque {
                self.marker(b"/.wh..wh..opq")?;
            }
        }
        Ok(())
    }

    fn dir(&mut self, path: &[u8]) -> Result<(), StoreError> {
        let Some(kids) = self.children.get(path).cloned() else {
            return Ok(());
        };
        let mut whiteouts = BTreeMap::new();
        for r in &kids {
            if r.body == Body::Whiteout {
                let mut wh = parent_of(&r.path).to_vec();
                if wh != b"/" {
                    wh.push(b'/');
                }
                wh.extend_from_slice(b".wh.");
                wh.extend_from_slice(
                    &r.path[r.path.iter().rposition(|b| *b == b'/').unwrap_or(0) + 1..],
                );
                whiteouts.insert(wh, ());
            }
        }
        for wh in whiteouts.keys() {
            self.marker(wh)?;
        }
        for r in kids {
            self.entry(r)?;
        }
        Ok(())
    }

    fn marker(&mut self, path: &[u8]) -> Result<(), StoreError> {
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        };
        self.header(
            &tar_name(path, false),
            EntryType::Regular,
            Some(&meta),
            0,
            None,
            &mut std::io::empty(),
        )
    }

    fn entry(&mut self, r: &Record) -> Result<(), StoreError> {
        let name = |dir| tar_name(&r.path, dir);
        // Hard links: the inode is written once, at its first name in tar order.
        let inode = match &r.body {
            Body::HardLink { target } => Some(target.clone()),
            Body::File { .. }
            | Body::Symlink { .. }
            | Body::Char { .. }
            | Body::Block { .. }
            | Body::Fifo { .. }
            | Body::Socket { .. } => Some(r.path.clone()),
            _ => None,
        };
        if let Some(inode) = &inode {
            if let Some(first) = self.first_emitted.get(inode).cloned() {
                return self.header(
                    &name(false),
                    EntryType::Link,
                    None,
                    0,
                    Some(&tar_name(&first, false)),
                    &mut std::io::empty(),
                );
            }
            self.first_emitted.insert(inode.clone(), r.path.clone());
        }
        let body = match &r.body {
            Body::HardLink { target } => {
                &self
                    .manifest
                    .find(target)
                    .ok_or_else(|| {
                        StoreError::BadManifest(format!(
                            "dangling hard link {:?}",
                            String::from_utf8_lossy(&r.path)
                        ))
                    })?
                    .body
            }
            b => b,
        };
        match body {
            Body::Whiteout | Body::HardLink { .. } => Ok(()),
            // Only its content is the layer's.
            Body::Implied => self.dir(&r.path),
            Body::Dir { meta, opaque } => {
                self.header(
                    &name(true),
                    EntryType::Directory,
                    Some(meta),
                    0,
                    None,
                    &mut std::io::empty(),
                )?;
                if *opaque {
                    let mut m = r.path.clone();
                    m.extend_from_slice(b"/.wh..wh..opq");
                    self.marker(&m)?;
                }
                self.dir(&r.path)
            }
            Body::File { meta, size, sha256 } => {
                let source = inode.as_deref().unwrap_or(&r.path);
                let fd = open_in_tree(self.tree, source)?;
                let mut file = std::fs::File::from(fd);
                let mut checked = Checked {
                    inner: &mut file,
                    hasher: Default::default(),
                    len: 0,
                };
                self.header(
                    &name(false),
                    EntryType::Regular,
                    Some(meta),
                    *size,
                    None,
                    &mut checked,
                )?;
                use sha2::Digest as _;
                let actual = Digest(checked.hasher.finalize().into());
                if actual != *sha256 || checked.len != *size {
                    return Err(StoreError::Corrupt {
                        layer: "being exported".into(),
                        why: format!("{} differs (content)", String::from_utf8_lossy(&r.path)),
                    });
                }
                Ok(())
            }
            Body::Symlink { meta, target } => self.header(
                &name(false),
                EntryType::Symlink,
                Some(meta),
                0,
                Some(target),
                &mut std::io::empty(),
            ),
            Body::Char { meta, major, minor } => {
                self.device(&name(false), EntryType::Char, meta, *major, *minor)
            }
            Body::Block { meta, major, minor } => {
                self.device(&name(false), EntryType::Block, meta, *major, *minor)
            }
            Body::Fifo { meta } => self.header(
                &name(false),
                EntryType::Fifo,
                Some(meta),
                0,
                None,
                &mut std::io::empty(),
            ),
            Body::Socket { .. } => Err(StoreError::entry(
                &r.path,
                "sockets cannot be written to a tar",
            )),
        }
    }

    fn device(
        &mut self,
        name: &[u8],
        kind: EntryType,
        meta: &Meta,
        major: u32,
        minor: u32,
    ) -> Result<(), StoreError> {
        let mut h = Header::new_ustar();
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.write(h, name, kind, Some(meta), 0, None, &mut std::io::empty())
    }

    fn header(
        &mut self,
        name: &[u8],
        kind: EntryType,
        meta: Option<&Meta>,
        size: u64,
        link: Option<&[u8]>,
        data: &mut dyn Read,
    ) -> Result<(), StoreError> {
        self.write(Header::new_ustar(), name, kind, meta, size, link, data)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        mut h: Header,
        name: &[u8],
        kind: EntryType,
        meta: Option<&Meta>,
        size: u64,
        link: Option<&[u8]>,
        data: &mut dyn Read,
    ) -> Result<(), StoreError> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let ustar = h
            .as_ustar_mut()
            .ok_or_else(|| StoreError::Invalid("ustar header".into()))?;
        if name.len() > 100 {
            pax.push(("path".into(), name.to_vec()));
        }
        let n = name.len().min(100);
        ustar.name[..n].copy_from_slice(&name[..n]);
        if let Some(link) = link {
            if link.len() > 100 {
                pax.push(("linkpath".into(), link.to_vec()));
            }
            let n = link.len().min(100);
            ustar.linkname[..n].copy_from_slice(&link[..n]);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        let meta = meta.cloned().unwrap_or(Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        });
        h.set_mode(meta.mode);
        for (key, id) in [("uid", meta.uid), ("gid", meta.gid)] {
            if id > USTAR_MAX_ID {
                pax.push((key.into(), id.to_string().into_bytes()));
            }
        }
        h.set_uid(u64::from(meta.uid.min(USTAR_MAX_ID)));
        h.set_gid(u64::from(meta.gid.min(USTAR_MAX_ID)));
        h.set_mtime(meta.mtime.max(0) as u64);
        if let Some(t) = pax_time::format(meta.mtime, meta.mtime_nsec) {
            pax.push(("mtime".into(), t.into_bytes()));
        }
        for (attr, value) in &meta.xattrs {
            let attr = std::str::from_utf8(attr).map_err(|_| {
                StoreError::entry(name, "xattr name is not UTF-8, which PAX cannot carry")
            })?;
            pax.push((format!("SCHILY.xattr.{attr}"), value.clone()));
        }
        if !pax.is_empty() {
            self.builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        h.set_cksum();
        self.builder.append(&h, data)?;
        Ok(())
    }
}

/// Hashes what is read through it, to check the content afterwards.
struct Checked<'a, R> {
    inner: &'a mut R,
    hasher: sha2::Sha256,
    len: u64,
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Opens a regular file of the tree by its `/`-rooted manifest path.
fn open_in_tree(tree: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, StoreError> {
    let parts: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(StoreError::entry(path, "not a file"));
    };
    let mut dir = rustix::io::dup(tree)?;
    for d in dirs {
        let c = CString::new(*d).map_err(|_| StoreError::entry(path, "NUL in path"))?;
        dir = layer::open_subdir(dir.as_fd(), &c)?;
    }
    let c = CString::new(*last).map_err(|_| StoreError::entry(path, "NUL in path"))?;
    Ok(layer::open_file(dir.as_fd(), &c)?)
}
