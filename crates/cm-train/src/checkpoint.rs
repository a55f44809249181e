//! Checkpoints: only what trains, written atomically, enough to continue EXACTLY.
//!
//! ```text
//! checkpoints/step-000100/
//!   trainable.safetensors   the student's trainable parameters by module path (LoRA factors, or
//!                           the whole UNet), in their dtype
//!   ema.safetensors         the EMA copy of those parameters, when the target is an EMA
//!   optimizer.mpk           AdamW's moments and step counters (Burn record, full precision),
//!                           keyed by the parameters' deterministic ids (`params::path_id`)
//!   state.json              the step, the seed and the run's resolved config
//! ```
//!
//! The data position and every random draw are functions of the step (`draws`, `BatchSource`),
//! and the learning rate is a function of the step (`lr`), so these files are the whole state:
//! a run stopped after step k and resumed gives the same loss sequence as one that never stopped.
//! A folder is written under a temporary name and renamed when complete; the newest `keep`
//! folders are kept. A checkpoint of another model or LoRA rank is refused, naming every
//! parameter that does not fit.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use cm_io::{read_tensors, write_atomically, write_dir_atomically, write_tensors, IoError};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::params;
use crate::trainer::Trainer;

/// Version of the checkpoint layout.
pub const CHECKPOINT_VERSION: u32 = 1;

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Layout version.
    pub version: u32,
    /// The next optimizer step to run.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// Number of trainable numbers.
    pub trainable: usize,
    /// The run's resolved config (for the record; the resuming run's config is what runs).
    pub run: serde_json::Value,
}

fn checkpoint_error(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The folder name of step `step`.
pub fn folder_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Complete checkpoint folders under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoError::read(root, e).into()),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // Temporary folders (`.tmp-<pid>`, `.old-<pid>`) are never complete checkpoints.
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().join("state.json").is_file() {
                found.push((step, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

impl<B: AutodiffBackend, M: AutodiffModule<B>, O> Trainer<B, M, O> {
    /// Writes a checkpoint of the current state to `root/step-<step>` and keeps the newest `keep`.
    pub fn save_checkpoint(
        &self,
        root: &Path,
        keep: usize,
        run: &serde_json::Value,
    ) -> Result<PathBuf> {
        let dir = root.join(folder_name(self.step));
        let trainable = params::values_of(&self.student, &self.params);
        let ema = self
            .ema
            .as_ref()
            .map(|ema| params::values_of(ema, &self.params));
        let optimizer = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .record(self.optimizer.to_record(), ())
            .map_err(|e| {
                checkpoint_error(&dir, format!("cannot serialise the optimizer state: {e}"))
            })?;
        let state = CheckpointState {
            version: CHECKPOINT_VERSION,
            step: self.step,
            seed: self.settings.seed,
            trainable: self.trainable_count(),
            run: run.clone(),
        };
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("step".to_string(), self.step.to_string());
        write_dir_atomically(&dir, |tmp| {
            write_tensors(tmp.join("trainable.safetensors"), &trainable, &metadata)?;
            if let Some(ema) = &ema {
                write_tensors(tmp.join("ema.safetensors"), ema, &metadata)?;
            }
            write_atomically(&tmp.join("optimizer.mpk"), &optimizer)?;
            let json = serde_json::to_vec_pretty(&state).expect("serialisable state");
            write_atomically(&tmp.join("state.json"), &json)
        })?;
        let all = list(root)?;
        if all.len() > keep.max(1) {
            for (_, old) in &all[..all.len() - keep.max(1)] {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        Ok(dir)
    }

    /// Restores the state saved in checkpoint folder `dir`: trainable parameters, EMA, optimizer
    /// moments, step. Everything is checked before anything changes.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<CheckpointState> {
        let state_path = dir.join("state.json");
        let text =
            std::fs::read_to_string(&state_path).map_err(|e| IoError::read(&state_path, e))?;
        let state: CheckpointState = serde_json::from_str(&text)
            .map_err(|e| checkpoint_error(&state_path, format!("not a checkpoint state: {e}")))?;
        if state.version != CHECKPOINT_VERSION {
            return Err(checkpoint_error(
                &state_path,
                format!(
                    "layout version {} (this build reads {CHECKPOINT_VERSION})",
                    state.version
                ),
            ));
        }
        let trainable_path = dir.join("trainable.safetensors");
        let values = read_tensors(&trainable_path)?;
        let student =
            params::load_values(self.student.clone(), &self.params, &values, &trainable_path)?;
        let ema = match &self.ema {
            None => None,
            Some(ema) => {
                let path = dir.join("ema.safetensors");
                if !path.is_file() {
                    return Err(checkpoint_error(
                        dir,
                        "this run trains against an EMA target but the checkpoint has no ema.safetensors",
                    ));
                }
                let values = read_tensors(&path)?;
                Some(params::load_values(
                    ema.clone(),
                    &self.params,
                    &values,
                    &path,
                )?)
            }
        };
        let optimizer_path = dir.join("optimizer.mpk");
        let bytes =
            std::fs::read(&optimizer_path).map_err(|e| IoError::read(&optimizer_path, e))?;
        let device = student.devices().into_iter().next().unwrap_or_default();
        let record = Recorder::<B>::load(
            &NamedMpkBytesRecorder::<FullPrecisionSettings>::default(),
            bytes,
            &device,
        )
        .map_err(|e| {
            checkpoint_error(&optimizer_path, format!("unreadable optimizer state: {e}"))
        })?;
        // Everything read and checked: now change the trainer.
        self.student = student;
        self.ema = ema;
        self.optimizer = self.optimizer.clone().load_record(record);
        self.step = state.step;
        Ok(state)
    }
}
