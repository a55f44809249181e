//! Reading diffusers / transformers `config.json` files into typed configs.
//!
//! Field names of our config structs are the JSON keys, so a config round-trips through serde with
//! no renaming table. Keys we do not use (`_class_name`, `_diffusers_version`, `architectures`, ...)
//! are ignored; values we cannot honour are rejected by each config's `validate`, with a message
//! that names the file and key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

/// A config that can be read from a JSON file and checked for values this crate supports.
pub trait JsonConfig: DeserializeOwned + Sized {
    /// Rejects values that the implementation cannot honour. `path` is used in error messages.
    fn validate(&self, path: &Path) -> Result<()>;

    /// Reads, parses and validates `path`.
    fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str_at(&text, path)
    }

    /// Parses and validates a JSON string; `origin` names it in error messages.
    fn from_json_str_at(text: &str, origin: &Path) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| ModelError::ConfigParse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Parses and validates a JSON string held in memory.
    fn from_json_str(text: &str) -> Result<Self> {
        Self::from_json_str_at(text, Path::new("<memory>"))
    }
}

/// The largest channel count / width a config may ask for (SD1.5 uses 1280; the bound only stops
/// a typo from allocating terabytes).
pub const MAX_WIDTH: usize = 16384;

/// Checks that every `(key, value)` lies in `1..=max` (zero widths used to panic deep inside the
/// initialisers; huge ones to abort on allocation), naming the key.
pub(crate) fn check_sizes(path: &Path, sizes: &[(&str, usize, usize)]) -> Result<()> {
    for &(key, value, max) in sizes {
        if value == 0 || value > max {
            return Err(unsupported(path, key, value, &format!("1..={max}")));
        }
    }
    Ok(())
}

/// Builds the error for an unsupported config value.
pub(crate) fn unsupported(
    path: &Path,
    key: &str,
    found: impl std::fmt::Display,
    expected: &str,
) -> ModelError {
    ModelError::UnsupportedConfig {
        path: PathBuf::from(path),
        key: key.to_string(),
        found: found.to_string(),
        expected: expected.to_string(),
    }
}
