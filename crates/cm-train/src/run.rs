//! A Stable Diffusion training run from a [`RunConfig`]: what the three examples
//! (`consistency_training`, `consistency_distill`, `multiboundary_distill`) call.
//!
//! 1. Check the config and the output folder (nothing is loaded before that); save `config.toml`.
//! 2. Load the teacher pipeline (frozen parts in `model.frozen_dtype`).
//! 3. The data: captioned images -> latent cache (or on-the-fly encoding).
//! 4. The student: LoRA adapters on the teacher's UNet (the frozen base IS the teacher: one copy of
//!    its weights), or the whole UNet (a separate frozen teacher); an LCM-style guidance embedding
//!    when asked.
//! 5. The consistency step and the loop settings; resume from the newest checkpoint if asked.
//! 6. The session: progress, metrics, validation grids, checkpoints.
//! 7. The outputs: `pytorch_lora_weights.safetensors` (diffusers / peft keys) or `unet/`
//!    (a diffusers UNet folder), the comparison grid and a summary.
//!
//! Output folder:
//! ```text
//! config.toml  metrics.jsonl  loss.png  comparison.png  samples/step-*.png  checkpoints/
//! pytorch_lora_weights.safetensors | unet/   data/ (built-in data)  cache/ (latents)
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use cm_lora::{LoraConfig, LoraFormat, TargetSelector};
use cm_models::pipeline::{PipelineLoadOptions, StableDiffusion, WeightVariant};
use cm_models::unet::UNet2DConditionModel;
use cm_schedulers::boundaries::BoundarySet;
use cm_schedulers::config::{SchedulerClass, SchedulerConfig};
use cm_schedulers::schedule::NoiseSchedule;
use cm_schedulers::solver::{DdimSolver, SolverVariant};

use crate::config::{LatentMode, Method, RunConfig, SolverVariantName, Trainable};
use crate::draws::{DrawSpec, GuidanceDraw};
use crate::error::{Result, TrainError};
use crate::lr::LrSchedule;
use crate::sampling::{sample_with_unet, HostNoise, SampleOptions, SamplerKind};
use crate::sd::SdUnet;
use crate::sd_data::{items, load_latents, LatentSource, OnTheFlySource};
use crate::session::{self, SessionHooks, SessionOptions};
use crate::step::{ConsistencyStep, Neighbour};
use crate::trainer::{BatchSource, LoopSettings, StepRecord, Trainer};

/// The LoRA adapter's name in the student (and in checkpoints).
pub const ADAPTER: &str = "train";

/// Module path of a student's fresh guidance-embedding projection.
const FRESH_COND_PROJ: &str = "time_embedding.cond_proj.weight";

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The output folder.
    pub out: PathBuf,
    /// The LoRA file (LoRA runs).
    pub lora: Option<PathBuf>,
    /// The UNet folder (whole-UNet runs).
    pub unet: Option<PathBuf>,
    /// The last comparison grid.
    pub comparison: PathBuf,
    /// The checkpoint the run resumed from.
    pub resumed_from: Option<PathBuf>,
    /// One record per step run in this process.
    pub records: Vec<StepRecord>,
    /// The last comparison grid's columns read by the analytic judge (`cm_data::judge`): the
    /// column's name and the fraction of its images fully right (empty unless every validation
    /// prompt is a caption of the captioned-shapes grammar).
    pub judged: Vec<(String, f64)>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Runs `config` on one device of backend `B` (autodiff with or without gradient checkpointing,
/// as configured).
pub fn run<B: Backend>(config: &RunConfig, resume: bool, device: &B::Device) -> Result<RunOutcome> {
    run_on_devices::<B>(config, resume, std::slice::from_ref(device))
}

/// Runs `config` data-parallel: `train.peers_per_device` peers (threads) per device, each
/// training its share of the device's `batch_size` examples per micro-batch, gradients averaged
/// with burn-collective (`parallel`). Peers on the same device share one copy of the frozen
/// teacher pipeline. The first peer writes every output; `train.devices` must equal
/// `devices.len()`. `peers_per_device = "auto"` counts as 1 here (the binaries resolve it by
/// backend first: [`crate::config::PeersPerDevice::auto_for`]).
pub fn run_on_devices<B: Backend>(
    config: &RunConfig,
    resume: bool,
    devices: &[B::Device],
) -> Result<RunOutcome> {
    if devices.len() != config.train.devices {
        return Err(TrainError::Invalid(format!(
            "`train.devices` is {} but {} devices were given",
            config.train.devices,
            devices.len()
        )));
    }
    config.validate()?;
    let split = config.train.peers_per_device.count();
    let peers: Vec<B::Device> = devices
        .iter()
        .flat_map(|device| std::iter::repeat_n(device.clone(), split))
        .collect();
    let mut per_peer = config.clone();
    per_peer.train.batch_size = config.train.batch_size / split;
    per_peer.train.peers_per_device = crate::config::PeersPerDevice::Count(1);
    let plan = Plan {
        per_peer: &per_peer,
        saved: config,
        split,
    };
    if config.model.gradient_checkpointing {
        dispatch::<Autodiff<B, BalancedCheckpointing>>(plan, resume, &peers)
    } else {
        dispatch::<Autodiff<B>>(plan, resume, &peers)
    }
}

/// A run as its peers see it.
#[derive(Clone, Copy)]
struct Plan<'a> {
    /// The config with `batch_size` per peer (what every step uses).
    per_peer: &'a RunConfig,
    /// The config as given (what `config.toml` and checkpoints record).
    saved: &'a RunConfig,
    /// Peers per device.
    split: usize,
}

fn dispatch<A: AutodiffBackend>(
    plan: Plan<'_>,
    resume: bool,
    peers: &[A::Device],
) -> Result<RunOutcome> {
    let config = plan.per_peer;
    // 1. Everything that needs no weights, once.
    let teacher_dir = preflight(config, resume)?;
    if peers.len() == 1 {
        return run_peer::<A>(plan, resume, &peers[0], &teacher_dir, None, None);
    }
    // Peers on one device share the frozen pipeline; the latent cache is built once, before the
    // peers start (they only read it).
    let one_device = peers.iter().all(|device| *device == peers[0]);
    let shared = if one_device || config.data.latents == LatentMode::Cache {
        Some(load_pipeline::<A::InnerBackend>(
            config,
            &teacher_dir,
            &peers[0],
        )?)
    } else {
        None
    };
    if let (Some(sd), LatentMode::Cache) = (&shared, config.data.latents) {
        let resolution = training_resolution(config, sd)?;
        let items = items(&config.data, resolution, &config.output.dir)?;
        load_latents(
            sd,
            items,
            resolution,
            config.data.skip_bad,
            &cache_dir(config),
            &peers[0],
        )?;
    }
    let shared = if one_device { shared } else { None };
    let count = peers.len();
    std::thread::scope(|scope| {
        let handles: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(id, device)| {
                let teacher_dir = &teacher_dir;
                let shared = shared.as_ref();
                scope.spawn(move || {
                    crate::parallel::peer_pool(count)?.install(|| {
                        run_peer::<A>(plan, resume, device, teacher_dir, shared, Some((id, count)))
                    })
                })
            })
            .collect();
        let mut results: Vec<Result<RunOutcome>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Invalid("a data-parallel peer panicked".into()))
                })
            })
            .collect();
        if let Some(position) = results.iter().position(|r| r.is_err()) {
            return results.swap_remove(position);
        }
        results.swap_remove(0)
    })
}

fn load_pipeline<B: Backend>(
    config: &RunConfig,
    teacher_dir: &Path,
    device: &B::Device,
) -> Result<StableDiffusion<B>> {
    let lora = config.model.trainable == Trainable::Lora;
    let frozen = config.model.frozen_dtype.dtype();
    Ok(StableDiffusion::<B>::load(
        teacher_dir,
        PipelineLoadOptions {
            variant: WeightVariant::Auto,
            unet_dtype: if lora { frozen } else { DType::F32 },
            frozen_dtype: frozen,
        },
        device,
    )?)
}

fn training_resolution<B: Backend>(config: &RunConfig, sd: &StableDiffusion<B>) -> Result<u32> {
    let factor = sd.vae_scale_factor();
    let resolution = config
        .data
        .resolution
        .unwrap_or((sd.unet_config.sample_size.unwrap_or(64) * factor) as u32);
    if !(resolution as usize).is_multiple_of(factor) {
        return Err(TrainError::Invalid(format!(
            "`data.resolution` {resolution} is not a multiple of the VAE's down-sampling factor {factor}"
        )));
    }
    Ok(resolution)
}

fn cache_dir(config: &RunConfig) -> PathBuf {
    config
        .data
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.output.dir.join("cache"))
}

/// Checks everything that does not need the weights: the config, the teacher folder's files,
/// the data source and the output folder (so a mistake costs seconds, not a model load).
pub fn preflight(config: &RunConfig, resume: bool) -> Result<PathBuf> {
    config.validate()?;
    let teacher = config.model.teacher.clone().ok_or_else(|| {
        TrainError::Invalid("no teacher: set `model.teacher` or pass --teacher DIR".into())
    })?;
    for file in [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
    ] {
        let path = teacher.join(file);
        if !path.is_file() {
            return Err(TrainError::Config {
                path: teacher.clone(),
                message: format!(
                    "the teacher folder has no {file}: expected a diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
                ),
            });
        }
    }
    if config.model.guidance_embedding_dim > 0 && config.model.trainable == Trainable::Lora {
        return Err(TrainError::Invalid(
            "`model.guidance_embedding_dim` adds a fresh cond_proj layer that a LoRA file cannot carry: set model.trainable = \"unet\"".into(),
        ));
    }
    for (key, path) in [
        ("data.dir", &config.data.dir),
        ("data.coco", &config.data.coco),
        ("data.csv", &config.data.csv),
        ("data.images", &config.data.images),
    ] {
        if let Some(p) = path {
            if !p.exists() {
                return Err(TrainError::Config {
                    path: p.clone(),
                    message: format!("`{key}` does not exist"),
                });
            }
        }
    }
    let out = config.output.dir.clone();
    if out.exists() && !out.is_dir() {
        return Err(TrainError::Config {
            path: out,
            message: "the output path exists and is not a folder".into(),
        });
    }
    std::fs::create_dir_all(&out).map_err(|e| cm_io::IoError::write(&out, e))?;
    let earlier = crate::checkpoint::latest(&out.join("checkpoints"))?;
    if let (Some(found), false) = (&earlier, resume) {
        return Err(TrainError::Config {
            path: found.clone(),
            message: "this output folder holds an earlier run's checkpoint: pass --resume to continue it, or choose another --out".into(),
        });
    }
    Ok(teacher)
}

struct Cast(DType);

impl<B: Backend> ModuleMapper<B> for Cast {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
    }
}

struct RequireGrad(bool);

impl<B: Backend> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(self.0)
    }
}

/// One peer of a run (the only one without data parallelism): steps 2-7 of the module docs.
fn run_peer<A: AutodiffBackend>(
    plan: Plan<'_>,
    resume: bool,
    device: &A::Device,
    teacher_dir: &Path,
    shared: Option<&StableDiffusion<A::InnerBackend>>,
    peer: Option<(usize, usize)>,
) -> Result<RunOutcome> {
    let config = plan.per_peer;
    let start = Instant::now();
    let primary = peer.is_none_or(|(id, _)| id == 0);
    let peers = peer.map_or(1, |(_, n)| n);
    let teacher_dir = teacher_dir.to_path_buf();
    let out = config.output.dir.clone();
    if primary {
        cm_io::write_atomically(&out.join("config.toml"), plan.saved.to_toml().as_bytes())?;
    }

    // 2. The teacher pipeline (shared by the peers of one device).
    let lora = config.model.trainable == Trainable::Lora;
    let frozen = config.model.frozen_dtype.dtype();
    let sd = match shared {
        Some(sd) => sd.clone(),
        None => load_pipeline::<A::InnerBackend>(config, &teacher_dir, device)?,
    };
    if primary {
        for report in &sd.reports {
            println!("  {report}");
        }
    }
    let scheduler_config = SchedulerConfig::from_json_value_as(
        &sd.scheduler_config,
        &sd.scheduler_config_path(),
        Some(SchedulerClass::Ddim),
    )?;
    let schedule = NoiseSchedule::new(&scheduler_config);
    let prediction_type = scheduler_config.prediction_type;
    let resolution = training_resolution(config, &sd)?;

    // 3. Data.
    let items = items(&config.data, resolution, &out)?;
    let global_batch =
        config.train.batch_size * config.train.gradient_accumulation as usize * peers;
    let mut source: Box<dyn BatchSource<A::InnerBackend, 3> + '_> = match config.data.latents {
        LatentMode::Cache => {
            let data = load_latents(
                &sd,
                items,
                resolution,
                config.data.skip_bad,
                &cache_dir(config),
                device,
            )?;
            if primary {
                println!(
                    "data: {} images at {resolution} px -> latents {:?}{}",
                    data.len(),
                    data.latent_shape,
                    if data.skipped.is_empty() {
                        String::new()
                    } else {
                        format!(", {} unreadable skipped", data.skipped.len())
                    }
                );
            }
            Box::new(LatentSource::new(data, global_batch, config.train.seed))
        }
        LatentMode::OnTheFly => Box::new(OnTheFlySource::new(
            &sd,
            items,
            resolution,
            config.data.skip_bad,
            global_batch,
            config.train.seed,
            device,
        )?),
    };

    // 4. Student and teacher.
    let base = if config.model.guidance_embedding_dim > 0 {
        let (unet, _, report) = UNet2DConditionModel::<A::InnerBackend>::student_from_teacher(
            teacher_dir.join("unet"),
            config.model.guidance_embedding_dim,
            WeightVariant::Auto,
            DType::F32,
            device,
        )?;
        if primary {
            println!("  student: {report}");
        }
        unet
    } else {
        sd.unet.clone()
    };
    let mut student_unet = UNet2DConditionModel::<A>::from_inner(base);
    if lora {
        let report = cm_lora::inject(
            &mut student_unet,
            ADAPTER,
            &LoraConfig::new(config.model.lora_rank, config.model.lora_alpha),
            &TargetSelector::names(&config.model.lora_targets),
        )?;
        if primary {
            println!("  {report}");
        }
    } else {
        student_unet = student_unet.map(&mut RequireGrad(true));
    }
    // Fresh parameters (LoRA `down` factors, a new `cond_proj`) from the run's seed, on the host.
    let fresh = |path: &str| path.ends_with(".lora.0.down.weight") || path == FRESH_COND_PROJ;
    student_unet = crate::params::reinitialize_uniform(student_unet, &fresh, config.train.seed).0;
    let student = SdUnet {
        unet: student_unet,
        prediction_type,
    };
    let teacher = (config.method != Method::Ct).then(|| SdUnet {
        unet: if lora {
            sd.unet.clone()
        } else {
            sd.unet.clone().map(&mut Cast(frozen))
        },
        prediction_type,
    });

    // 5. Step, loop, resume.
    let consistency = consistency_step(config, &schedule)?;
    let settings = loop_settings(config);
    let mut trainer = Trainer::new(student, settings, consistency)?;
    if let Some((id, n)) = peer {
        trainer.peer = Some(crate::parallel::Peer::register::<A::InnerBackend>(
            id, n, device,
        )?);
    }
    if primary {
        println!(
            "{}: {} trainable parameters, {} steps of {} x {} examples x {} device(s){}",
            config.method.name(),
            trainer.trainable_count(),
            config.train.steps,
            plan.saved.train.batch_size,
            config.train.gradient_accumulation,
            plan.saved.train.devices,
            if plan.split > 1 {
                format!(" ({} peers per device)", plan.split)
            } else {
                String::new()
            }
        );
    }
    let options = SessionOptions {
        out: out.clone(),
        log_every: config.output.log_every,
        checkpoint_every: config.output.checkpoint_every,
        keep_checkpoints: config.output.keep_checkpoints,
        validate_every: config.output.validate_every,
        label: config.method.name().to_string(),
        run: serde_json::to_value(plan.saved).expect("serialisable"),
        print: primary,
        primary,
    };
    let resumed_from = if resume {
        let used = session::resume(&mut trainer, &options, None)?;
        match &used {
            _ if !primary => {}
            Some(dir) => println!("resumed from {} (step {})", dir.display(), trainer.step),
            None => println!(
                "--resume: no checkpoint under {}, starting at step 0",
                options.checkpoints().display()
            ),
        }
        used
    } else {
        None
    };

    // 6. The session.
    let mut hooks = Validation::new(
        config,
        &sd,
        &scheduler_config,
        resolution,
        out.clone(),
        plan.split,
    )?;
    let records = session::run(
        &mut trainer,
        source.as_mut(),
        teacher.as_ref(),
        &mut hooks,
        &options,
        device,
    )?;
    let judged = std::mem::take(&mut hooks.judged);
    drop(source);
    if let Some(peer) = trainer.peer.take() {
        peer.finish::<A::InnerBackend>()?;
    }

    // 7. Outputs (the first peer writes them).
    let model = trainer.inference_model();
    let (lora_path, unet_path) = if !primary {
        (None, None)
    } else if lora {
        let path = out.join("pytorch_lora_weights.safetensors");
        let dtype = config.output.lora_dtype.dtype();
        cm_models::lora_file::save_from(&model.unet, ADAPTER, &path, LoraFormat::Peft, dtype)?;
        (Some(path), None)
    } else {
        let dir = out.join("unet");
        save_unet(
            &model.unet,
            &teacher_dir.join("unet/config.json"),
            config.model.guidance_embedding_dim,
            &dir,
        )?;
        (None, Some(dir))
    };
    let outcome = RunOutcome {
        comparison: out.join("comparison.png"),
        out,
        lora: lora_path,
        unet: unet_path,
        resumed_from,
        records,
        judged,
        seconds: start.elapsed().as_secs_f64(),
    };
    if primary {
        print_summary(config, &outcome);
    }
    Ok(outcome)
}

/// The segment boundaries a config trains with (and its student must be sampled with): the
/// explicit `consistency.boundaries`, else `segments` evenly spaced on the solver grid.
fn boundary_set(config: &RunConfig, num_train_timesteps: usize) -> Result<BoundarySet> {
    let c = &config.consistency;
    Ok(match &c.boundaries {
        Some(list) => BoundarySet::explicit(list, num_train_timesteps)?,
        None => BoundarySet::evenly_spaced(c.segments, num_train_timesteps, c.solver_steps)?,
    })
}

/// The consistency step a config describes.
pub fn consistency_step(config: &RunConfig, schedule: &NoiseSchedule) -> Result<ConsistencyStep> {
    let c = &config.consistency;
    let boundaries = boundary_set(config, schedule.num_train_timesteps())?;
    let variant = match c.solver_variant {
        SolverVariantName::Diffusers => SolverVariant::Diffusers,
        SolverVariantName::Seed => SolverVariant::Seed,
    };
    Ok(ConsistencyStep {
        schedule: schedule.clone(),
        solver: DdimSolver::new(schedule.clone(), c.solver_steps, variant)?,
        boundaries,
        parameterisation: c.parameterisation,
        timestep_scaling: c.timestep_scaling,
        loss: c.loss,
        neighbour: if config.method == Method::Ct {
            Neighbour::Analytic
        } else {
            Neighbour::Teacher
        },
    })
}

/// The loop settings a config describes.
pub fn loop_settings(config: &RunConfig) -> LoopSettings {
    let t = &config.train;
    LoopSettings {
        steps: t.steps,
        seed: t.seed,
        batch_size: t.batch_size,
        accumulation: t.gradient_accumulation,
        lr: LrSchedule {
            lr: t.lr,
            warmup_steps: t.warmup_steps,
            decay: t.lr_decay,
        },
        adamw: t.adamw,
        max_grad_norm: t.max_grad_norm,
        target: config.consistency.target,
        draws: DrawSpec {
            grid_points: config.consistency.solver_steps,
            guidance: config.consistency.guidance,
            condition_dropout: config.consistency.condition_dropout,
        },
    }
}

/// Writes a UNet as a diffusers `unet/` folder: the teacher's `config.json` (with the student's
/// `time_cond_proj_dim`) and `diffusion_pytorch_model.safetensors` in diffusers' keys and layout.
pub fn save_unet<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    teacher_config: &Path,
    guidance_embedding_dim: usize,
    dir: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(teacher_config)
        .map_err(|e| cm_io::IoError::read(teacher_config, e))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::Config {
            path: teacher_config.to_path_buf(),
            message: e.to_string(),
        })?;
    if guidance_embedding_dim > 0 {
        json["time_cond_proj_dim"] = serde_json::json!(guidance_embedding_dim);
    }
    let tensors = cm_models::weights::export_tensors(unet)?;
    cm_io::write_dir_atomically(dir, |tmp| {
        cm_io::write_atomically(
            &tmp.join("config.json"),
            &serde_json::to_vec_pretty(&json).expect("json"),
        )?;
        cm_io::write_tensors(
            tmp.join("diffusion_pytorch_model.safetensors"),
            &tensors,
            &Default::default(),
        )
    })?;
    Ok(())
}

/// The validation grid: rows are the validation prompts, columns the teacher (DDIM 50 and 4 steps
/// with CFG) and the student (1, 2 and 4 steps; a multi-boundary student with its K steps). Every
/// cell of a row starts from the same noise.
struct Validation<'a, B: Backend> {
    sd: &'a StableDiffusion<B>,
    scheduler: SchedulerConfig,
    prompts: Vec<String>,
    seed: u64,
    size: usize,
    teacher_guidance: f32,
    student_columns: Vec<(SamplerKind, usize)>,
    /// The boundaries a multi-boundary student trained with (its sampling visits them).
    boundaries: Option<Vec<usize>>,
    /// Threads of each sampling call's UNet batch (the run's peers per device).
    threads: usize,
    teacher_cells: Option<Vec<image::RgbImage>>,
    out: PathBuf,
    /// The prompts' labels when every prompt is a captioned-shapes caption.
    labels: Option<Vec<cm_data::synthetic::ShapeLabel>>,
    /// The last grid's columns read by the judge.
    judged: Vec<(String, f64)>,
}

impl<'a, B: Backend> Validation<'a, B> {
    fn new(
        config: &RunConfig,
        sd: &'a StableDiffusion<B>,
        scheduler: &SchedulerConfig,
        resolution: u32,
        out: PathBuf,
        threads: usize,
    ) -> Result<Self> {
        let teacher_guidance = match config.consistency.guidance {
            GuidanceDraw::Fixed(w) => w,
            GuidanceDraw::Uniform { min, max } => 0.5 * (min + max),
        };
        let trained = boundary_set(config, scheduler.num_train_timesteps)?;
        let segments = trained.boundaries().len();
        let student_columns = match config.method {
            Method::Multiboundary => vec![(
                SamplerKind::MultiBoundary {
                    boundaries: segments,
                },
                segments,
            )],
            _ => vec![
                (SamplerKind::Lcm, 1),
                (SamplerKind::Lcm, 2),
                (SamplerKind::Lcm, 4),
            ],
        };
        Ok(Self {
            sd,
            scheduler: scheduler.clone(),
            prompts: config.output.validation_prompts.clone(),
            seed: config.output.validation_seed,
            size: resolution as usize,
            teacher_guidance: if config.method == Method::Ct {
                1.0
            } else {
                teacher_guidance
            },
            student_columns,
            boundaries: (config.method == Method::Multiboundary)
                .then(|| trained.boundaries().to_vec()),
            threads,
            teacher_cells: None,
            out,
            labels: config
                .output
                .validation_prompts
                .iter()
                .map(|p| cm_data::synthetic::ShapeLabel::parse(p))
                .collect(),
            judged: Vec::new(),
        })
    }

    fn cells(
        &self,
        unet: &UNet2DConditionModel<B>,
        sampler: SamplerKind,
        steps: usize,
        guidance: f32,
    ) -> Result<Vec<image::RgbImage>> {
        let device = self.sd.unet.conv_in.base.weight.val().device();
        let mut cells = Vec::with_capacity(self.prompts.len());
        for (i, prompt) in self.prompts.iter().enumerate() {
            let options = SampleOptions {
                sampler,
                steps,
                guidance_scale: guidance,
                height: self.size,
                width: self.size,
                images_per_prompt: 1,
                threads: self.threads,
                boundaries: match sampler {
                    SamplerKind::MultiBoundary { .. } => self.boundaries.clone(),
                    _ => None,
                },
                ..Default::default()
            };
            let mut noise = HostNoise::new(crate::draws::stream_seed(self.seed, &[i as u64]));
            let out = sample_with_unet(
                self.sd,
                unet,
                &self.scheduler,
                &[prompt],
                &[],
                &options,
                None,
                &mut noise,
                &mut |_| {},
                &device,
            )
            .map_err(|e| TrainError::Invalid(format!("validation sampling: {e}")))?;
            cells.extend(cm_io::images::to_rgb8(out.images)?);
        }
        Ok(cells)
    }
}

impl<A: AutodiffBackend> SessionHooks<A, SdUnet<A>> for Validation<'_, A::InnerBackend> {
    fn validate(&mut self, step: u64, model: &SdUnet<A::InnerBackend>) -> Result<()> {
        if self.prompts.is_empty() {
            return Ok(());
        }
        if self.teacher_cells.is_none() {
            let mut ddim = self.scheduler.clone();
            ddim.timestep_spacing = cm_schedulers::config::TimestepSpacing::Trailing;
            let saved = std::mem::replace(&mut self.scheduler, ddim);
            let fifty = self.cells(&self.sd.unet, SamplerKind::Ddim, 50, self.teacher_guidance)?;
            let four = self.cells(&self.sd.unet, SamplerKind::Ddim, 4, self.teacher_guidance)?;
            self.scheduler = saved;
            self.teacher_cells = Some(fifty.into_iter().chain(four).collect());
        }
        let student_guidance = if model.unet.time_cond_proj_dim > 0 {
            self.teacher_guidance
        } else {
            1.0
        };
        let mut columns: Vec<Vec<image::RgbImage>> = Vec::new();
        let teacher = self.teacher_cells.as_ref().expect("computed above");
        let n = self.prompts.len();
        columns.push(teacher[..n].to_vec());
        columns.push(teacher[n..].to_vec());
        let w = self.teacher_guidance;
        let mut names = vec![
            format!("teacher DDIM 50, w {w}"),
            format!("teacher DDIM 4, w {w}"),
        ];
        for &(sampler, steps) in &self.student_columns.clone() {
            columns.push(self.cells(&model.unet, sampler, steps, student_guidance)?);
            let kind = match sampler {
                SamplerKind::MultiBoundary { .. } => "multi-boundary",
                _ => "LCM",
            };
            names.push(format!(
                "student, {steps} {kind} step{}",
                if steps == 1 { "" } else { "s" }
            ));
        }
        if let Some(labels) = &self.labels {
            self.judged = names
                .into_iter()
                .zip(&columns)
                .map(|(name, images)| (name, cm_data::judge::Accuracy::of(images, labels).all))
                .collect();
        }
        // Row-major: prompt by prompt, one column per method.
        let ordered: Vec<image::RgbImage> = (0..n)
            .flat_map(|row| columns.iter().map(move |c| c[row].clone()))
            .collect();
        let grid = cm_io::images::grid(&ordered, columns.len());
        let samples = self.out.join("samples");
        std::fs::create_dir_all(&samples).map_err(|e| cm_io::IoError::write(&samples, e))?;
        cm_io::images::save_rgb(&grid, samples.join(format!("step-{step:08}.png")))?;
        cm_io::images::save_rgb(&grid, self.out.join("comparison.png"))?;
        Ok(())
    }
}

fn print_summary(config: &RunConfig, outcome: &RunOutcome) {
    let records = &outcome.records;
    let tail = records.len().clamp(1, 20);
    let last_loss = records.iter().rev().take(tail).map(|r| r.loss).sum::<f64>() / tail as f64;
    let first_loss = records.iter().take(tail).map(|r| r.loss).sum::<f64>() / tail as f64;
    let step_time = records.iter().map(|r| r.seconds).sum::<f64>() / records.len().max(1) as f64;
    println!("\n| {} run | |\n|---|---|", config.method.name());
    println!("| steps this process | {} |", records.len());
    println!("| loss (first / last {tail} steps) | {first_loss:.5} / {last_loss:.5} |");
    println!("| time per step | {step_time:.3} s |");
    println!(
        "| wall time | {} |",
        crate::metrics::format_duration(outcome.seconds)
    );
    if let Some(lora) = &outcome.lora {
        println!("| LoRA | {} |", lora.display());
    }
    if let Some(unet) = &outcome.unet {
        println!("| UNet | {} |", unet.display());
    }
    println!(
        "| comparison grid | {} (columns: teacher DDIM 50, teacher DDIM 4, student) |",
        outcome.comparison.display()
    );
    for (name, all) in &outcome.judged {
        println!(
            "| judge on the grid: {name} | {:.0}% fully right |",
            100.0 * all
        );
    }
}
