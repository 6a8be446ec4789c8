//! Getting a stored image ready to mount: its layer trees top first, held
//! against removal, checked according to the verify mode.

use std::path::PathBuf;
use std::sync::Arc;

use super::remove::Held;
use super::verify::VerifyMode;
use super::{Progress, Store, StoreError};
use crate::layer::ContentCheck;

/// Lower layers for a mount of a stored image.
#[derive(Debug)]
pub struct PreparedImage {
    /// Layer trees, top first (as `--lower` takes them).
    pub lowers: Vec<PathBuf>,
    /// Per lower: the lazy content check, with `--verify=lazy`.
    pub checks: Vec<Option<Arc<dyn ContentCheck>>>,
    /// Locks keeping the layers from `rm` and `gc` while mounted.
    pub held: Vec<Held>,
}

impl Store {
    /// Holds and checks image `name`'s layers for a mount.
    pub fn prepare_image(
        &self,
        name: &str,
        verify: VerifyMode,
        progress: &dyn Progress,
    ) -> Result<PreparedImage, StoreError> {
        let image = self.image(name)?;
        let mut layers = image.layer_digests()?;
        layers.reverse();
        let held = self.hold_layers(&layers)?;
        let mut checks = Vec::with_capacity(layers.len());
        for d in &layers {
            match verify {
                VerifyMode::None => checks.push(None),
                VerifyMode::Full => {
                    self.verify_layer(d, progress)?;
                    checks.push(None);
                }
                VerifyMode::Lazy => {
                    checks.push(Some(Arc::new(self.lazy_check(d)?) as Arc<dyn ContentCheck>))
                }
            }
        }
        Ok(PreparedImage {
            lowers: layers.iter().map(|d| self.tree_path(d)).collect(),
            checks,
            held,
        })
    }
}
