//! Mounting from Rust code, served by threads of the calling process: what
//! test suites use for a throwaway writable view of read-only fixtures.
//! The mount goes away when the [`Mount`] is dropped, even while panicking.

use std::path::{Path, PathBuf};

use fuser::BackgroundSession;

use super::{
    MountError, MountSpec, check_mountpoint, ephemeral_upper, open_session, temp_dir, unmount,
};
use crate::layer::DialectChoice;
use crate::union::{Union, UpperSpec};

/// A live union mount; unmounted (and its temporary directories removed)
/// on drop.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mnt = stratafs::Mount::builder()
///     .lower("tests/fixtures")
///     .ephemeral_upper()
///     .mount_temp()?;
/// std::fs::write(mnt.path().join("x"), b"...")?;
/// drop(mnt); // unmounted; the temporary upper is gone
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Mount {
    path: PathBuf,
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    session: Option<BackgroundSession>,
    /// The io_uring queue threads, which hold the file system until they end.
    rings: Option<crate::fuse::ring::Rings>,
    core: std::sync::Arc<Union>,
    /// Removed after unmounting: a temporary mount point, an ephemeral upper.
    temporary: Vec<PathBuf>,
    _registered: Option<super::Registered>,
    /// Locks on stored layers, released with the mount.
    _keep_alive: Vec<std::sync::Arc<dyn std::fmt::Debug + Send + Sync>>,
}

/// Options for a [`Mount`]; from [`Mount::builder`].
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct MountBuilder {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    ephemeral: bool,
    checks: Vec<Option<std::sync::Arc<dyn crate::layer::ContentCheck>>>,
    keep_alive: Vec<std::sync::Arc<dyn std::fmt::Debug + Send + Sync>>,
}

impl MountBuilder {
    /// Adds a lower layer directory; the first given is the top one.
    pub fn lower(mut self, dir: impl AsRef<Path>) -> Self {
        self.lowers.push(dir.as_ref().to_path_buf());
        self.checks.push(None);
        self
    }

    /// Adds the layers of a stored image below those given so far, held
    /// against removal while mounted and checked as `verify` says.
    pub fn image(
        mut self,
        store: &crate::store::Store,
        name: &str,
        verify: crate::store::VerifyMode,
    ) -> Result<Self, crate::store::StoreError> {
        let prepared = store.prepare_image(name, verify, &crate::store::Quiet)?;
        self.lowers.extend(prepared.lowers);
        self.checks.extend(prepared.checks);
        for held in prepared.held {
            self.keep_alive.push(std::sync::Arc::new(held));
        }
        Ok(self)
    }

    /// The writable layer (needs [`MountBuilder::work`]).
    pub fn upper(mut self, dir: impl AsRef<Path>) -> Self {
        self.upper = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Scratch space for the writable layer, on the same filesystem.
    pub fn work(mut self, dir: impl AsRef<Path>) -> Self {
        self.work = Some(dir.as_ref().to_path_buf());
        self
    }

    /// A private writable layer in a temporary directory, removed with the mount.
    pub fn ephemeral_upper(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    /// Mounts on a new temporary directory, removed with the mount.
    pub fn mount_temp(self) -> Result<Mount, MountError> {
        self.check()?;
        let dir = temp_dir("mnt")?;
        self.mount_on(dir.clone(), vec![dir])
    }

    /// Mounts on `dir`, an existing empty directory.
    pub fn mount_at(self, dir: impl AsRef<Path>) -> Result<Mount, MountError> {
        self.check()?;
        let dir = dir.as_ref().to_path_buf();
        check_mountpoint(&dir)?;
        // Mounting over files would hide them for as long as the mount lives.
        let mut entries = std::fs::read_dir(&dir).map_err(|e| MountError::Mountpoint {
            path: dir.clone(),
            err: e,
        })?;
        if entries.next().is_some() {
            return Err(MountError::MountpointNotEmpty(dir));
        }
        self.mount_on(dir, Vec::new())
    }

    /// What can be refused before anything is made.
    fn check(&self) -> Result<(), MountError> {
        if self.lowers.is_empty() {
            return Err(MountError::io(
                "configuring the mount",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no lower layer given"),
            ));
        }
        if !self.ephemeral && self.upper.is_some() != self.work.is_some() {
            return Err(MountError::io(
                "configuring the mount",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "upper and work go together",
                ),
            ));
        }
        Ok(())
    }

    fn mount_on(
        self,
        mountpoint: PathBuf,
        mut temporary: Vec<PathBuf>,
    ) -> Result<Mount, MountError> {
        check_mountpoint(&mountpoint)?;
        let mountpoint = std::path::absolute(&mountpoint)
            .map_err(|e| MountError::io("resolving the mount point", e))?;
        let (upper, work) = match (self.ephemeral, self.upper, self.work) {
            (true, _, _) => {
                let (dir, u, w) = ephemeral_upper()?;
                temporary.insert(0, dir);
                (Some(u), Some(w))
            }
            (false, Some(u), Some(w)) => (Some(u), Some(w)),
            (false, None, None) => (None, None),
            (false, _, _) => {
                return Err(MountError::io(
                    "configuring the mount",
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "upper and work go together",
                    ),
                ));
            }
        };
        let cleanup = |t: &[PathBuf]| {
            for d in t {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        let spec = MountSpec {
            upper: match (&upper, work) {
                (Some(u), Some(w)) => Some(UpperSpec {
                    upper: u.clone(),
                    work: w,
                    dialect: DialectChoice::Overlay,
                    volatile: false,
                    redirect_dir: true,
                    metacopy: true,
                }),
                _ => None,
            },
            checks: self.checks.clone(),
            ..MountSpec::new(self.lowers.clone(), mountpoint.clone())
        };
        let union = match Union::new(&spec.lowers, spec.upper.as_ref(), spec.view.clone()) {
            Ok(mut u) => {
                u.set_content_checks(spec.checks.clone());
                u
            }
            Err(e) => {
                cleanup(&temporary);
                return Err(e.into());
            }
        };
        let union = std::sync::Arc::new(union);
        let super::Opened {
            session,
            here: mounted_here,
            rings,
        } = match open_session(&spec, union.clone()) {
            Ok(s) => s,
            Err(e) => {
                cleanup(&temporary);
                return Err(e);
            }
        };
        let session = match session.spawn() {
            Ok(s) => s,
            Err(e) => {
                // The session was dropped with its mount; ours, if we made it.
                if mounted_here {
                    let _ = unmount(&mountpoint, true);
                }
                cleanup(&temporary);
                return Err(MountError::io("starting the request threads", e));
            }
        };
        let registered = super::register(&spec.record());
        Ok(Mount {
            _registered: registered,
            path: mountpoint,
            lowers: self.lowers,
            work: spec.upper.as_ref().map(|u| u.work.clone()),
            upper,
            session: Some(session),
            rings,
            core: union,
            temporary,
            _keep_alive: self.keep_alive,
        })
    }
}

impl Mount {
    /// Starts describing a mount.
    pub fn builder() -> MountBuilder {
        MountBuilder::default()
    }

    /// Where the merged tree is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lower layers, top first.
    pub fn lowers(&self) -> &[PathBuf] {
        &self.lowers
    }

    /// The writable layer's directory, if the mount is writable.
    pub fn upper_dir(&self) -> Option<&Path> {
        self.upper.as_deref()
    }

    /// What the mount changed so far (empty for a read-only mount), as
    /// `stratafs diff` lists it.
    pub fn diff(&self) -> Result<Vec<crate::changeset::Change>, crate::changeset::ChangesetError> {
        let Some(upper) = &self.upper else {
            return Ok(Vec::new());
        };
        crate::changeset::diff(&crate::changeset::Source {
            lowers: self.lowers.clone(),
            upper: upper.clone(),
            work: self.work.clone(),
            live: Some(self.path.clone()),
        })
    }

    /// Unmounts now, reporting failure (dropping unmounts too, silently).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), MountError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let temporary = std::mem::take(&mut self.temporary);
        let remove = move || {
            for dir in temporary {
                let _ = std::fs::remove_dir_all(&dir);
            }
        };
        // The kernel releases closed files in the background; unmounting
        // under a release in progress makes its reply fail. Give them a
        // moment (files still held open by a process are not awaited long).
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while self.core.has_open_files() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Unmounted (mount(2) or fusermount3), the request loop ends.
        let rings = self.rings.take();
        if unmount(&self.path, false).is_ok() {
            let _ = session.join();
            if let Some(rings) = rings {
                rings.wait(super::RINGS_END);
            }
            self.core.stop_lookahead();
            remove();
            return Ok(());
        }
        // Busy: some process (maybe this one: its working directory, an
        // open file) still uses it. Detach it now; the request loop ends
        // when the last user lets go, which must not be awaited here. Once
        // detached, the path is no mount any more: the temporary
        // directories can go (a user still inside reads a throwaway view).
        let detached = unmount(&self.path, true);
        if detached.is_ok() {
            remove();
        }
        let _ = std::thread::Builder::new()
            .name("stratafs-unmount".into())
            .spawn(move || {
                let _ = session.join();
            });
        detached
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(path = %self.path.display(), error = %e, "unmount failed");
        }
    }
}
