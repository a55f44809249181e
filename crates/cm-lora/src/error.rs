//! Errors of adapter injection, switching, merging and file-format conversion.

use thiserror::Error;

/// Everything that can go wrong with adapters. Messages name the module path, adapter or file key
/// at fault and what was expected.
#[derive(Debug, Error)]
pub enum LoraError {
    /// Bad rank / alpha / dropout, or a bad include/exclude regex.
    #[error("invalid LoRA configuration: {0}")]
    InvalidConfig(String),
    /// No adaptable layer matched the targets.
    #[error("no adaptable layer matched {selector} ({layers} adaptable layers in the model, e.g. {example})")]
    NoMatch {
        /// The selector, as text.
        selector: String,
        /// How many adaptable layers the model has.
        layers: usize,
        /// One of their paths.
        example: String,
    },
    /// An adapter name that is already in use on a layer.
    #[error("adapter `{name}` already exists on `{path}`; remove it first or choose another name")]
    DuplicateAdapter {
        /// Adapter name.
        name: String,
        /// Module path.
        path: String,
    },
    /// An adapter name that no layer carries.
    #[error("no layer carries an adapter named `{name}` (adapters present: {present:?})")]
    UnknownAdapter {
        /// Adapter name.
        name: String,
        /// Names that do exist.
        present: Vec<String>,
    },
    /// A layer that cannot take an adapter (grouped or dilated convolution, ...).
    #[error("layer `{path}` cannot take a LoRA adapter: {reason}")]
    UnsupportedLayer {
        /// Module path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file key that names no adaptable layer of the model.
    #[error("LoRA key `{key}` does not match the model: {reason}")]
    KeyMismatch {
        /// The key, as written in the file.
        key: String,
        /// What was expected.
        reason: String,
    },
    /// A tensor whose shape disagrees with its layer or its partner factor.
    #[error("LoRA key `{key}` has shape {found:?}, expected {expected}")]
    Shape {
        /// The key, as written in the file.
        key: String,
        /// The shape found.
        found: Vec<usize>,
        /// The expectation, in words.
        expected: String,
    },
    /// A malformed file: missing partner factor, bad metadata, unknown format.
    #[error("LoRA format error at `{key}`: {message}")]
    Format {
        /// The key (or metadata field) at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An operation that conflicts with a merged adapter.
    #[error("adapter `{name}` is merged into the base weights: {message}")]
    Merged {
        /// Adapter name.
        name: String,
        /// What to do instead.
        message: String,
    },
}
