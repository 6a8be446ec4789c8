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

/// The registry directory, made if missing, if it can be trusted: owned by
/// this user and writable by nobody else (a record decides what `diff` and
/// `commit` read, and what `commit` remounts).
fn trusted_dir(create: bool) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = registry_dir();
    let me = rustix::process::geteuid().as_raw();
    let parent = dir.parent()?.to_path_buf();
    for d in [&parent, &dir] {
        if create && !d.exists() {
            std::fs::create_dir(d).ok()?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).ok()?;
        }
        let mut m = std::fs::symlink_metadata(d).ok()?;
        // Ours but writable by others (made under umask 0 by an older
        // version): close it; each record is still checked on its own.
        if m.is_dir() && m.uid() == me && m.mode() & 0o022 != 0 {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
            m = std::fs::symlink_metadata(d).ok()?;
        }
        if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
            tracing::warn!(dir = %d.display(), "mount registry not trusted (owner or mode); not used");
            return None;
        }
    }
    Some(dir)
}

/// A record file written by this user and by nobody else.
fn trusted_record(path: &Path) -> Option<MountRecord> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.is_file() || m.uid() != rustix::process::geteuid().as_raw() || m.mode() & 0o022 != 0 {
        return None;
    }
    let record: MountRecord = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    // A pid can be reused: the mount point must also still be a FUSE mount.
    (alive(record.pid) && is_fuse_mount(&record.mountpoint)).then_some(record)
}

fn is_fuse_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.split(|b| *b == b'\n').any(|line| {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let sep = fields.iter().position(|f| *f == b"-");
        match (fields.get(4), sep.and_then(|i| fields.get(i + 1))) {
            (Some(mp), Some(fstype)) => unescape_octal(mp) == want && fstype.starts_with(b"fuse"),
            _ => false,
        }
    })
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(v) = field
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
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
    let dir = trusted_dir(true)?;
    let path = record_path(&record.mountpoint);
    forget_dead(&dir);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(record)?)?;
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

/// Removes records of processes that are gone (killed daemons).
fn forget_dead(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let dead = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<MountRecord>(&b).ok())
            .is_some_and(|r| !alive(r.pid));
        if dead {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The live mount at `mountpoint`, if stratafs serves one there.
pub fn find(mountpoint: &Path) -> Option<MountRecord> {
    trusted_dir(false)?;
    let mountpoint = std::path::absolute(mountpoint).ok()?;
    let record = trusted_record(&record_path(&mountpoint))?;
    (record.mountpoint == mountpoint).then_some(record)
}

/// The live mount whose writable layer is `upper`, if any.
pub fn find_by_upper(upper: &Path) -> Option<MountRecord> {
    let upper = std::fs::canonicalize(upper).ok()?;
    std::fs::read_dir(trusted_dir(false)?)
        .ok()?
        .flatten()
        .filter_map(|e| trusted_record(&e.path()))
        .find(|r| {
            r.upper
                .as_ref()
                .and_then(|u| std::fs::canonicalize(u).ok())
                .is_some_and(|u| u == upper)
        })
}

/// Waits (up to `limit`) until process `pid` has exited (or is a zombie).
pub fn wait_for_exit(pid: u32, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().chars().next())
            });
        match state {
            None | Some(Some('Z')) | Some(Some('X')) => return,
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
    tracing::warn!(pid, "the daemon is still running after the unmount");
}
