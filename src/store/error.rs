use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::layer::LayerError;

/// Everything that can go wrong in the store; messages name the entry,
/// blob or layer concerned.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{path}: {cause}")]
    Path { path: PathBuf, cause: io::Error },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("entry {entry:?}: {why}")]
    Entry { entry: String, why: String },
    #[error("not a digest: {0:?} (expected sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("corrupt manifest: {0}")]
    BadManifest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {blob}: digest mismatch: content is {actual}")]
    Mismatch {
        what: &'static str,
        blob: String,
        actual: String,
    },
    #[error("layer {layer} does not match its manifest: {why}")]
    Corrupt { layer: String, why: String },
}

impl StoreError {
    pub fn entry(path: &[u8], why: impl Into<String>) -> Self {
        StoreError::Entry {
            entry: String::from_utf8_lossy(path).into_owned(),
            why: why.into(),
        }
    }

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
