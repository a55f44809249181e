//! Text-to-image sampling on a loaded Stable Diffusion pipeline with DDIM (teacher), LCM
//! (multistep consistency) or deterministic multi-boundary sampling, with classifier-free guidance.
//!
//! Follows diffusers' `StableDiffusionPipeline.__call__`: encode prompts (negative first in the
//! CFG batch), start from `init_latents` (or noise), run the scheduler loop, decode with the VAE to
//! [0, 1]. CFG runs cond and uncond in ONE UNet call and is skipped entirely when `w == 1`. A UNet
//! with `time_cond_proj_dim` (an LCM-style student) gets the guidance as an embedding of `w - 1`
//! instead of CFG, as diffusers' `LatentConsistencyModelPipeline` does.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use cm_models::pipeline::StableDiffusion;
use cm_models::unet::UNet2DConditionModel;
use cm_models::ModelError;
use cm_schedulers::boundaries::BoundarySet;
use cm_schedulers::config::{SchedulerClass, SchedulerConfig};
use cm_schedulers::consistency::{ConsistencyParameterisation, DdimToBoundary};
use cm_schedulers::ddim::DdimScheduler;
use cm_schedulers::guidance::guidance_scale_embedding;
use cm_schedulers::lcm::LcmScheduler;
use cm_schedulers::schedule::NoiseSchedule;
use cm_schedulers::SchedulerError;

/// Errors of sampling.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// From the models.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// From the schedulers.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// A bad option.
    #[error("{0}")]
    InvalidOption(String),
}

/// Which sampler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// DDIM, eta 0, with the scheduler config's spacing.
    Ddim,
    /// LCM multistep consistency sampling (fresh noise between steps).
    Lcm,
    /// Deterministic multi-boundary sampling: `boundaries` segments, one DDIM-to-boundary step each.
    MultiBoundary {
        /// Number of segments K.
        boundaries: usize,
    },
}

impl SamplerKind {
    /// The diffusers scheduler class this sampler runs as: keys a `scheduler_config.json` omits
    /// take that class's defaults (diffusers' `Class.from_config`).
    pub fn scheduler_class(self) -> SchedulerClass {
        match self {
            Self::Ddim | Self::MultiBoundary { .. } => SchedulerClass::Ddim,
            Self::Lcm => SchedulerClass::Lcm,
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = SampleError;
    fn from_str(s: &str) -> Result<Self, SampleError> {
        match s {
            "ddim" => Ok(Self::Ddim),
            "lcm" => Ok(Self::Lcm),
            "multiboundary" => Ok(Self::MultiBoundary { boundaries: 4 }),
            other => Err(SampleError::InvalidOption(format!(
                "unknown scheduler `{other}`: expected ddim, lcm or multiboundary"
            ))),
        }
    }
}

/// Sampling options.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Sampler.
    pub sampler: SamplerKind,
    /// Number of steps (ignored by multi-boundary sampling: one per segment).
    pub steps: usize,
    /// Guidance scale `w` (1 = no guidance).
    pub guidance_scale: f32,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Images per prompt.
    pub images_per_prompt: usize,
    /// Width of the guidance embedding for `time_cond_proj_dim` students.
    pub guidance_embedding_dim: usize,
    /// Threads each UNet call's batch (with CFG, `[uncond; cond]`) is split over
    /// ([`UNet2DConditionModel::forward_split`]): 2 fills a second CPU core, 1 on a GPU.
    pub threads: usize,
    /// Multi-boundary sampling: the student's own boundaries (`0` first, increasing; K entries
    /// for [`SamplerKind::MultiBoundary`]'s K) instead of K evenly spaced on the 50-step grid.
    /// A student trained with other boundaries (`consistency.boundaries`, or another
    /// `solver_steps` grid) must be sampled with them.
    pub boundaries: Option<Vec<usize>>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            steps: 4,
            guidance_scale: 7.5,
            height: 512,
            width: 512,
            images_per_prompt: 1,
            guidance_embedding_dim: 256,
            threads: 1,
            boundaries: None,
        }
    }
}

/// What a sampling run returns.
#[derive(Debug, Clone)]
pub struct SampleOutput<B: Backend> {
    /// Final UNet-space latents `[batch, 4, h, w]`.
    pub latents: Tensor<B, 4>,
    /// Decoded images `[batch, 3, H, W]` in [0, 1].
    pub images: Tensor<B, 4>,
    /// The timesteps the model was evaluated at.
    pub timesteps: Vec<usize>,
}

/// Where fresh noise comes from (initial latents if none are given, and LCM re-noising).
pub trait NoiseSource<B: Backend> {
    /// A standard-normal tensor of `shape`.
    fn noise(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4>;
}

/// Noise from the backend RNG, seeded once (`B::seed`).
pub struct SeededNoise;

impl<B: Backend> NoiseSource<B> for SeededNoise {
    fn noise(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }
}

/// Noise drawn on the host from a seeded generator (the same on every backend): call `k` of the
/// source gets the stream `(seed, k)`.
pub struct HostNoise {
    /// The seed.
    pub seed: u64,
    /// Calls so far.
    pub calls: u64,
}

impl HostNoise {
    /// A source starting at call 0.
    pub fn new(seed: u64) -> Self {
        Self { seed, calls: 0 }
    }
}

impl<B: Backend> NoiseSource<B> for HostNoise {
    fn noise(&mut self, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
        let mut rng = crate::draws::generator(self.seed, &[self.calls, 7]);
        self.calls += 1;
        let values = crate::draws::normals(&mut rng, shape.iter().product());
        Tensor::from_data(burn::tensor::TensorData::new(values, shape), device)
    }
}

/// Noise replayed from a list (to reproduce another implementation's run exactly).
pub struct ReplayNoise<B: Backend> {
    /// Tensors handed out in order.
    pub queue: std::collections::VecDeque<Tensor<B, 4>>,
}

impl<B: Backend> NoiseSource<B> for ReplayNoise<B> {
    fn noise(&mut self, shape: [usize; 4], _device: &B::Device) -> Tensor<B, 4> {
        let next = self.queue.pop_front().expect("replay noise exhausted");
        assert_eq!(next.dims(), shape, "replayed noise has the wrong shape");
        next
    }
}

/// Progress report of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepProgress {
    /// 1-based step number.
    pub step: usize,
    /// Total steps.
    pub total: usize,
    /// The timestep just evaluated.
    pub timestep: usize,
}

struct Denoiser<'a, B: Backend> {
    unet: &'a UNet2DConditionModel<B>,
    threads: usize,
    cond: Tensor<B, 3>,
    uncond: Option<Tensor<B, 3>>,
    guidance: f32,
    timestep_cond: Option<Tensor<B, 2>>,
}

impl<B: Backend> Denoiser<'_, B> {
    /// The (guided) model output at `t`.
    fn predict(&self, latents: Tensor<B, 4>, t: usize) -> Result<Tensor<B, 4>, SampleError> {
        let batch = latents.dims()[0];
        match &self.uncond {
            None => {
                let ts = vec![t as f32; batch];
                Ok(cm_models::nn::cast(
                    self.unet.forward_split(
                        self.threads,
                        latents,
                        &ts,
                        self.cond.clone(),
                        self.timestep_cond.clone(),
                    )?,
                    burn::tensor::DType::F32,
                ))
            }
            Some(uncond) => {
                // One UNet call on [uncond; cond], as diffusers batches them.
                let input = Tensor::cat(vec![latents.clone(), latents], 0);
                let context = Tensor::cat(vec![uncond.clone(), self.cond.clone()], 0);
                let ts = vec![t as f32; 2 * batch];
                let out = cm_models::nn::cast(
                    self.unet
                        .forward_split(self.threads, input, &ts, context, None)?,
                    burn::tensor::DType::F32,
                );
                let [u, c] = out.chunk(2, 0).try_into().expect("two halves");
                Ok(u.clone() + (c - u) * self.guidance)
            }
        }
    }
}

/// Runs text-to-image sampling. `init_latents` (`[batch, 4, H/f, W/f]`) replaces the initial noise.
#[allow(clippy::too_many_arguments)]
pub fn sample<B: Backend>(
    sd: &StableDiffusion<B>,
    scheduler_config: &SchedulerConfig,
    prompts: &[&str],
    negative_prompts: &[&str],
    options: &SampleOptions,
    init_latents: Option<Tensor<B, 4>>,
    noise: &mut dyn NoiseSource<B>,
    progress: &mut dyn FnMut(StepProgress),
    device: &B::Device,
) -> Result<SampleOutput<B>, SampleError> {
    sample_with_unet(
        sd,
        &sd.unet,
        scheduler_config,
        prompts,
        negative_prompts,
        options,
        init_latents,
        noise,
        progress,
        device,
    )
}

/// [`sample`] with another UNet than the pipeline's (a student being trained, a distilled UNet):
/// the pipeline provides the tokenizer, text encoder and VAE.
#[allow(clippy::too_many_arguments)]
pub fn sample_with_unet<B: Backend>(
    sd: &StableDiffusion<B>,
    unet: &UNet2DConditionModel<B>,
    scheduler_config: &SchedulerConfig,
    prompts: &[&str],
    negative_prompts: &[&str],
    options: &SampleOptions,
    init_latents: Option<Tensor<B, 4>>,
    noise: &mut dyn NoiseSource<B>,
    progress: &mut dyn FnMut(StepProgress),
    device: &B::Device,
) -> Result<SampleOutput<B>, SampleError> {
    // 0. Check the options.
    let f = sd.vae_scale_factor();
    if options.height == 0
        || options.width == 0
        || !options.height.is_multiple_of(f)
        || !options.width.is_multiple_of(f)
    {
        return Err(SampleError::InvalidOption(format!(
            "height and width must be positive multiples of the VAE down-sampling factor {f}; got {}x{}",
            options.height, options.width
        )));
    }
    if prompts.is_empty() || options.images_per_prompt == 0 {
        return Err(SampleError::InvalidOption(
            "nothing to sample: no prompt or 0 images per prompt".into(),
        ));
    }
    if !(options.guidance_scale.is_finite() && options.guidance_scale >= 0.0) {
        return Err(SampleError::InvalidOption(format!(
            "guidance scale must be a finite number >= 0, got {}",
            options.guidance_scale
        )));
    }
    let repeat = |items: &[&str]| -> Vec<String> {
        items
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.to_string(), options.images_per_prompt))
            .collect()
    };
    let prompts = repeat(prompts);
    let negative = repeat(negative_prompts);
    let batch = prompts.len();
    let shape = [
        batch,
        sd.unet_config.in_channels,
        options.height / f,
        options.width / f,
    ];

    // 1. Prompt embeddings; CFG only when w != 1 and the UNet has no guidance embedding.
    let has_guidance_embedding = unet.time_cond_proj_dim > 0;
    let use_cfg = options.guidance_scale != 1.0 && !has_guidance_embedding;
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let negative_refs: Vec<&str> = negative.iter().map(String::as_str).collect();
    let (cond, uncond) = if use_cfg {
        let (c, u) = sd.encode_prompts_with_negative(&prompt_refs, &negative_refs, device)?;
        (c, Some(u))
    } else {
        (sd.encode_prompts(&prompt_refs, device)?, None)
    };
    let timestep_cond = has_guidance_embedding.then(|| {
        let w = vec![options.guidance_scale - 1.0; batch];
        guidance_scale_embedding(&w, unet.time_cond_proj_dim, device)
    });
    let denoiser = Denoiser {
        unet,
        threads: options.threads,
        cond,
        uncond,
        guidance: options.guidance_scale,
        timestep_cond,
    };

    // 2. Initial latents (init_noise_sigma is 1 for all three samplers).
    let mut latents = match init_latents {
        Some(l) if l.dims() != shape => {
            return Err(SampleError::InvalidOption(format!(
                "initial latents have shape {:?}; {}x{} images with batch {batch} need {shape:?}",
                l.dims(),
                options.height,
                options.width
            )))
        }
        Some(l) => l,
        None => noise.noise(shape, device),
    };

    // 3. The scheduler loop.
    let mut visited = Vec::new();
    match options.sampler {
        SamplerKind::Ddim => {
            let mut scheduler = DdimScheduler::new(scheduler_config.clone());
            let timesteps = scheduler.set_timesteps(options.steps)?.to_vec();
            for (i, &t) in timesteps.iter().enumerate() {
                let out = denoiser.predict(latents.clone(), t)?;
                latents = scheduler.step(out, t, latents)?.prev_sample;
                visited.push(t);
                progress(StepProgress {
                    step: i + 1,
                    total: timesteps.len(),
                    timestep: t,
                });
            }
        }
        SamplerKind::Lcm => {
            let mut scheduler = LcmScheduler::new(scheduler_config.clone());
            let timesteps = scheduler.set_timesteps(options.steps)?.to_vec();
            for (i, &t) in timesteps.iter().enumerate() {
                let out = denoiser.predict(latents.clone(), t)?;
                let fresh = (i + 1 < timesteps.len()).then(|| noise.noise(shape, device));
                latents = scheduler.step(out, i, latents, fresh)?.prev_sample;
                visited.push(t);
                progress(StepProgress {
                    step: i + 1,
                    total: timesteps.len(),
                    timestep: t,
                });
            }
        }
        SamplerKind::MultiBoundary { boundaries } => {
            let schedule = NoiseSchedule::new(scheduler_config);
            let set = multiboundary_set(boundaries, options.boundaries.as_deref(), &schedule)?;
            let f_theta = DdimToBoundary {
                prediction_type: scheduler_config.prediction_type,
            };
            let timesteps = set.sampling_timesteps();
            for (i, &t) in timesteps.iter().enumerate() {
                let out = denoiser.predict(latents.clone(), t)?;
                let batch = latents.dims()[0];
                let (ts, bs) = (vec![t; batch], vec![set.boundary_below(t); batch]);
                latents = f_theta.consistency_output(&schedule, out, latents, &ts, &bs)?;
                visited.push(t);
                progress(StepProgress {
                    step: i + 1,
                    total: timesteps.len(),
                    timestep: t,
                });
            }
        }
    }

    // 4. Decode to [0, 1].
    let images = sd.decode_latents(latents.clone());
    Ok(SampleOutput {
        latents,
        images,
        timesteps: visited,
    })
}

/// The boundaries multi-boundary sampling with K = `segments` visits: the explicit list when
/// given (it must hold K entries), else K evenly spaced on the 50-step grid.
fn multiboundary_set(
    segments: usize,
    explicit: Option<&[usize]>,
    schedule: &NoiseSchedule,
) -> Result<BoundarySet, SampleError> {
    let t = schedule.num_train_timesteps();
    match explicit {
        Some(list) if list.len() != segments => Err(SampleError::InvalidOption(format!(
            "multi-boundary sampling with {segments} segments got {} boundaries {list:?}",
            list.len()
        ))),
        Some(list) => Ok(BoundarySet::explicit(list, t)?),
        None => Ok(BoundarySet::evenly_spaced(segments, t, 50)?),
    }
}
