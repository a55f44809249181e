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
use super::swd::sliced_wasserstein;
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

/// How much the oracle trains and measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OracleBudget {
    /// Denoising pretraining steps of the MLP (shared by every run).
    pub pretrain_steps: u64,
    /// CD steps (K = 1).
    pub cd_steps: u64,
    /// Multi-boundary CD steps (K = 4).
    pub multiboundary_steps: u64,
    /// CT steps.
    pub ct_steps: u64,
    /// Evaluation points per set.
    pub eval_points: usize,
    /// Teacher guidance `w`.
    pub guidance: f32,
}

impl OracleBudget {
    /// What CI runs (< 60 s on 2 cores).
    pub fn ci() -> Self {
        Self {
            pretrain_steps: 2000,
            cd_steps: 1500,
            multiboundary_steps: 1000,
            ct_steps: 1500,
            eval_points: 2000,
            guidance: 3.0,
        }
    }
}

/// Every number of one oracle evaluation, with the sample sets for plots.
#[derive(Debug, Clone)]
pub struct OracleReport {
    /// The budget.
    pub budget: OracleBudget,
    /// Mean `|teacher 1-step DDIM - ODE|`.
    pub teacher_one_step_error: f64,
    /// Mean `|CD 1-step - ODE|`.
    pub cd_error: f64,
    /// Mean `|multi-boundary K = 4 (4 steps) - ODE|`.
    pub multiboundary_error: f64,
    /// SWD(CD 1-step, ODE endpoints).
    pub cd_swd: f64,
    /// SWD between two independent ODE endpoint sets (the floor).
    pub ode_swd_floor: f64,
    /// SWD(multi-boundary samples, ODE endpoints).
    pub multiboundary_swd: f64,
    /// SWD(CT 1-step, mixture samples).
    pub ct_swd: f64,
    /// SWD between two independent mixture sets (the floor).
    pub data_swd_floor: f64,
    /// Wall time of training, seconds.
    pub train_seconds: f64,
    /// Labels of the evaluation points.
    pub labels: Vec<usize>,
    /// `[n * 2]` sample sets: ODE endpoints, teacher 1-step, CD 1-step, multi-boundary, CT 1-step,
    /// mixture data.
    pub samples: Vec<(String, Vec<f32>)>,
}

/// Trains CD (K = 1), multi-boundary CD (K = 4) and CT from one pretrained MLP and measures them
/// against the exact teacher (see the module docs).
pub fn evaluate<B: AutodiffBackend>(
    budget: OracleBudget,
    device: &B::Device,
) -> Result<OracleReport> {
    let mixture = GaussianMixture::ring();
    let w = budget.guidance;
    let n = budget.eval_points;
    let set = EvalSet::<B::InnerBackend>::new(&mixture, n, 12345, device);
    let other = EvalSet::<B::InnerBackend>::new(&mixture, n, 54321, device);
    let teacher: ExactDenoiser<B::InnerBackend> = mixture.denoiser(oracle_schedule(), device);
    // The ODE endpoints of both sets in one pass.
    let both = EvalSet {
        noise: Tensor::cat(vec![set.noise.clone(), other.noise.clone()], 0),
        labels: set.labels.iter().chain(&other.labels).copied().collect(),
        condition: Tensor::cat(vec![set.condition.clone(), other.condition.clone()], 0),
        uncondition: Tensor::cat(vec![set.uncondition.clone(), other.uncondition.clone()], 0),
    };
    let ode_both = host(teacher_ode(&teacher, &both, 1000, w)?);
    let (ode, ode_other) = ode_both.split_at(n * 2);
    let one_step = host(teacher_ode(&teacher, &set, 1, w)?);
    let data = mixture.sample_classes(&set.labels, 1);
    let data_other = mixture.sample_classes(&set.labels, 2);

    let start = std::time::Instant::now();
    let init = pretrain::<B>(
        &mixture,
        MlpConfig::default(),
        budget.pretrain_steps,
        0,
        device,
    )?;
    // CD (and multi-boundary CD) with L2, CT with pseudo-Huber: the best of both measured here.
    let cd_run = OracleRun {
        lr: 2e-3,
        loss: Loss::L2,
        ..OracleRun::distillation(1, budget.cd_steps)
    };
    let (cd, _) = train::<B>(&cd_run, &mixture, init.clone(), device)?;
    let mb_run = OracleRun {
        lr: 2e-3,
        loss: Loss::L2,
        ..OracleRun::distillation(4, budget.multiboundary_steps)
    };
    let (mb, _) = train::<B>(&mb_run, &mixture, init.clone(), device)?;
    let ct_run = OracleRun {
        lr: 2e-3,
        ..OracleRun::training(budget.ct_steps)
    };
    let (ct, _) = train::<B>(&ct_run, &mixture, init, device)?;
    let train_seconds = start.elapsed().as_secs_f64();

    let cd_samples = host(student_sample(&cd, &set, 1, w)?);
    let mb_samples = host(student_sample(&mb, &set, 4, w)?);
    let ct_samples = host(student_sample(&ct, &set, 1, 1.0)?);
    let swd = |a: &[f32], b: &[f32]| sliced_wasserstein(a, b, 2, 256, 0);
    Ok(OracleReport {
        budget,
        teacher_one_step_error: mean_distance(&one_step, ode, 2),
        cd_error: mean_distance(&cd_samples, ode, 2),
        multiboundary_error: mean_distance(&mb_samples, ode, 2),
        cd_swd: swd(&cd_samples, ode_other),
        ode_swd_floor: swd(ode, ode_other),
        multiboundary_swd: swd(&mb_samples, ode_other),
        ct_swd: swd(&ct_samples, &data_other),
        data_swd_floor: swd(&data, &data_other),
        train_seconds,
        labels: set.labels.clone(),
        samples: vec![
            ("teacher ODE (DDIM 1000)".into(), ode.to_vec()),
            ("teacher DDIM 1 step".into(), one_step),
            ("CD, 1 step".into(), cd_samples),
            ("multi-boundary K=4, 4 steps".into(), mb_samples),
            ("CT (w = 1), 1 step".into(), ct_samples),
            ("mixture data".into(), data),
        ],
    })
}

impl OracleReport {
    /// The numbers as a Markdown table.
    pub fn table(&self) -> String {
        let t = self.teacher_one_step_error;
        format!(
            "| measurement | value | criterion |\n|---|---|---|\n\
             | teacher DDIM 1-step error vs ODE | {t:.4} | (reference) |\n\
             | CD 1-step error vs ODE | {:.4} ({:.1}x smaller) | >= 5x smaller |\n\
             | multi-boundary K=4 error vs ODE | {:.4} ({:.1}x smaller) | >= 5x smaller |\n\
             | SWD(CD 1-step, ODE endpoints) | {:.4} ({:.2}x floor {:.4}) | <= 2x floor |\n\
             | SWD(multi-boundary, ODE endpoints) | {:.4} ({:.2}x floor) | (reported) |\n\
             | SWD(CT 1-step, mixture) | {:.4} ({:.2}x floor {:.4}) | <= 2x floor |\n",
            self.cd_error,
            t / self.cd_error,
            self.multiboundary_error,
            t / self.multiboundary_error,
            self.cd_swd,
            self.cd_swd / self.ode_swd_floor,
            self.ode_swd_floor,
            self.multiboundary_swd,
            self.multiboundary_swd / self.ode_swd_floor,
            self.ct_swd,
            self.ct_swd / self.data_swd_floor,
            self.data_swd_floor,
        )
    }

    /// Scatter plots of every sample set, coloured by class.
    pub fn plot(&self, path: &std::path::Path) -> Result<()> {
        let panels: Vec<crate::metrics::ScatterPanel> = self
            .samples
            .iter()
            .map(|(title, points)| crate::metrics::ScatterPanel {
                title: title.clone(),
                points,
                colours: &self.labels,
            })
            .collect();
        crate::metrics::plot_scatter(&panels, 1.6, path)
    }
}
