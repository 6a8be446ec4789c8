use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {path}: {err}")]
    Open { path: PathBuf, err: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl LayerError {
    pub fn open(path: &Path, source: io::Error) -> Self {
        let err = if source.raw_os_error() == Some(libc::ENOTDIR) {
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory")
        } else {
            source
        };
        LayerError::Open {
            path: path.to_path_buf(),
            err,
        }
    }

    /// The errno a filesystem caller should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            LayerError::Open { err, .. } | LayerError::Io(err) => {
                err.raw_os_error().unwrap_or(libc::EIO)
            }
        }
    }
}
