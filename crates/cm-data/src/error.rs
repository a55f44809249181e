//! The error type of `cm-data`: every variant names the file (and line / field / id) at fault.

use std::path::PathBuf;

/// Errors of data loading.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An annotations file is not the expected JSON.
    #[error("{path}: invalid annotations JSON at line {line}, column {column}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A CSV file is malformed.
    #[error("{path}: line {line}: {message}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line of the record.
        line: u64,
        /// What is wrong (names the field).
        message: String,
    },
    /// An image file cannot be decoded (corrupt, truncated, not an image, too large).
    #[error("{path}: cannot decode image: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// A caption is empty.
    #[error("{source_name}: empty caption for {item}")]
    EmptyCaption {
        /// The annotations / CSV / caption file.
        source_name: String,
        /// The image it belongs to.
        item: String,
    },
    /// An annotation refers to an image id that the annotations do not list.
    #[error("{path}: annotation {index} refers to image_id {image_id}, which is not in `images`")]
    UnknownImageId {
        /// The annotations file.
        path: PathBuf,
        /// Index in `annotations`.
        index: usize,
        /// The dangling id.
        image_id: u64,
    },
    /// A bad option value.
    #[error("{0}")]
    InvalidOption(String),
    /// A cache file that could not be read or written (names the file).
    #[error(transparent)]
    File(#[from] cm_io::IoError),
}

/// Result alias of `cm-data`.
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
