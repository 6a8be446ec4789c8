use std::io;

use crate::layer::LayerError;

/// Every failure of a union operation. [`Error::errno`] is the one place where
/// these become errnos.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such entry")]
    NotFound,
    #[error("name is reserved or malformed")]
    InvalidName,
    #[error("read-only file system")]
    ReadOnly,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symlink")]
    NotSymlink,
    #[error("unknown inode {0}")]
    StaleInode(u64),
    #[error("unknown handle {0}")]
    BadHandle(u64),
    #[error("no such attribute")]
    NoAttr,
    #[error("buffer too small")]
    Range,
    #[error("entry exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("directory exists in a lower layer; rename across layers is not supported")]
    CrossDevice,
    #[error("operation not supported")]
    NotSupported,
    #[error("owner id has no mapping in this mount")]
    UnmappedOwner,
    #[error("the caller's id has no mapping in this mount")]
    UnmappedCaller,
    #[error("lower file content does not match its layer's manifest")]
    Corrupt,
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound => libc::ENOENT,
            Error::InvalidName => libc::EINVAL,
            Error::ReadOnly => libc::EROFS,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotSymlink => libc::EINVAL,
            Error::StaleInode(_) => libc::ESTALE,
            Error::BadHandle(_) => libc::EBADF,
            Error::NoAttr => libc::ENODATA,
            Error::Range => libc::ERANGE,
            Error::Exists => libc::EEXIST,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::CrossDevice => libc::EXDEV,
            Error::NotSupported => libc::EOPNOTSUPP,
            Error::UnmappedOwner => libc::EINVAL,
            Error::UnmappedCaller => libc::EOVERFLOW,
            Error::Corrupt => libc::EIO,
            Error::Layer(e) => e.errno(),
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::Io(e.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
