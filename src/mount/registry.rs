//! A record of each live mount (what it merges, which process serves it),
//! so that `diff` and `commit` can be pointed at a mount point. One JSON
//! file per mount under the runtime directory, removed when the mount ends;
//! records of processes that are gone are ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What one live mount merges.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    pub mountpoint: PathBuf,
    /// Top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// The process serving it.
    pub pid: u32,
}

/// `/run/stratafs/mounts` for root, else `$XDG_RUNTIME_DIR/stratafs/mounts`
/// (or `/tmp/stratafs-<uid>/mounts`).
pub fn registry_dir() -> PathBuf {
    let uid = rustix::process::geteuid();
    let base = if uid.is_root() {
        PathBuf::from("/run/stratafs")
    } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(d).join("stratafs")
    } else {
        std::env::temp_dir().join(format!("stratafs-{}", uid.as_raw()))
    };
    base.join("mounts")
}

fn record_path(mountpoint: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let key = crate::store::Digest::of(mountpoint.as_os_str().as_bytes()).hex();
    registry_dir().join(format!("{}.json", &key[..32]))
}

/// Removes the record when dropped.
#[derive(Debug)]
pub struct Registered {
    path: PathBuf,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Records a mount; failures only cost `diff MOUNT` its lookup.
pub fn register(record: &MountRecord) -> Option<Registered> {
    let path = record_path(&record.mountpoint);
    let dir = registry_dir();
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)?;
        std::fs::rename(&tmp, &path)
    };
    match write() {
        Ok(()) => Some(Registered { path }),
        Err(e) => {
            tracing::debug!(error = %e, "mount not registered");
            None
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The live mount at `mountpoint`, if stratafs serves one there.
pub fn find(mountpoint: &Path) -> Option<MountRecord> {
    let mountpoint = std::path::absolute(mountpoint).ok()?;
    let bytes = std::fs::read(record_path(&mountpoint)).ok()?;
    let record: MountRecord = serde_json::from_slice(&bytes).ok()?;
    (record.mountpoint == mountpoint && alive(record.pid)).then_some(record)
}

/// The live mount whose writable layer is `upper`, if any.
pub fn find_by_upper(upper: &Path) -> Option<MountRecord> {
    let upper = std::fs::canonicalize(upper).ok()?;
    std::fs::read_dir(registry_dir())
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<MountRecord>(&b).ok())
        .find(|r| {
            alive(r.pid)
                && r.upper
                    .as_ref()
                    .and_then(|u| std::fs::canonicalize(u).ok())
                    .is_some_and(|u| u == upper)
        })
}
