//! The training loop around [`ConsistencyStep`]: seeded draws, gradient accumulation (averaged),
//! global-norm clipping, AdamW with PyTorch's defaults, a learning-rate schedule, the stop-grad or
//! EMA target, a NaN guard, metrics, validation and checkpoint cadence, exact resume.
//!
//! It is a custom loop in Burn's `examples/custom-training-loop` style rather than burn-train's
//! `Learner`: the Learner checkpoints per epoch, non-atomically, whole modules (a frozen SD1.5
//! base included), and steps the LR per micro-batch; consistency training wants per-step
//! checkpoints of the trainable parameters only, written atomically, and a step that also runs a
//! frozen teacher. See `docs/training.md`.
//!
//! One optimizer step `k`:
//! 1. `lr = schedule(k)`;
//! 2. for each micro-batch `m`: the data source's batch `(k, m)`, the draws of `(seed, k, m)`, the
//!    consistency step, `backward(loss / micro_batches)`, gradients accumulated;
//! 3. (data-parallel: the gradients are averaged over peers, `collective`);
//! 4. the global gradient norm; non-finite loss or norm stops the run, naming step and lr;
//!    clipping to `max_grad_norm`;
//! 5. the AdamW step; the EMA update (when the target is an EMA).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use crate::diffusion::Objective;
use crate::draws::DrawSpec;
use crate::error::{Result, TrainError};
use crate::lr::LrSchedule;
use crate::params::{self, NamedParam};
use crate::step::{ConsistencyStep, StepBatch};

/// AdamW settings; the defaults are PyTorch's (`eps 1e-8`, `weight_decay 1e-2`), not Burn's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWSettings {
    /// `beta_1`.
    #[serde(default = "d::beta_1")]
    pub beta_1: f32,
    /// `beta_2`.
    #[serde(default = "d::beta_2")]
    pub beta_2: f32,
    /// `eps` (PyTorch 1e-8; Burn's default is 1e-5).
    #[serde(default = "d::epsilon")]
    pub epsilon: f32,
    /// Decoupled weight decay (PyTorch 1e-2; Burn's default is 1e-4).
    #[serde(default = "d::weight_decay")]
    pub weight_decay: f32,
}

mod d {
    pub fn beta_1() -> f32 {
        0.9
    }
    pub fn beta_2() -> f32 {
        0.999
    }
    pub fn epsilon() -> f32 {
        1e-8
    }
    pub fn weight_decay() -> f32 {
        1e-2
    }
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta_1: d::beta_1(),
            beta_2: d::beta_2(),
            epsilon: d::epsilon(),
            weight_decay: d::weight_decay(),
        }
    }
}

impl AdamWSettings {
    /// Burn's optimizer with these settings (no per-parameter clipping: clipping is global).
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .init()
    }
}

/// What the consistency target is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetNetwork {
    /// The student itself with gradients stopped (the seed, iCT, diffusers' LoRA script).
    StopGrad,
    /// An exponential moving average of the student (diffusers' full-model script: 0.95).
    Ema {
        /// `ema = decay ema + (1 - decay) student` after every optimizer step.
        decay: f64,
    },
}

/// The loop's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSettings {
    /// Optimizer steps in total.
    pub steps: u64,
    /// Seed of every draw.
    pub seed: u64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradients averaged).
    pub accumulation: u64,
    /// Learning-rate schedule.
    pub lr: LrSchedule,
    /// AdamW.
    pub adamw: AdamWSettings,
    /// Global-norm clipping (PyTorch `clip_grad_norm_`), off when `None`.
    pub max_grad_norm: Option<f64>,
    /// The target network.
    pub target: TargetNetwork,
    /// What each step draws.
    pub draws: DrawSpec,
}

/// Where a step's training data comes from. Example `e` of step `k` must be a function of
/// `(k, e)` (the data position of a checkpoint is its step), so a resumed run sees exactly the
/// same data, and a batch split over micro-batches or peers is the same batch.
pub trait BatchSource<B: Backend, const C: usize> {
    /// Examples `examples` of the whole batch of optimizer step `step` (the whole batch is
    /// `batch_size x accumulation x peers` examples).
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Result<StepBatch<B, C>>;
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The optimizer step (0-based).
    pub step: u64,
    /// Mean loss over the micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of the step in seconds.
    pub seconds: f64,
}

/// The student, its optimizer, its target copy and the step counter: everything a checkpoint holds.
/// `O` is the objective: the [`ConsistencyStep`] (CT / CD / multi-boundary CD) or the denoising
/// objective ([`crate::diffusion::DiffusionStep`]) that pretrains networks.
pub struct Trainer<B: AutodiffBackend, M: AutodiffModule<B>, O = ConsistencyStep> {
    /// The network being trained (autodiff backend).
    pub student: M,
    /// Its trainable parameters (deterministic ids).
    pub params: Vec<NamedParam>,
    /// The optimizer (state keyed by the deterministic ids).
    pub optimizer: OptimizerAdaptor<AdamW, M, B>,
    /// The EMA copy of the student when the target is an EMA.
    pub ema: Option<M::InnerModule>,
    /// The next optimizer step to run.
    pub step: u64,
    /// Settings.
    pub settings: LoopSettings,
    /// The objective.
    pub objective: O,
    /// Data-parallel peer (gradients averaged over peers with burn-collective), if any.
    pub peer: Option<crate::parallel::Peer>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>, O> Trainer<B, M, O> {
    /// A trainer at step 0. The student's trainable parameters (those requiring gradients: the
    /// LoRA factors after injection, or everything) get deterministic ids.
    pub fn new(student: M, settings: LoopSettings, objective: O) -> Result<Self> {
        validate(&settings)?;
        let student = params::deterministic_ids(student);
        let params = params::trainable_params(&student);
        if params.is_empty() {
            return Err(TrainError::Invalid(
                "the student has no trainable parameters (inject a LoRA or train the whole network)"
                    .into(),
            ));
        }
        let ema = match settings.target {
            TargetNetwork::Ema { .. } => Some(student.valid()),
            TargetNetwork::StopGrad => None,
        };
        Ok(Self {
            optimizer: settings.adamw.init(),
            student,
            params,
            ema,
            step: 0,
            settings,
            objective,
            peer: None,
        })
    }

    /// Number of trainable numbers.
    pub fn trainable_count(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Runs optimizer step [`Self::step`] and advances it.
    pub fn train_step<S, T, const C: usize>(
        &mut self,
        source: &mut S,
        teacher: Option<&T>,
        device: &B::Device,
    ) -> Result<StepRecord>
    where
        O: Objective<B, M, M::InnerModule, T, C>,
        S: BatchSource<B::InnerBackend, C> + ?Sized,
    {
        <O as Objective<B, M, M::InnerModule, T, C>>::validate(&self.objective)?;
        let start = Instant::now();
        let step = self.step;
        // 1. Learning rate.
        let lr = self.settings.lr.at(step, self.settings.steps);
        // 2. Micro-batches, gradients accumulated (averaged through the loss scale).
        let micro_batches = self.settings.accumulation;
        let inner_device = device.clone();
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut loss_sum = 0.0;
        let b = self.settings.batch_size;
        let peer_index = self.peer.map_or(0, |p| p.id) as u64;
        for micro in 0..micro_batches {
            let first = ((peer_index * micro_batches + micro) as usize) * b;
            let batch = source.batch(step, first..first + b, &inner_device)?;
            if batch.x0.dims()[0] != b {
                return Err(TrainError::Invalid(format!(
                    "the data source returned {} examples for a micro-batch of {b}",
                    batch.x0.dims()[0]
                )));
            }
            let draws = self.settings.draws.draw::<B::InnerBackend>(
                self.settings.seed,
                step,
                first,
                batch.x0.dims(),
                &inner_device,
            );
            let loss = match &self.ema {
                Some(ema) => self
                    .objective
                    .loss(&self.student, ema, teacher, &batch, &draws)?,
                None => {
                    let target = self.student.valid();
                    self.objective
                        .loss(&self.student, &target, teacher, &batch, &draws)?
                }
            };
            let loss = loss / micro_batches as f64;
            let value: f64 = loss.clone().into_scalar().elem();
            // Data-parallel peers decide together after the all-reduce (a NaN anywhere makes the
            // mean NaN everywhere), so that no peer leaves the others waiting.
            if !value.is_finite() && self.peer.is_none() {
                return Err(self.diverged(step, lr, format!("the loss is {value}")));
            }
            loss_sum += value;
            let grads = GradientsParams::from_grads(loss.backward(), &self.student);
            accumulator.accumulate(&self.student, grads);
        }
        let mut grads = accumulator.grads();
        // 3. Data-parallel: average over peers.
        if let Some(peer) = &self.peer {
            grads = peer.all_reduce_mean::<B>(grads)?;
            loss_sum = peer.mean_scalar::<B::InnerBackend>(loss_sum, &inner_device)?;
            if !loss_sum.is_finite() {
                return Err(self.diverged(
                    step,
                    lr,
                    format!("the loss (mean over peers) is {loss_sum}"),
                ));
            }
        }
        // 4. Global norm, NaN guard, clipping.
        let grad_norm: f64 = params::global_grad_norm(&self.student, &grads)
            .map(|n| n.into_scalar().elem())
            .unwrap_or(0.0);
        if !grad_norm.is_finite() {
            return Err(self.diverged(step, lr, format!("the gradient norm is {grad_norm}")));
        }
        if let Some(max) = self.settings.max_grad_norm {
            if grad_norm > max {
                params::scale_grads(&self.student, &mut grads, max / (grad_norm + 1e-6));
            }
        }
        // 5. Optimizer step, EMA.
        self.student = self.optimizer.step(lr, self.student.clone(), grads);
        if let (Some(ema), TargetNetwork::Ema { decay }) = (self.ema.take(), self.settings.target) {
            self.ema = Some(params::ema_update::<B, M>(
                ema,
                &self.student,
                &self.params,
                decay,
            ));
        }
        self.step += 1;
        Ok(StepRecord {
            step,
            loss: loss_sum,
            lr,
            grad_norm,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn diverged(&self, step: u64, lr: f64, message: String) -> TrainError {
        TrainError::Diverged {
            step,
            lr,
            message,
            checkpoint: String::new(),
        }
    }

    /// The module sampling should use: the EMA when there is one, else the student (both on the
    /// inner backend).
    pub fn inference_model(&self) -> M::InnerModule {
        match &self.ema {
            Some(ema) => ema.clone(),
            None => self.student.valid(),
        }
    }
}

use burn::tensor::ElementConversion;

fn validate(settings: &LoopSettings) -> Result<()> {
    let bad = |m: String| Err(TrainError::Invalid(m));
    if settings.steps == 0 {
        return bad("steps must be at least 1".into());
    }
    if settings.batch_size == 0 {
        return bad("the batch size must be at least 1".into());
    }
    if settings.accumulation == 0 {
        return bad("gradient accumulation must be at least 1 micro-batch".into());
    }
    if !(settings.lr.lr.is_finite() && settings.lr.lr > 0.0) {
        return bad(format!(
            "the learning rate must be a finite number > 0, got {}",
            settings.lr.lr
        ));
    }
    if let Some(n) = settings.max_grad_norm {
        if !(n.is_finite() && n > 0.0) {
            return bad(format!(
                "max_grad_norm must be a finite number > 0, got {n}"
            ));
        }
    }
    if let TargetNetwork::Ema { decay } = settings.target {
        if !(0.0..1.0).contains(&decay) {
            return bad(format!("the EMA decay must be in [0, 1), got {decay}"));
        }
    }
    if !(0.0..1.0).contains(&settings.draws.condition_dropout) {
        return bad(format!(
            "condition dropout must be in [0, 1), got {}",
            settings.draws.condition_dropout
        ));
    }
    Ok(())
}

/// Where a run writes (kept here so the loop's helpers agree on names).
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The output folder.
    pub root: PathBuf,
}

impl RunDir {
    /// `root/checkpoints`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// `root/metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `root/loss.png`.
    pub fn loss_curve(&self) -> PathBuf {
        self.root.join("loss.png")
    }
}
