//! Where things live in a store, the store-wide lock, scratch space for
//! imports in progress, and finding layers by digest, prefix or alias.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};

use super::StoreError;
use super::digest::Digest;
use super::meta::LayerMeta;

/// An opened store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// `$STRATAFS_STORE`, else `/var/lib/stratafs` for root, else
/// `$XDG_DATA_HOME/stratafs` (`~/.local/share/stratafs`).
pub fn default_store_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRATAFS_STORE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/stratafs");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("stratafs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/stratafs")
}

/// The store-wide lock: held exclusively while layers or images are
/// published or removed, so those steps never interleave.
pub struct StoreLock {
    _fd: OwnedFd,
}

fn mkdirs(path: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(path).map_err(|e| StoreError::path(path, e))
}

impl Store {
    /// Opens the store at `root`, creating its directories on first use,
    /// and clears what crashed imports left behind.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: std::path::absolute(root).map_err(|e| StoreError::path(root, e))?,
        };
        mkdirs(&store.root.join("layers/sha256"))?;
        mkdirs(&store.root.join("images"))?;
        mkdirs(&store.root.join("tmp"))?;
        store.clean_tmp()?;
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<store>/layers/sha256`.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers/sha256")
    }

    /// Where layer `d` lives.
    pub fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.layers_dir().join(d.hex())
    }

    /// Layer `d`'s files.
    pub fn tree_path(&self, d: &Digest) -> PathBuf {
        self.layer_dir(d).join("tree")
    }

    /// `<store>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// Whether layer `d` is stored (complete: its manifest is there).
    pub fn has_layer(&self, d: &Digest) -> bool {
        self.layer_dir(d).join("manifest").is_file()
    }

    /// Takes the store-wide lock, waiting for it.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let fd = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| StoreError::path(&path, e.into()))?;
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
        Ok(StoreLock { _fd: fd })
    }

    /// A fresh scratch directory `<store>/tmp/<pid>-<n>`, removed by
    /// [`Store::clean_tmp`] once its process is gone.
    pub fn scratch(&self) -> Result<Scratch, StoreError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}-{nanos}", std::process::id()));
        fs::create_dir(&path).map_err(|e| StoreError::path(&path, e))?;
        Ok(Scratch { path: Some(path) })
    }

    /// Removes scratch directories of processes that no longer run.
    pub fn clean_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(|e| StoreError::path(&tmp, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                remove_all(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Every stored layer's metadata, by digest order.
    pub fn layers(&self) -> Result<Vec<LayerMeta>, StoreError> {
        let dir = self.layers_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::path(&dir, e))? {
            let entry = entry?;
            let Some(d) = entry.file_name().to_str().and_then(Digest::from_hex) else {
                continue;
            };
            out.push(self.layer_meta(&d)?);
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Layer `d`'s `meta.json`.
    pub fn layer_meta(&self, d: &Digest) -> Result<LayerMeta, StoreError> {
        let path = self.layer_dir(d).join("meta.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("no layer {d} in the store")));
            }
            Err(e) => return Err(StoreError::path(&path, e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Writes `meta.json` into layer directory `dir`, atomically.
    pub fn write_layer_meta(&self, dir: &Path, meta: &LayerMeta) -> Result<(), StoreError> {
        write_atomic(&dir.join("meta.json"), &serde_json::to_vec_pretty(meta)?)
    }

    /// The layer an alias (diff_id or blob digest) names, if any.
    pub fn find_alias(&self, alias: &Digest) -> Result<Option<Digest>, StoreError> {
        let a = alias.to_string();
        if self.has_layer(alias) {
            return Ok(Some(*alias));
        }
        for meta in self.layers()? {
            if meta.aliases.contains(&a) {
                return Ok(Digest::parse(&meta.digest).ok());
            }
        }
        Ok(None)
    }

    /// Finds a layer by full digest, alias, or unambiguous prefix
    /// (`sha256:ab12`, `ab12`; at least 4 hex digits).
    pub fn resolve_layer(&self, spec: &str) -> Result<Digest, StoreError> {
        if let Ok(d) = Digest::parse(spec) {
            if let Some(found) = self.find_alias(&d)? {
                return Ok(found);
            }
            return Err(StoreError::NotFound(format!("no layer {d} in the store")));
        }
        let prefix = spec.strip_prefix("sha256:").unwrap_or(spec);
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::BadDigest(spec.to_string()));
        }
        let prefix = prefix.to_ascii_lowercase();
        let matches: Vec<Digest> = self
            .layers()?
            .iter()
            .filter_map(|m| Digest::parse(&m.digest).ok())
            .filter(|d| d.hex().starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(StoreError::NotFound(format!("no layer matches {spec}"))),
            many => Err(StoreError::Ambiguous(format!(
                "{spec} is ambiguous: it starts {} layers ({}, ...)",
                many.len(),
                many[0]
            ))),
        }
    }
}

/// A scratch directory, removed on drop unless kept.
pub struct Scratch {
    path: Option<PathBuf>,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new("/nonexistent"))
    }

    /// Gives the directory up (it was renamed into place).
    pub fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.path.take()
            && let Err(e) = remove_all(&p)
        {
            tracing::warn!(path = %p.display(), error = %e, "could not remove scratch directory");
        }
    }
}

/// Removes a directory tree, fd-relative and never following a symlink
/// (read-only directories made writable first).
pub fn remove_all(path: &Path) -> Result<(), StoreError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(StoreError::Invalid(format!(
            "will not remove {}",
            path.display()
        )));
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StoreError::path(parent, e.into()))?;
    let name = crate::layer::to_cstring(name)
        .ok_or_else(|| StoreError::Invalid(format!("bad path {}", path.display())))?;
    crate::layer::remove_tree(dir.as_fd(), &name).map_err(|e| match e {
        crate::layer::LayerError::Io(io) => StoreError::path(path, io),
        other => other.into(),
    })
}

/// Writes `bytes` to `path` through a temporary name and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| StoreError::path(&tmp, e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::path(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::path(path, e))
}

/// Opens a directory for fd-relative work.
pub fn open_dir(path: &Path) -> Result<OwnedFd, StoreError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| StoreError::path(path, e.into()))
}

/// Flushes the filesystem holding `fd`.
pub fn sync_fs(fd: &OwnedFd) -> Result<(), StoreError> {
    rustix::fs::syncfs(fd.as_fd())?;
    Ok(())
}
