//! The error type of `cm-train`: every variant names the file, key, step or value at fault.

use std::path::PathBuf;

/// Errors of training and sampling.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// From the models (weights, configs, forward-pass inputs).
    #[error(transparent)]
    Model(#[from] cm_models::ModelError),
    /// From the schedulers.
    #[error(transparent)]
    Scheduler(#[from] cm_schedulers::SchedulerError),
    /// From the LoRA layers.
    #[error(transparent)]
    Lora(#[from] cm_lora::LoraError),
    /// From the data pipeline.
    #[error(transparent)]
    Data(#[from] cm_data::DataError),
    /// From file I/O.
    #[error(transparent)]
    File(#[from] cm_io::IoError),
    /// A run config that cannot be used (names the file and key).
    #[error("{path}: {message}")]
    Config {
        /// The TOML file (or `<defaults>` / `<command line>`).
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A checkpoint that does not fit this run (names the file and the mismatch).
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// The loss or the gradients stopped being finite.
    #[error("training diverged at step {step} (lr {lr:e}): {message}; the last good checkpoint is kept{checkpoint}")]
    Diverged {
        /// The optimizer step.
        step: u64,
        /// The learning rate of that step.
        lr: f64,
        /// What was not finite.
        message: String,
        /// `" at <path>"` when there is one.
        checkpoint: String,
    },
    /// A bad argument or an inconsistent combination of options.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of `cm-train`.
pub type Result<T> = std::result::Result<T, TrainError>;
