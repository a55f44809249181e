//! The error type of `cm-schedulers`.

use std::path::PathBuf;

/// Errors of schedule / sampler construction and use. Each names the key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The config is not valid JSON or has a field of the wrong type.
    #[error("{path}: invalid scheduler config: {message}")]
    ConfigParse {
        /// The file (`<memory>` for strings).
        path: PathBuf,
        /// What serde said.
        message: String,
    },
    /// A config value is not supported.
    #[error("{path}: unsupported value for `{key}`: {found} (supported: {expected})")]
    Unsupported {
        /// The file (`<memory>` for strings).
        path: PathBuf,
        /// The JSON key.
        key: String,
        /// The value found.
        found: String,
        /// What is accepted.
        expected: String,
    },
    /// A call argument is out of range (steps 0, timestep > T-1, K too large, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

/// Result alias of `cm-schedulers`.
pub type Result<T> = std::result::Result<T, SchedulerError>;
