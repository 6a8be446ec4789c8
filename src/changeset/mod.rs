//! What a writable layer changed: `stratafs diff` (the changes, as
//! `docker diff` lists them) and `stratafs commit` (the changes as a new
//! stored layer: an OCI changeset). Both compare the merged view with the
//! changes against the view of the lower layers alone, walking only where
//! the upper directory has entries; entries are read through real mounts,
//! so redirects, metadata-only copies and hard links come out as the
//! mount shows them.

mod freeze;
mod plan;
mod touched;
mod view;
mod write;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

pub use plan::{Change, ChangeKind, Step};

use crate::mount::{self, Mount, MountError};
use crate::store::{Imported, StoreError};

/// What a changeset is computed from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer.
    pub upper: PathBuf,
    /// The upper's workdir, when known (its hard-link index is used).
    pub work: Option<PathBuf>,
    /// A live mount of it, read (frozen) instead of mounting anew.
    pub live: Option<PathBuf>,
}

/// Why a diff or commit failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesetError {
    /// Reading or storing layers.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Mounting the views compared.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// What was asked makes no sense (said how).
    #[error("{0}")]
    Usage(String),
}

impl Source {
    /// A live mount point, or an upper directory (of a live mount, or with
    /// `lowers` given).
    pub fn resolve(
        target: &Path,
        lowers: Vec<PathBuf>,
        work: Option<PathBuf>,
    ) -> Result<Source, ChangesetError> {
        let record = mount::find_mount(target).or_else(|| mount::find_by_upper(target));
        if let Some(r) = record {
            let upper = r.upper.ok_or_else(|| {
                ChangesetError::Usage(format!(
                    "{} is a read-only mount: it has no changes",
                    target.display()
                ))
            })?;
            return Ok(Source {
                lowers: r.lowers,
                upper,
                work: r.work,
                live: Some(r.mountpoint),
            });
        }
        if lowers.is_empty() {
            return Err(ChangesetError::Usage(format!(
                "{} is not a live stratafs mount or the upper of one: name its lower layers (--lower DIR... or --image NAME)",
                target.display()
            )));
        }
        if !target.is_dir() {
            return Err(ChangesetError::Usage(format!(
                "{}: not a directory",
                target.display()
            )));
        }
        Ok(Source {
            lowers,
            upper: target.to_path_buf(),
            work,
            live: None,
        })
    }
}

/// Runs `f` on the three views of `src`, then unmounts what it mounted.
fn with_views<T>(
    src: &Source,
    freeze: bool,
    f: impl FnOnce(&plan::Views<'_>) -> Result<T, ChangesetError>,
) -> Result<T, ChangesetError> {
    let mut below = Mount::builder();
    for l in &src.lowers {
        below = below.lower(l);
    }
    let below = below.mount_temp()?;
    let upper = crate::layer::Layer::open(&src.upper).map_err(StoreError::from)?;
    let below_root = crate::layer::Layer::open(below.path()).map_err(StoreError::from)?;
    let result = match &src.live {
        Some(mnt) => {
            let _frozen = if freeze {
                Some(freeze::Frozen::new(mnt)?)
            } else {
                None
            };
            let full = crate::layer::Layer::open(mnt).map_err(StoreError::from)?;
            f(&plan::Views {
                full: full.root().as_fd(),
                below: below_root.root().as_fd(),
                upper: upper.root().as_fd(),
            })
        }
        None => {
            let scratch_work = match &src.work {
                Some(_) => None,
                None => Some(mount::work_beside(&src.upper)?),
            };
            let work = src
                .work
                .clone()
                .or(scratch_work.clone())
                .unwrap_or_default();
            let mut b = Mount::builder();
            for l in &src.lowers {
                b = b.lower(l);
            }
            let mounted = b.upper(&src.upper).work(&work).mount_temp();
            let r = mounted.map_err(ChangesetError::from).and_then(|full| {
                let root = crate::layer::Layer::open(full.path()).map_err(StoreError::from)?;
                let r = f(&plan::Views {
                    full: root.root().as_fd(),
                    below: below_root.root().as_fd(),
                    upper: upper.root().as_fd(),
                });
                drop(root);
                full.unmount()?;
                r
            });
            if let Some(w) = scratch_work {
                let _ = std::fs::remove_dir_all(w);
            }
            r
        }
    };
    drop(below_root);
    below.unmount()?;
    result
}

/// The changes the upper makes to its lower layers, in path order.
pub fn diff(src: &Source) -> Result<Vec<Change>, ChangesetError> {
    with_views(src, false, |v| {
        let mut changes = plan::plan(v)?.changes;
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(changes)
    })
}

/// Stores the changes as a new layer (a live mount is frozen read-only
/// while it is read); returns it and the changes.
pub fn commit(
    src: &Source,
    store: &crate::store::Store,
    message: Option<&str>,
) -> Result<(Imported, Vec<Change>), ChangesetError> {
    let source = match message {
        Some(m) => format!("commit of {}: {m}", src.upper.display()),
        None => format!("commit of {}", src.upper.display()),
    };
    with_views(src, true, |v| {
        let plan = plan::plan(v)?;
        let imported =
            store.import_with(&source, |out| write::write_steps(v.full, &plan.steps, out))?;
        let mut changes = plan.changes;
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((imported, changes))
    })
}
