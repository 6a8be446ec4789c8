//! Images: a name for an ordered stack of stored layers (bottom first, as
//! in OCI manifests), with the OCI config it came with, if any.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::digest::Digest;
use super::layout::{Store, write_atomic};
use super::meta::now;

/// A stored image: `<store>/images/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// Its name (see [`check_name`]).
    pub name: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// The OCI image config, when imported from an OCI layout or docker save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Digest of the OCI manifest it was imported from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// When it was named, in seconds since the epoch.
    pub created: u64,
}

impl Image {
    /// Its layers, bottom first.
    pub fn layer_digests(&self) -> Result<Vec<Digest>, StoreError> {
        self.layers.iter().map(|l| Digest::parse(l)).collect()
    }
}

/// Image names as docker spells references: letters, digits and `._-:/@+`,
/// starting with a letter or digit, no `..`.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@+".contains(&b))
        && !name.contains("..")
        && !name.contains("//");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "bad image name {name:?}: use letters, digits and ._-:/@+, starting with a letter or digit"
        )))
    }
}

impl Store {
    fn image_path(&self, name: &str) -> PathBuf {
        self.images_dir()
            .join(format!("{}.json", name.replace('/', "%2F")))
    }

    /// Names `layers` (bottom first; all must be stored). An existing image
    /// of that name is replaced only if `replace`.
    pub fn create_image(
        &self,
        name: &str,
        layers: &[Digest],
        config: Option<serde_json::Value>,
        manifest: Option<Digest>,
        replace: bool,
    ) -> Result<Image, StoreError> {
        check_name(name)?;
        if layers.is_empty() {
            return Err(StoreError::Invalid(
                "an image needs at least one layer".into(),
            ));
        }
        let _lock = self.lock()?;
        for d in layers {
            if !self.has_layer(d) {
                return Err(StoreError::NotFound(format!("no layer {d} in the store")));
            }
        }
        let image = Image {
            name: name.to_string(),
            layers: layers.iter().map(|d| d.to_string()).collect(),
            config,
            manifest: manifest.map(|d| d.to_string()),
            created: now(),
        };
        let path = self.image_path(name);
        if !replace && let Ok(old) = self.image(name) {
            if old.layers == image.layers {
                return Ok(old);
            }
            return Err(StoreError::Invalid(format!(
                "image {name} exists with other layers (rm it first)"
            )));
        }
        write_atomic(&path, &serde_json::to_vec_pretty(&image)?)?;
        Ok(image)
    }

    /// The image called `name`.
    pub fn image(&self, name: &str) -> Result<Image, StoreError> {
        check_name(name)?;
        let path = self.image_path(name);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                StoreError::NotFound(format!("no image {name} in the store"))
            }
            _ => StoreError::path(&path, e),
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Every image, by name.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::path(&dir, e))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = fs::read(&path).map_err(|e| StoreError::path(&path, e))?;
                out.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| StoreError::Invalid(format!("{}: {e}", path.display())))?,
                );
            }
        }
        out.sort_by(|a: &Image, b: &Image| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the name only; its layers stay until `gc`.
    pub fn remove_image(&self, name: &str) -> Result<(), StoreError> {
        self.image(name)?;
        let _lock = self.lock()?;
        let path = self.image_path(name);
        fs::remove_file(&path).map_err(|e| StoreError::path(&path, e))
    }
}
