//! Importing layers: from a directory tree (any whiteout dialect) or a layer
//! tar (plain, gzip, zstd). Everything is built under `<store>/tmp/` and
//! renamed into place only once complete and flushed.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};

use super::compress::decompress;
use super::digest::{Digest, HashingReader};
use super::layout::{Scratch, Store, sync_fs};
use super::meta::{LayerMeta, now};
use super::tree_walk::{self, Item, meta_of};
use super::tree_writer::{EntryPath, Special, TreeWriter};
use super::{StoreError, tar_read};
use crate::layer;

/// Progress of a long operation, for a bar on a terminal. All optional.
pub trait Progress {
    /// A step begins; `total` bytes are expected, if known.
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `bytes` more were done.
    fn advance(&self, _bytes: u64) {}
    /// The step is over.
    fn finish(&self) {}
}

impl Expect {
    /// Checks what a blob hashed to against what was expected of it.
    fn check(&self, blob: Digest, diff_id: Digest) -> Result<(), StoreError> {
        for (what, want, actual) in [
            ("blob", self.blob, blob),
            ("layer diff_id", self.diff_id, diff_id),
        ] {
            if let Some(want) = want
                && want != actual
            {
                return Err(StoreError::Mismatch {
                    what,
                    blob: want.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// No progress shown.
pub struct Quiet;
impl Progress for Quiet {}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The layer, by its digest.
    pub digest: Digest,
    /// The layer was in the store already; nothing new was stored.
    pub existed: bool,
    /// Aliases for an existing layer not recorded yet ([`Expect::defer_aliases`]):
    /// give them to [`Store::add_aliases`] once the whole import succeeded.
    pub pending_aliases: Vec<String>,
}

/// What an OCI manifest says a blob must hash to.
#[derive(Debug, Default, Clone, Copy)]
pub struct Expect {
    /// Digest of the bytes as given (compressed or not).
    pub blob: Option<Digest>,
    /// Digest of the uncompressed tar.
    pub diff_id: Option<Digest>,
    /// Leave new aliases of a layer already stored to the caller, so that an
    /// import that fails later changes nothing.
    pub defer_aliases: bool,
}

struct Counting<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

fn open_path_dir(path: &Path) -> Result<OwnedFd, StoreError> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StoreError::path(path, e.into()))
}

fn entry_path(manifest_path: &[u8]) -> Result<EntryPath, StoreError> {
    EntryPath::parse(manifest_path.strip_prefix(b"/").unwrap_or(manifest_path))
}

impl Store {
    fn new_tree(&self) -> Result<(Scratch, TreeWriter), StoreError> {
        let scratch = self.scratch()?;
        let tree = scratch.path().join("tree");
        fs::create_dir(&tree).map_err(|e| StoreError::path(&tree, e))?;
        let writer = TreeWriter::new(open_path_dir(&tree)?)?;
        Ok((scratch, writer))
    }

    /// Imports a directory tree. Its whiteouts and opaque markers may be in
    /// any dialect; symlinks are stored, never followed.
    pub fn import_dir(&self, src: &Path, progress: &dyn Progress) -> Result<Imported, StoreError> {
        let source = layer::Layer::open(src)?;
        let root = source.root().as_fd();
        let expected = tree_walk::manifest_of(root, |v, _| tree_walk::hash_file(v))?;
        let digest = expected.digest();
        if self.has_layer(&digest) {
            return Ok(Imported {
                digest,
                existed: true,
                pending_aliases: Vec::new(),
            });
        }
        progress.start("copying", Some(expected.content_size()));
        let (scratch, mut writer) = self.new_tree()?;
        let mut first_name: HashMap<u64, EntryPath> = HashMap::new();
        tree_walk::walk(root, &mut |v| {
            let path = entry_path(v.path)?;
            let stat = match v.item {
                Item::Whiteout => return writer.whiteout(&path),
                Item::Entry { stat, opaque } => {
                    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                        if !opaque && crate::layer::is_implied(v.dir, v.name) {
                            return writer.implied_dir(&path);
                        }
                        writer.dir(&path, meta_of(v.dir, v.name, stat)?)?;
                        if opaque {
                            writer.opaque(&path)?;
                        }
                        return Ok(());
                    }
                    stat
                }
            };
            if stat.st_nlink > 1 {
                if let Some(first) = first_name.get(&stat.st_ino) {
                    return writer.hardlink(&path, first);
                }
                first_name.insert(stat.st_ino, path.clone());
            }
            let meta = meta_of(v.dir, v.name, stat)?;
            let dev = (
                rustix::fs::major(stat.st_rdev),
                rustix::fs::minor(stat.st_rdev),
            );
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => {
                    let file = fs::File::from(layer::open_file(v.dir, v.name)?);
                    let mut counting = Counting {
                        inner: file,
                        progress,
                    };
                    writer.file(&path, &meta, stat.st_size as u64, &mut counting)
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(v.dir, v.name, Vec::new())?;
                    writer.symlink(&path, &meta, target.as_bytes())
                }
                FileType::CharacterDevice => {
                    writer.special(&path, &meta, Special::Char(dev.0, dev.1))
                }
                FileType::BlockDevice => writer.special(&path, &meta, Special::Block(dev.0, dev.1)),
                FileType::Fifo => writer.special(&path, &meta, Special::Fifo),
                FileType::Socket => writer.special(&path, &meta, Special::Socket),
                _ => Err(StoreError::entry(v.path, "unsupported file type")),
            }
        })?;
        progress.finish();
        let digests = writer.finish()?;
        let imported = self.publish(
            scratch,
            &digests,
            Vec::new(),
            src.display().to_string(),
            false,
        )?;
        if imported.digest != digest {
            // Only where the tree could not be copied faithfully (owners
            // without privileges): the stored tree's own digest names it.
            tracing::warn!(source = %digest, stored = %imported.digest, "stored tree differs from its source");
        }
        Ok(imported)
    }

    /// Stores the tree `fill` writes (a commit's changeset, say).
    pub fn import_with(
        &self,
        source: &str,
        fill: impl FnOnce(&mut TreeWriter) -> Result<(), StoreError>,
    ) -> Result<Imported, StoreError> {
        let (scratch, mut writer) = self.new_tree()?;
        fill(&mut writer)?;
        let digests = writer.finish()?;
        self.publish(scratch, &digests, Vec::new(), source.to_string(), false)
    }

    /// Imports a layer tar file (plain, gzip or zstd). A tar whose digest
    /// (compressed or not) names a stored layer is not extracted again.
    pub fn import_tar_file(
        &self,
        path: &Path,
        progress: &dyn Progress,
    ) -> Result<Imported, StoreError> {
        let open = || fs::File::open(path).map_err(|e| StoreError::path(path, e));
        let meta = open()?.metadata().map_err(|e| StoreError::path(path, e))?;
        if !meta.is_file() {
            // A pipe can be read once: no look-ahead for a known digest.
            progress.start("importing", None);
            let r = self.import_tar_stream(
                &mut open()?,
                Expect::default(),
                path.display().to_string(),
                progress,
            );
            progress.finish();
            return r;
        }
        let len = Some(meta.len());
        let (blob, _) = HashingReader::new(open()?)
            .finish()
            .map_err(|e| StoreError::path(path, e))?;
        if let Some(digest) = self.find_alias(&blob)? {
            return Ok(Imported {
                digest,
                existed: true,
                pending_aliases: Vec::new(),
            });
        }
        progress.start("importing", len);
        let r = self.import_tar_stream(
            &mut open()?,
            Expect {
                blob: Some(blob),
                ..Expect::default()
            },
            path.display().to_string(),
            progress,
        );
        progress.finish();
        r
    }

    /// Imports one layer tar from a stream, checking the digests `expect`
    /// gives for the compressed and the uncompressed bytes.
    pub fn import_tar_stream(
        &self,
        reader: &mut dyn Read,
        expect: Expect,
        source: String,
        progress: &dyn Progress,
    ) -> Result<Imported, StoreError> {
        let (scratch, mut writer) = self.new_tree()?;
        let mut blob = HashingReader::new(Counting {
            inner: reader,
            progress,
        });
        let diff_id = {
            let mut plain = HashingReader::new(decompress(&mut blob)?);
            let end = tar_read::extract(&mut plain, &mut writer)?;
            let (diff_id, len) = plain.finish().map_err(|e| {
                StoreError::Invalid(format!("corrupt or truncated layer stream: {e}"))
            })?;
            tar_read::check_end(&end, len)?;
            diff_id
        };
        let (blob_digest, _) = blob
            .finish()
            .map_err(|e| StoreError::Invalid(format!("reading the layer: {e}")))?;
        expect.check(blob_digest, diff_id)?;
        let digests = writer.finish()?;
        let mut aliases = vec![diff_id];
        if blob_digest != diff_id {
            aliases.push(blob_digest);
        }
        self.publish(scratch, &digests, aliases, source, expect.defer_aliases)
    }

    /// Checks a blob (compressed or not) against the digests `expect` gives,
    /// reading it whole but storing nothing: for a layer already stored
    /// under its diff_id, whose blob has not been seen.
    pub fn check_blob(&self, reader: &mut dyn Read, expect: Expect) -> Result<(), StoreError> {
        let mut blob = HashingReader::new(reader);
        let (diff_id, _) = HashingReader::new(decompress(&mut blob)?)
            .finish()
            .map_err(|e| StoreError::Invalid(format!("corrupt or truncated layer stream: {e}")))?;
        let (blob_digest, _) = blob
            .finish()
            .map_err(|e| StoreError::Invalid(format!("reading the layer: {e}")))?;
        expect.check(blob_digest, diff_id)
    }

    /// Records more aliases of stored layer `d`.
    pub fn add_aliases(&self, d: &Digest, aliases: &[String]) -> Result<(), StoreError> {
        if aliases.is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        self.merge_aliases(d, aliases.to_vec())
    }

    /// Adds `aliases` to layer `d`'s meta.json (store lock held).
    fn merge_aliases(&self, d: &Digest, aliases: Vec<String>) -> Result<(), StoreError> {
        let dest = self.layer_dir(d);
        let mut old = self.layer_meta(d)?;
        let before = old.aliases.len();
        for a in aliases {
            if !old.aliases.contains(&a) && a != old.digest {
                old.aliases.push(a);
            }
        }
        if old.aliases.len() != before {
            set_mode(&dest, 0o755)?;
            let written = self.write_layer_meta(&dest, &old);
            set_mode(&dest, 0o555)?;
            written?;
        }
        Ok(())
    }

    /// Computes the manifest of a finished tree, writes it and meta.json,
    /// flushes, and renames the whole into place unless the layer exists.
    fn publish(
        &self,
        scratch: Scratch,
        digests: &HashMap<u64, Digest>,
        aliases: Vec<Digest>,
        source: String,
        defer_aliases: bool,
    ) -> Result<Imported, StoreError> {
        let tree = open_path_dir(&scratch.path().join("tree"))?;
        let manifest =
            tree_walk::manifest_of(tree.as_fd(), |v, st| match digests.get(&st.st_ino) {
                Some(d) => Ok(*d),
                None => tree_walk::hash_file(v),
            })?;
        let digest = manifest.digest();
        let mpath = scratch.path().join("manifest");
        fs::write(&mpath, manifest.to_bytes()).map_err(|e| StoreError::path(&mpath, e))?;
        let aliases: Vec<String> = aliases
            .iter()
            .filter(|a| **a != digest)
            .map(|a| a.to_string())
            .collect();
        let meta = LayerMeta {
            digest: digest.to_string(),
            size: manifest.content_size(),
            entries: manifest.records.len() as u64,
            created: now(),
            aliases: aliases.clone(),
            source,
        };
        self.write_layer_meta(scratch.path(), &meta)?;
        make_read_only(&mpath)?;
        make_read_only(&scratch.path().join("meta.json"))?;
        sync_fs(&super::layout::open_dir(scratch.path())?)?;
        let _lock = self.lock()?;
        let dest = self.layer_dir(&digest);
        if self.has_layer(&digest) {
            if defer_aliases {
                return Ok(Imported {
                    digest,
                    existed: true,
                    pending_aliases: aliases,
                });
            }
            self.merge_aliases(&digest, aliases)?;
            return Ok(Imported {
                digest,
                existed: true,
                pending_aliases: Vec::new(),
            });
        }
        // Nothing is added to or taken from a stored layer's directory; its
        // files' own modes are content (covered by the digest) and kept.
        // (After the move: moving a directory needs it writable.)
        fs::rename(scratch.path(), &dest).map_err(|e| StoreError::path(&dest, e))?;
        scratch.keep();
        set_mode(&dest, 0o555)?;
        fs::File::open(self.layers_dir())
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::path(&self.layers_dir(), e))?;
        Ok(Imported {
            digest,
            existed: false,
            pending_aliases: Vec::new(),
        })
    }
}

fn make_read_only(path: &Path) -> Result<(), StoreError> {
    set_mode(path, 0o444)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::path(path, e))
}
