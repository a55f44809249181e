//! The error type of `cm-io`: every variant names the file (and the tensor key where there is one).

use std::path::PathBuf;

/// Errors of reading and writing files.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A file that could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A file that could not be written (the final name is untouched: writes are atomic).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file that is truncated, corrupt or not safetensors at all.
    #[error("{path}: not a readable safetensors file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor where the format allows.
        message: String,
    },
    /// A tensor that cannot be decoded or encoded (unsupported dtype, bad data).
    #[error("{path}: cannot decode tensor `{key}`: {message}")]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// A bad argument (an output path without a file name, an image of the wrong shape, ...).
    #[error("{0}")]
    InvalidInput(String),
}

/// Result alias of `cm-io`.
pub type Result<T> = std::result::Result<T, IoError>;

impl IoError {
    /// A read error for `path`.
    pub fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Read {
            path: path.into(),
            source,
        }
    }

    /// A write error for `path`.
    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Write {
            path: path.into(),
            source,
        }
    }
}
