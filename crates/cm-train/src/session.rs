//! A training session: [`Trainer::train_step`] repeated to the last step, with the cadence of
//! everything around it: progress lines, the metrics log and loss curve, validation, checkpoints
//! (and resume), and the NaN guard's message naming the last good checkpoint.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::checkpoint;
use crate::diffusion::Objective;
use crate::error::{Result, TrainError};
use crate::metrics::{plot_loss, MetricsLog, Progress};
use crate::trainer::{BatchSource, StepRecord, Trainer};

/// The cadence and files of a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Output folder (`metrics.jsonl`, `loss.png`, `checkpoints/`).
    pub out: PathBuf,
    /// Progress line every this many steps.
    pub log_every: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Validation every this many steps (0: only at the end).
    pub validate_every: u64,
    /// A label for progress lines and the loss-curve title.
    pub label: String,
    /// The resolved run config, stored in each checkpoint.
    pub run: serde_json::Value,
    /// Print progress lines.
    pub print: bool,
    /// Whether this process / thread writes (metrics, validation, checkpoints): the first
    /// data-parallel peer, or the only one. The others only train.
    pub primary: bool,
}

/// What a session calls back for: validation grids and anything else the run wants per step.
pub trait SessionHooks<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// Validation at step `step` (after it) with the model sampling should use.
    fn validate(&mut self, _step: u64, _model: &M::InnerModule) -> Result<()> {
        Ok(())
    }
}

/// Hooks that do nothing.
pub struct NoHooks;

impl<B: AutodiffBackend, M: AutodiffModule<B>> SessionHooks<B, M> for NoHooks {}

impl SessionOptions {
    /// `out/checkpoints`.
    pub fn checkpoints(&self) -> PathBuf {
        self.out.join("checkpoints")
    }
}

/// Resumes `trainer` from the newest checkpoint under `out/checkpoints` (or the given folder);
/// returns the folder used, or `None` when there is none to resume from.
pub fn resume<B: AutodiffBackend, M: AutodiffModule<B>, O>(
    trainer: &mut Trainer<B, M, O>,
    options: &SessionOptions,
    from: Option<&Path>,
) -> Result<Option<PathBuf>> {
    let dir = match from {
        Some(dir) => Some(dir.to_path_buf()),
        None => checkpoint::latest(&options.checkpoints())?,
    };
    if let Some(dir) = &dir {
        trainer.load_checkpoint(dir)?;
    }
    Ok(dir)
}

/// Runs `trainer` from its current step to `settings.steps`; returns the records of the steps run
/// by this call (the metrics log holds the whole run).
pub fn run<B, M, O, S, T, H, const C: usize>(
    trainer: &mut Trainer<B, M, O>,
    source: &mut S,
    teacher: Option<&T>,
    hooks: &mut H,
    options: &SessionOptions,
    device: &B::Device,
) -> Result<Vec<StepRecord>>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Objective<B, M, M::InnerModule, T, C>,
    S: BatchSource<B::InnerBackend, C> + ?Sized,
    H: SessionHooks<B, M>,
{
    let total = trainer.settings.steps;
    if !options.primary {
        // A secondary data-parallel peer: the same steps, nothing written.
        let mut ran = Vec::new();
        while trainer.step < total {
            ran.push(trainer.train_step(source, teacher, device)?);
        }
        return Ok(ran);
    }
    std::fs::create_dir_all(&options.out).map_err(|e| cm_io::IoError::write(&options.out, e))?;
    let mut metrics = MetricsLog::open(options.out.join("metrics.jsonl"), trainer.step)?;
    let progress = Progress::new(&options.label, trainer.step, total, options.log_every);
    let mut last_checkpoint: Option<PathBuf> = checkpoint::latest(&options.checkpoints())?;
    let mut ran = Vec::new();
    while trainer.step < total {
        let record = match trainer.train_step(source, teacher, device) {
            Ok(r) => r,
            Err(TrainError::Diverged {
                step, lr, message, ..
            }) => {
                let _ = plot_loss(
                    metrics.records(),
                    &options.label,
                    &options.out.join("loss.png"),
                );
                return Err(TrainError::Diverged {
                    step,
                    lr,
                    message,
                    checkpoint: last_checkpoint
                        .map(|p| format!(" at {}", p.display()))
                        .unwrap_or_else(|| " (none was written yet)".into()),
                });
            }
            Err(e) => return Err(e),
        };
        metrics.push(record)?;
        ran.push(record);
        if options.print {
            if let Some(line) = progress.line(&record) {
                println!("{line}");
            }
        }
        let done = trainer.step;
        let last = done == total;
        if last || (options.validate_every > 0 && done.is_multiple_of(options.validate_every)) {
            hooks.validate(done, &trainer.inference_model())?;
        }
        if last || (options.checkpoint_every > 0 && done.is_multiple_of(options.checkpoint_every)) {
            last_checkpoint = Some(trainer.save_checkpoint(
                &options.checkpoints(),
                options.keep_checkpoints,
                &options.run,
            )?);
            plot_loss(
                metrics.records(),
                &options.label,
                &options.out.join("loss.png"),
            )?;
        }
    }
    Ok(ran)
}
