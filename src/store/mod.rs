//! The content-addressed layer store: layers named by the digest of their
//! canonical manifest, imported from directories, layer tars and OCI image
//! layouts, verified, exported, grouped into images, and collected when
//! unused. Knows nothing of FUSE. Layout and formats: `docs/format.md`.

mod compress;
mod digest;
mod error;
mod export;
mod images;
mod import;
mod layout;
mod manifest;
mod meta;
mod oci;
mod pax_time;
mod prepare;
mod remove;
mod tar_read;
#[doc(hidden)]
pub mod tree_walk;
#[doc(hidden)]
pub mod tree_writer;
mod verify;

pub use digest::Digest;
pub use error::StoreError;
pub use images::Image;
pub use import::{Expect, Imported, Progress, Quiet};
pub use layout::{Store, default_store_dir};
pub use manifest::{Body, Manifest, Record};
pub use meta::LayerMeta;
pub use oci::OciImport;
pub use prepare::PreparedImage;
pub use remove::Held;
pub use verify::{LazyCheck, VerifyMode};

/// The manifest digest of any directory tree (in any whiteout dialect),
/// without storing it.
pub fn digest_of_tree(root: &std::path::Path) -> Result<Digest, StoreError> {
    let layer = crate::layer::Layer::open(root)?;
    use std::os::fd::AsFd;
    Ok(tree_walk::manifest_of(layer.root().as_fd(), |v, _| tree_walk::hash_file(v))?.digest())
}
