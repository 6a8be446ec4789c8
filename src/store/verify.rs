//! Checking stored layers against their manifests: all at once (`verify`,
//! `mount --verify=full`) or file by file on first open (`--verify=lazy`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;
use rustix::fs::FileType;

use super::digest::{Digest, hash_copy};
use super::layout::Store;
use super::manifest::{Body, Manifest};
use super::tree_walk::{self, Item};
use super::{Progress, StoreError};
use crate::layer::{self, ContentCheck};

/// How much a mount of a stored image checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// Trust the store.
    None,
    /// Check each regular file's content the first time it is opened.
    #[default]
    Lazy,
    /// Check every layer completely before mounting.
    Full,
}

impl Store {
    /// The manifest stored for `d`, checked against its own digest.
    pub fn manifest(&self, d: &Digest) -> Result<Manifest, StoreError> {
        let path = self.layer_dir(d).join("manifest");
        let bytes = fs::read(&path).map_err(|e| StoreError::path(&path, e))?;
        if Digest::of(&bytes) != *d {
            return Err(StoreError::Corrupt {
                layer: d.to_string(),
                why: "its manifest file was changed".into(),
            });
        }
        Manifest::parse(&bytes)
    }

    /// Re-reads the whole tree of `d` (every byte of every file) and checks
    /// it hashes to `d`; on a mismatch, names the first entry that differs.
    pub fn verify_layer(&self, d: &Digest, progress: &dyn Progress) -> Result<(), StoreError> {
        let expected = self.manifest(d)?;
        progress.start(
            &format!("verifying {}", &d.hex()[..12]),
            Some(expected.content_size()),
        );
        let tree = layer::Layer::open(&self.tree_path(d))?;
        let actual = tree_walk::manifest_of(tree.root().as_fd(), |v, _| {
            let fd = layer::open_file(v.dir, v.name)?;
            let mut file = Progressed {
                inner: fs::File::from(fd),
                progress,
            };
            Ok(hash_copy(&mut file, None)?.0)
        })?;
        progress.finish();
        if actual.digest() == *d {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            layer: d.to_string(),
            why: first_difference(&expected, &actual),
        })
    }

    /// A content check for `--verify=lazy` over the stored tree of `d`.
    pub fn lazy_check(&self, d: &Digest) -> Result<LazyCheck, StoreError> {
        let manifest = self.manifest(d)?;
        let tree = self.tree_path(d);
        layer::Layer::open(&tree)?;
        Ok(LazyCheck {
            layer: *d,
            manifest,
            tree,
            expected: OnceLock::new(),
            verified: Mutex::new(HashSet::new()),
        })
    }
}

/// Per inode of a stored tree's regular file: its content digest, size and
/// (first) path, from the manifest.
type FilesByInode = HashMap<u64, (Digest, u64, Vec<u8>)>;

/// Maps each regular file of the tree at `tree` to its manifest record.
fn files_by_inode(manifest: &Manifest, tree: &Path) -> Result<FilesByInode, StoreError> {
    let tree = layer::Layer::open(tree)?;
    let mut expected = HashMap::new();
    tree_walk::walk(tree.root().as_fd(), &mut |v| {
        if let Item::Entry { stat, .. } = v.item
            && FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            && let Some(Body::File { size, sha256, .. }) = manifest
                .find(v.path)
                .and_then(|r| manifest.resolve(r))
                .map(|r| &r.body)
        {
            expected
                .entry(stat.st_ino)
                .or_insert_with(|| (*sha256, *size, v.path.to_vec()));
        }
        Ok(())
    })?;
    Ok(expected)
}

struct Progressed<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: std::io::Read> std::io::Read for Progressed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

fn first_difference(expected: &Manifest, actual: &Manifest) -> String {
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    for r in &expected.records {
        match actual.find(&r.path) {
            None => return format!("{} is missing", show(&r.path)),
            Some(a) if a.body != r.body => {
                let what = match (&r.body, &a.body) {
                    (Body::File { sha256: x, .. }, Body::File { sha256: y, .. }) if x != y => {
                        "content"
                    }
                    _ => "metadata",
                };
                return format!("{} differs ({what})", show(&r.path));
            }
            Some(_) => {}
        }
    }
    for a in &actual.records {
        if expected.find(&a.path).is_none() {
            return format!("{} was added", show(&a.path));
        }
    }
    "the tree differs".into()
}

/// `--verify=lazy`: the expected digest of every regular file of a stored
/// tree, by inode, and the inodes already found good.
#[derive(Debug)]
pub struct LazyCheck {
    layer: Digest,
    manifest: Manifest,
    tree: PathBuf,
    /// Built on the first open from the layer, not at mount: a mount pays
    /// nothing for layers it never reads a file of.
    expected: OnceLock<Result<FilesByInode, String>>,
    verified: Mutex<HashSet<u64>>,
}

impl ContentCheck for LazyCheck {
    fn check(&self, fd: BorrowedFd<'_>, ino: u64) -> std::io::Result<()> {
        if self.verified.lock().contains(&ino) {
            return Ok(());
        }
        let fail = |why: &str, path: &[u8]| {
            tracing::error!(
                layer = %self.layer,
                path = %String::from_utf8_lossy(path),
                "{why}: answering EIO"
            );
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        };
        let expected = match self
            .expected
            .get_or_init(|| files_by_inode(&self.manifest, &self.tree).map_err(|e| e.to_string()))
        {
            Ok(map) => map,
            Err(why) => return fail(&format!("cannot map the layer's files ({why})"), b"?"),
        };
        let Some((digest, size, path)) = expected.get(&ino) else {
            return fail("file is not in the layer's manifest", b"?");
        };
        // pread: the caller's file offset stays where it is.
        let mut reader = PreadReader { fd, pos: 0 };
        let (actual, len) = hash_copy(&mut reader, None)?;
        if actual != *digest || len != *size {
            return fail("content does not match the layer manifest", path);
        }
        self.verified.lock().insert(ino);
        Ok(())
    }
}

struct PreadReader<'a> {
    fd: BorrowedFd<'a>,
    pos: u64,
}

impl std::io::Read for PreadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = rustix::io::pread(self.fd, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
