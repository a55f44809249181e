//! The oracle experiment: train the MLP student with the real [`Trainer`] and [`ConsistencyStep`]
//! against the exact mixture teacher, then measure it.
//!
//! Measurements (all from the same initial noise `z`, the same labels and the same `w`):
//! - the teacher's ODE solution: DDIM with 1000 steps on the exact guided teacher from `z`;
//! - per sample: mean `|x - ode|` of the student's 1-step CD output, of the K = 4 multi-boundary
//!   student's 4-step output, and of the teacher's own 1-step DDIM (the thing CD must beat);
//! - in distribution: sliced Wasserstein distance of the 1-step CD samples to the ODE endpoints,
//!   next to the SWD between two independent endpoint sets of the same size (the floor); for CT
//!   (no teacher, `w = 1`), of its 1-step samples to fresh mixture samples, next to the SWD between
//!   two independent mixture sets.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use cm_losses::Loss;
use cm_schedulers::boundaries::BoundarySet;
use cm_schedulers::config::SchedulerConfig;
use cm_schedulers::schedule::NoiseSchedule;
use cm_schedulers::solver::{DdimSolver, SolverVariant};

use super::mixture::{ExactDenoiser, GaussianMixture};
use super::mlp::{MlpConfig, MlpDenoiser};
use crate::denoiser::Denoiser;
use crate::diffusion::DiffusionStep;
use crate::draws::{generator, normals, DrawSpec, GuidanceDraw};
use crate::error::Result;
use crate::lr::{LrDecay, LrSchedule};
use crate::sampler::{consistency_sample, ddim_sample};
use crate::step::{ConsistencyStep, Neighbour, ParameterisationKind, StepBatch};
use crate::trainer::{AdamWSettings, BatchSource, LoopSettings, TargetNetwork, Trainer};

/// Mixture samples as training batches (example `e` of step `k` is a function of `(k, e)`).
pub struct MixtureSource {
    /// The data distribution.
    pub mixture: GaussianMixture,
    /// Data seed.
    pub seed: u64,
}

impl<B: Backend> BatchSource<B, 2> for MixtureSource {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Result<StepBatch<B, 2>> {
        let n = examples.len();
        let d = self.mixture.dim();
        let mut values = Vec::with_capacity(n * d);
        let mut labels = Vec::with_capacity(n);
        for e in examples {
            let (v, l) = self.mixture.sample(
                1,
                crate::draws::stream_seed(self.seed, &[step, e as u64, 2]),
            );
            values.extend(v);
            labels.extend(l);
        }
        Ok(StepBatch {
            x0: Tensor::from_data(TensorData::new(values, [n, d, 1, 1]), device),
            condition: self.mixture.one_hot(&labels, device),
            uncondition: Tensor::zeros([n, self.mixture.num_classes], device),
        })
    }
}

/// One oracle training run.
#[derive(Debug, Clone)]
pub struct OracleRun {
    /// CT or CD.
    pub neighbour: Neighbour,
    /// Segments K (1: plain CD / CT).
    pub segments: usize,
    /// Guidance scale of the teacher (1 for CT).
    pub guidance: f32,
    /// Optimizer steps.
    pub steps: u64,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Loss.
    pub loss: Loss,
    /// Target network.
    pub target: TargetNetwork,
    /// Student shape.
    pub mlp: MlpConfig,
    /// Points of the solver grid (50: skip 20 over 1000 timesteps).
    pub grid: usize,
    /// Seed.
    pub seed: u64,
}

impl OracleRun {
    /// CD with the oracle's defaults (`w = 3`, K segments).
    pub fn distillation(segments: usize, steps: u64) -> Self {
        Self {
            neighbour: Neighbour::Teacher,
            segments,
            guidance: 3.0,
            steps,
            batch: 256,
            lr: 2e-3,
            loss: Loss::PseudoHuber { c: 1e-3 },
            target: TargetNetwork::Ema { decay: 0.95 },
            mlp: MlpConfig::default(),
            grid: 50,
            seed: 0,
        }
    }

    /// CT (no teacher, `w = 1`).
    pub fn training(steps: u64) -> Self {
        Self {
            neighbour: Neighbour::Analytic,
            guidance: 1.0,
            ..Self::distillation(1, steps)
        }
    }
}

/// The SD1.5 schedule the oracle uses (the same numbers as the real thing).
pub fn oracle_schedule() -> NoiseSchedule {
    NoiseSchedule::new(&SchedulerConfig::sd15())
}

fn loop_settings(
    steps: u64,
    batch_size: usize,
    lr: f64,
    seed: u64,
    target: TargetNetwork,
    draws: DrawSpec,
) -> LoopSettings {
    LoopSettings {
        steps,
        seed,
        batch_size,
        accumulation: 1,
        lr: LrSchedule {
            lr,
            warmup_steps: steps / 20,
            decay: LrDecay::Cosine,
        },
        adamw: AdamWSettings {
            weight_decay: 0.0,
            ..Default::default()
        },
        max_grad_norm: Some(1.0),
        target,
        draws,
    }
}

/// Pretrains the MLP as a diffusion model of the mixture (denoising objective, 10% condition
/// dropout so that it also knows the unconditional distribution): the oracle's analogue of the
/// pretrained SD weights every student starts from.
pub fn pretrain<B: AutodiffBackend>(
    mixture: &GaussianMixture,
    mlp: MlpConfig,
    steps: u64,
    seed: u64,
    device: &B::Device,
) -> Result<MlpDenoiser<B>> {
    B::seed(device, seed);
    let student: MlpDenoiser<B> = MlpConfig {
        dim: mixture.dim(),
        classes: mixture.num_classes,
        ..mlp
    }
    .init(device);
    let draws = DrawSpec {
        grid_points: 1000,
        guidance: GuidanceDraw::Fixed(1.0),
        condition_dropout: 0.1,
    };
    let objective = DiffusionStep {
        schedule: oracle_schedule(),
        loss: Loss::L2,
    };
    let settings = loop_settings(steps, 256, 2e-3, seed, TargetNetwork::StopGrad, draws);
    let mut trainer = Trainer::new(student, settings, objective)?;
    let mut source = MixtureSource {
        mixture: mixture.clone(),
        seed: seed ^ 0x9E7,
    };
    while trainer.step < steps {
        trainer.train_step::<_, ExactDenoiser<B::InnerBackend>, 2>(&mut source, None, device)?;
    }
    Ok(trainer.student)
}

/// Trains one student from `init` with the consistency step; returns it (inner backend) with the
/// loss of every step.
pub fn train<B: AutodiffBackend>(
    run: &OracleRun,
    mixture: &GaussianMixture,
    init: MlpDenoiser<B>,
    device: &B::Device,
) -> Result<(MlpDenoiser<B::InnerBackend>, Vec<f64>)> {
    let schedule = oracle_schedule();
    let consistency = ConsistencyStep {
        schedule: schedule.clone(),
        solver: DdimSolver::new(schedule.clone(), run.grid, SolverVariant::Seed)?,
        boundaries: BoundarySet::evenly_spaced(run.segments, 1000, 50)?,
        parameterisation: ParameterisationKind::DdimToBoundary,
        timestep_scaling: 10.0,
        loss: run.loss,
        neighbour: run.neighbour,
    };
    let draws = DrawSpec {
        grid_points: run.grid,
        guidance: GuidanceDraw::Fixed(run.guidance),
        condition_dropout: 0.0,
    };
    let settings = loop_settings(run.steps, run.batch, run.lr, run.seed, run.target, draws);
    let mut trainer = Trainer::new(init, settings, consistency)?;
    let teacher: ExactDenoiser<B::InnerBackend> = mixture.denoiser(schedule, device);
    let mut source = MixtureSource {
        mixture: mixture.clone(),
        seed: run.seed ^ 0xDA7A,
    };
    let teacher = (run.neighbour == Neighbour::Teacher).then_some(&teacher);
    let mut losses = Vec::with_capacity(run.steps as usize);
    while trainer.step < run.steps {
        losses.push(trainer.train_step(&mut source, teacher, device)?.loss);
    }
    Ok((trainer.inference_model(), losses))
}

/// The evaluation set: noise `z`, labels, conditions.
pub struct EvalSet<B: Backend> {
    /// Initial noise `[n, dim, 1, 1]`.
    pub noise: Tensor<B, 4>,
    /// Labels.
    pub labels: Vec<usize>,
    /// One-hot conditions.
    pub condition: Tensor<B, 2>,
    /// All-zero conditions.
    pub uncondition: Tensor<B, 2>,
}

impl<B: Backend> EvalSet<B> {
    /// `n` evaluation points drawn with `seed` (never a training seed: training streams mix in
    /// the step index).
    pub fn new(mixture: &GaussianMixture, n: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = generator(seed, &[0xE7A1]);
        let d = mixture.dim();
        let noise = normals(&mut rng, n * d);
        let labels: Vec<usize> = (0..n).map(|i| i % mixture.num_classes).collect();
        Self {
            noise: Tensor::from_data(TensorData::new(noise, [n, d, 1, 1]), device),
            condition: mixture.one_hot(&labels, device),
            uncondition: Tensor::zeros([n, mixture.num_classes], device),
            labels,
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Flattened `[n * dim]` host values.
pub fn host(x: Tensor<impl Backend, 4>) -> Vec<f32> {
    x.into_data().convert::<f32>().to_vec().expect("f32")
}

/// Mean Euclidean distance between corresponding points.
pub fn mean_distance(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let n = a.len() / dim;
    (0..n)
        .map(|i| {
            (0..dim)
                .map(|j| ((a[i * dim + j] - b[i * dim + j]) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / n as f64
}

/// The teacher's DDIM ODE solution with `steps` steps (`[999, ..]` trailing: 1000 -> every
/// timestep) from the set's noise, with guidance `w`.
pub fn teacher_ode<B: Backend>(
    teacher: &ExactDenoiser<B>,
    set: &EvalSet<B>,
    steps: usize,
    w: f32,
) -> Result<Tensor<B, 4>> {
    let schedule = oracle_schedule();
    let mut config = SchedulerConfig::sd15();
    config.timestep_spacing = cm_schedulers::config::TimestepSpacing::Trailing;
    let timesteps = cm_schedulers::ddim::ddim_timesteps(&config, steps)?;
    ddim_sample(
        teacher,
        &schedule,
        &timesteps,
        set.noise.clone(),
        set.condition.clone(),
        set.uncondition.clone(),
        &vec![w; set.len()],
    )
}

/// Deterministic K-segment consistency sampling of a DDIM-to-boundary student.
pub fn student_sample<B: Backend, M: Denoiser<B, 2>>(
    student: &M,
    set: &EvalSet<B>,
    segments: usize,
    w: f32,
) -> Result<Tensor<B, 4>> {
    let schedule = oracle_schedule();
    let boundaries = BoundarySet::evenly_spaced(segments, 1000, 50)?;
    let timesteps = boundaries.sampling_timesteps();
    let below: Vec<usize> = timesteps
        .iter()
        .map(|&t| boundaries.boundary_below(t))
        .collect();
    let parameterisation =
        ParameterisationKind::DdimToBoundary.build(student.prediction_type(), 10.0);
    consistency_sample(
        student,
        &parameterisation,
        &schedule,
        &timesteps,
        &below,
        set.noise.clone(),
        set.condition.clone(),
        Some(&vec![w; set.len()]),
        None,
    )
}
