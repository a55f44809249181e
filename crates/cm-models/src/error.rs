//! The error type of `cm-models`: every variant names the file, key or value at fault and what
//! was expected, so that a user can fix the input without reading our source.

use std::path::PathBuf;

/// Errors raised while reading configs, tokenizers and weights, or building models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
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

    /// A JSON config file is not valid JSON or does not have the expected fields.
    #[error("{path}: invalid config: {message}")]
    ConfigParse {
        /// The config file (or `<memory>` for a string).
        path: PathBuf,
        /// What serde reported, with line and column.
        message: String,
    },

    /// A config field holds a value this implementation does not support.
    #[error("{path}: unsupported value for `{key}`: {found} (supported: {expected})")]
    UnsupportedConfig {
        /// The config file (or `<memory>`).
        path: PathBuf,
        /// The JSON key.
        key: String,
        /// The value found.
        found: String,
        /// What is accepted.
        expected: String,
    },

    /// A tokenizer file could not be parsed or built.
    #[error("{path}: tokenizer error: {message}")]
    Tokenizer {
        /// The tokenizer file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// A safetensors file is unreadable: truncated, corrupt header, or not safetensors at all.
    #[error("{path}: not a readable safetensors file: {message}")]
    CorruptWeights {
        /// The weights file.
        path: PathBuf,
        /// What the reader reported.
        message: String,
    },

    /// The model expects a tensor that the file does not contain.
    #[error("{path}: missing tensor for `{key}` (model parameter `{param}`, expected shape {expected:?}){hint}")]
    MissingKey {
        /// The weights file.
        path: PathBuf,
        /// The key looked for in the file (after remapping back to the file's naming).
        key: String,
        /// The Burn module path of the parameter.
        param: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// A "did you mean" hint, possibly empty.
        hint: String,
    },

    /// A tensor in the file has a different shape from the model's parameter.
    #[error("{path}: tensor `{key}` has shape {found:?}, but the model expects {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The key in the file.
        key: String,
        /// Shape the model expects (in the file's layout).
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },

    /// Several load errors at once (all missing / mis-shaped keys of one file).
    #[error("{count} problem(s) loading {path}:\n  {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Load {
        /// The weights file.
        path: PathBuf,
        /// How many problems were found.
        count: usize,
        /// Each problem.
        errors: Vec<ModelError>,
    },

    /// A tensor in the file could not be decoded (unsupported dtype, bad data).
    #[error("{path}: cannot decode tensor `{key}`: {message}")]
    BadTensor {
        /// The weights file.
        path: PathBuf,
        /// The key in the file.
        key: String,
        /// What went wrong.
        message: String,
    },

    /// A LoRA file that does not fit the model (or is malformed); the source names the key.
    #[error("{path}: {error}")]
    Lora {
        /// The LoRA file.
        path: PathBuf,
        /// What is wrong with it (part of the message, so not repeated as a `source`).
        error: cm_lora::LoraError,
    },
    /// An input to a forward pass has the wrong shape or value.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The operating system would not start the threads a computation asked for.
    #[error("{0}")]
    Threads(String),
}

/// Result alias of `cm-models`.
pub type Result<T> = std::result::Result<T, ModelError>;

impl From<cm_io::IoError> for ModelError {
    /// File errors keep their kind: a missing file stays [`ModelError::Io`], a truncated one
    /// [`ModelError::CorruptWeights`], and so on.
    fn from(error: cm_io::IoError) -> Self {
        use cm_io::IoError;
        match error {
            IoError::Read { path, source } => Self::Io { path, source },
            IoError::Write { path, source } => Self::Write { path, source },
            IoError::Corrupt { path, message } => Self::CorruptWeights { path, message },
            IoError::BadTensor { path, key, message } => Self::BadTensor { path, key, message },
            IoError::InvalidInput(message) => Self::InvalidInput(message),
        }
    }
}

impl ModelError {
    /// Builds an [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
