//! Private temporary directories for mounts: temporary mount points,
//! ephemeral writable layers, workdirs beside a kept upper.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::MountError;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A new directory `stratafs-<what>-<pid>-<n>` (mode 0700) under the
/// system's temporary directory.
pub fn temp_dir(what: &str) -> Result<PathBuf, MountError> {
    let base = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("stratafs-{what}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| MountError::io("creating a temporary directory", e))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(MountError::io("creating a temporary directory", e)),
        }
    }
}

/// A temporary directory holding `upper/` and `work/` for a writable layer
/// thrown away with the mount; returns the directory, upper and work.
pub fn ephemeral_upper() -> Result<(PathBuf, PathBuf, PathBuf), MountError> {
    let dir = temp_dir("ephemeral")?;
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work] {
        if let Err(e) = std::fs::create_dir(d) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(MountError::io("creating the ephemeral upper", e));
        }
    }
    Ok((dir, upper, work))
}

/// A new workdir beside `upper` (the two must share a filesystem):
/// `.<name>.stratafs-work-<pid>`.
pub fn work_beside(upper: &Path) -> Result<PathBuf, MountError> {
    let name = upper
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upper".into());
    let parent = upper.parent().unwrap_or(Path::new("."));
    let work = parent.join(format!(".{name}.stratafs-work-{}", std::process::id()));
    std::fs::create_dir(&work).map_err(|e| MountError::io("creating a workdir", e))?;
    Ok(work)
}
