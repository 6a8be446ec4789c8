//! Removing layers (`layer rm`, `gc`) and holding them while mounted: a
//! mount keeps a shared flock on each layer directory it uses, and removal
//! takes the exclusive one without waiting, so a mounted layer is never
//! removed. Images keep their layers from `gc` and `rm`.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::FlockOperation;

use super::StoreError;
use super::digest::Digest;
use super::layout::{Store, open_dir, remove_all};

/// A held layer (shared lock on its directory); released on drop.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] OwnedFd);

impl Store {
    /// Holds `layers` for a mount.
    pub fn hold_layers(&self, layers: &[Digest]) -> Result<Vec<Held>, StoreError> {
        let _lock = self.lock()?;
        layers
            .iter()
            .map(|d| {
                if !self.has_layer(d) {
                    return Err(StoreError::NotFound(format!("no layer {d} in the store")));
                }
                let fd = open_dir(&self.layer_dir(d))?;
                rustix::fs::flock(&fd, FlockOperation::LockShared)?;
                Ok(Held(fd))
            })
            .collect()
    }

    fn images_using(&self, d: &Digest) -> Result<Vec<String>, StoreError> {
        let s = d.to_string();
        Ok(self
            .images()?
            .into_iter()
            .filter(|i| i.layers.contains(&s))
            .map(|i| i.name)
            .collect())
    }

    /// Removes a layer no image uses and no mount holds (store lock held).
    fn remove_unlocked(&self, d: &Digest) -> Result<(), StoreError> {
        let users = self.images_using(d)?;
        if !users.is_empty() {
            return Err(StoreError::InUse(format!(
                "layer {d} is used by image(s) {}",
                users.join(", ")
            )));
        }
        let dir = self.layer_dir(d);
        let fd = open_dir(&dir)?;
        if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(StoreError::InUse(format!("layer {d} is in use by a mount")));
        }
        // Out of sight first (one rename), then removed at leisure: a crash
        // in between leaves only scratch that the next run clears.
        let scratch = self.scratch()?;
        let trash = scratch.path().join("layer");
        // Moving a directory to another parent rewrites its `..`: it must be writable.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| StoreError::path(&dir, e))?;
        }
        std::fs::rename(&dir, &trash).map_err(|e| StoreError::path(&dir, e))?;
        drop(fd);
        remove_all(scratch.path())?;
        scratch.keep();
        Ok(())
    }

    /// Removes layer `d` unless an image uses it or a mount holds it.
    pub fn remove_layer(&self, d: &Digest) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        if !self.has_layer(d) {
            return Err(StoreError::NotFound(format!("no layer {d} in the store")));
        }
        self.remove_unlocked(d)
    }

    /// Removes every layer that no image uses and no mount holds; returns
    /// the removed digests and those kept because mounted.
    pub fn gc(&self) -> Result<(Vec<Digest>, Vec<Digest>), StoreError> {
        let _lock = self.lock()?;
        let used: std::collections::HashSet<String> =
            self.images()?.into_iter().flat_map(|i| i.layers).collect();
        let (mut removed, mut busy) = (Vec::new(), Vec::new());
        for meta in self.layers()? {
            if used.contains(&meta.digest) {
                continue;
            }
            let d = Digest::parse(&meta.digest)?;
            match self.remove_unlocked(&d) {
                Ok(()) => removed.push(d),
                Err(StoreError::InUse(_)) => busy.push(d),
                Err(e) => return Err(e),
            }
        }
        self.clean_tmp()?;
        let _ = rustix::fs::syncfs(open_dir(self.root())?.as_fd());
        Ok((removed, busy))
    }
}
