use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::layer::LayerError;

/// Everything that can go wrong in the store; messages name the entry,
/// blob or layer concerned.
#[derive(Debug, Error)]
pub enum StoreError {
    /// An I/O failure.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// An I/O failure on a named file.
    #[error("{path}: {cause}")]
    Path {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: io::Error,
    },
    /// Reading a layer tree failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// An entry of an archive or tree was refused.
    #[error("entry {entry:?}: {why}")]
    Entry {
        /// Its path.
        entry: String,
        /// Why.
        why: String,
    },
    /// Not a `sha256:<hex>` digest.
    #[error("not a digest: {0:?} (expected sha256:<64 hex digits>)")]
    BadDigest(String),
    /// A manifest that is not canonical.
    #[error("corrupt manifest: {0}")]
    BadManifest(String),
    /// No such layer, image, blob or tag.
    #[error("{0}")]
    NotFound(String),
    /// A digest prefix that names several layers.
    #[error("{0}")]
    Ambiguous(String),
    /// Removal refused: an image or a mount uses it.
    #[error("{0}")]
    InUse(String),
    /// Malformed input.
    #[error("{0}")]
    Invalid(String),
    /// Content that does not hash to the digest that names it.
    #[error("{what} {blob}: digest mismatch: content is {actual}")]
    Mismatch {
        /// What kind of content (blob, config, layer diff_id).
        what: &'static str,
        /// The digest it should have.
        blob: String,
        /// The digest it has.
        actual: String,
    },
    /// A stored layer whose tree no longer matches its digest.
    #[error("layer {layer} does not match its manifest: {why}")]
    Corrupt {
        /// The layer.
        layer: String,
        /// The first difference found.
        why: String,
    },
}

impl StoreError {
    /// A refusal naming an entry of a layer (path bytes shown lossily).
    pub fn entry(path: &[u8], why: impl Into<String>) -> Self {
        StoreError::Entry {
            entry: String::from_utf8_lossy(path).into_owned(),
            why: why.into(),
        }
    }

    /// An I/O failure on `path`.
    pub fn path(path: &Path, source: io::Error) -> Self {
        StoreError::Path {
            path: path.to_path_buf(),
            cause: source,
        }
    }
}

impl From<rustix::io::Errno> for StoreError {
    fn from(e: rustix::io::Errno) -> Self {
        StoreError::Io(e.into())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Invalid(format!("bad JSON: {e}"))
    }
}
