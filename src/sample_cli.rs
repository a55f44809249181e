//! The `sample` command: text-to-image from a diffusers Stable Diffusion folder with any of our
//! samplers, optionally a LoRA (merged) or a trained UNet folder in place of the pipeline's.
//!
//! Everything that does not need the weights is checked first (flags, output paths, scheduler
//! config, image size against the memory the machine has), so a mistake costs no model load; the
//! final latents are checked for NaN / Inf before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::backend::Backend as _;
use burn::tensor::{DType, Tensor};
use clap::Parser;
use cm_io::images::{format_for, save_images};
use cm_io::{read_tensors, write_tensors};
use cm_models::config_json::JsonConfig;
use cm_models::lora_file;
use cm_models::pipeline::{PipelineLoadOptions, StableDiffusion};
use cm_models::unet::{UNet2DConditionModel, UNetConfig};
use cm_models::vae::VaeConfig;
use cm_models::{Component, WeightVariant};
use cm_schedulers::config::SchedulerConfig;
use cm_train::memory::{available_bytes, human, sampling_peak_bytes};
use cm_train::sampling::{sample, HostNoise, SampleOptions, SamplerKind, StepProgress};

use crate::backend::{self, Backend};

/// Text-to-image sampling (teacher DDIM, LCM multistep, deterministic multi-boundary).
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
pub struct SampleArgs {
    /// A diffusers Stable Diffusion folder (default: assets/demo-teacher).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// A diffusers `unet/` folder used in place of the pipeline's UNet (a whole-UNet student).
    #[arg(long, value_name = "DIR")]
    pub unet: Option<PathBuf>,
    /// The prompt (the default is a caption of the demo teacher's grammar; SD1.5 draws it too).
    #[arg(long, default_value = "a large red circle in the center")]
    pub prompt: String,
    /// The negative prompt (the unconditional branch of guidance).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// ddim (teacher), lcm (multistep consistency sampling) or multiboundary (deterministic).
    #[arg(long, default_value = "ddim", value_parser = ["ddim", "lcm", "multiboundary"])]
    pub scheduler: String,
    /// Sampling steps (multiboundary: one per segment, see --boundaries).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub steps: u32,
    /// Guidance scale w (1 = none; a student with a guidance embedding gets w as input).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f32,
    /// Segments K of a multi-boundary student (evenly spaced on the 50-step grid).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub boundaries: u32,
    /// A multi-boundary student's own boundaries, when it trained with others than K evenly
    /// spaced (`consistency.boundaries`, or another `solver_steps`): e.g. 0,199,499,799
    /// (overrides --boundaries; its run's config.toml names them).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        conflicts_with = "boundaries"
    )]
    pub boundary_list: Option<Vec<usize>>,
    /// Seed of the initial (and LCM's fresh) noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per prompt.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub batch: u32,
    /// Threads each UNet call's batch (with CFG, `[uncond; cond]`) is split over (default: 2 on a
    /// multi-core CPU, 1 on a GPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: Option<u32>,
    /// Image height in pixels (default: the UNet's sample_size times the VAE factor).
    #[arg(long, value_name = "PX")]
    pub height: Option<u64>,
    /// Image width in pixels.
    #[arg(long, value_name = "PX")]
    pub width: Option<u64>,
    /// A UNet LoRA file (peft / diffusers or kohya keys), checked then merged.
    #[arg(long, value_name = "FILE")]
    pub lora: Option<PathBuf>,
    /// Output image (.png or .jpg); a grid when --batch > 1.
    #[arg(long, default_value = "out.png", value_name = "FILE")]
    pub out: PathBuf,
    /// Initial noise from a safetensors file (key `latents`).
    #[arg(long, value_name = "FILE")]
    pub init_latents: Option<PathBuf>,
    /// Also write the final `latents` and decoded `images` ([0, 1]) to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub save_tensors: Option<PathBuf>,
}

/// Whether every value is finite (one device read; backend-independent: CUDA's booleans are u8).
fn all_finite(x: Tensor<Backend, 4>) -> bool {
    use burn::tensor::ElementConversion;
    x.is_finite()
        .bool_not()
        .int()
        .sum()
        .into_scalar()
        .elem::<i64>()
        == 0
}

fn check_output(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("{flag} {} is a directory; give a file name", path.display());
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

fn check_input(path: &Path, flag: &str) -> anyhow::Result<()> {
    if !path.exists() {
        bail!("{flag} {} does not exist", path.display());
    }
    Ok(())
}

impl SampleArgs {
    /// The sampler the flags ask for.
    pub fn sampler(&self) -> SamplerKind {
        match self.scheduler.as_str() {
            "lcm" => SamplerKind::Lcm,
            "multiboundary" => SamplerKind::MultiBoundary {
                boundaries: self
                    .boundary_list
                    .as_ref()
                    .map_or(self.boundaries as usize, Vec::len),
            },
            _ => SamplerKind::Ddim,
        }
    }

    /// Checks everything that needs no weights; returns the image size and the scheduler config.
    pub fn preflight(&self, model: &Path) -> anyhow::Result<(usize, usize, SchedulerConfig)> {
        if !(self.guidance.is_finite() && (0.0..=100.0).contains(&self.guidance)) {
            bail!(
                "--guidance {:e} is not a guidance scale in [0, 100]",
                self.guidance
            );
        }
        format_for(&self.out)?;
        check_output(&self.out, "--out")?;
        if let Some(p) = &self.save_tensors {
            check_output(p, "--save-tensors")?;
        }
        for (p, flag) in [
            (&self.lora, "--lora"),
            (&self.init_latents, "--init-latents"),
            (&self.unet, "--unet"),
        ] {
            if let Some(p) = p {
                check_input(p, flag)?;
            }
        }
        let sampler = self.sampler();
        let scheduler_path = model.join("scheduler/scheduler_config.json");
        let scheduler =
            SchedulerConfig::from_json_file_as(&scheduler_path, sampler.scheduler_class())?;
        if let SamplerKind::MultiBoundary { boundaries } = sampler {
            use cm_schedulers::boundaries::BoundarySet;
            let t = scheduler.num_train_timesteps;
            match &self.boundary_list {
                Some(list) => BoundarySet::explicit(list, t)
                    .map_err(|e| anyhow::anyhow!("--boundary-list {list:?}: {e}"))?,
                None => BoundarySet::evenly_spaced(boundaries, t, 50)
                    .map_err(|e| anyhow::anyhow!("--boundaries {boundaries}: {e}"))?,
            };
        }
        let unet_dir = self.unet.clone().unwrap_or_else(|| model.join("unet"));
        let unet = UNetConfig::from_json_file(unet_dir.join("config.json"))?;
        let vae = VaeConfig::from_json_file(model.join("vae/config.json"))?;
        let f = vae.downsampling_factor();
        let native = (unet.sample_size.unwrap_or(64) * f) as u64;
        let (h, w) = (self.height.unwrap_or(native), self.width.unwrap_or(native));
        for (flag, v) in [("--height", h), ("--width", w)] {
            if v == 0 || v % f as u64 != 0 || v > 1 << 20 {
                bail!("{flag} {v}: must be a positive multiple of the VAE's down-sampling factor {f} (at most 2^20)");
            }
        }
        let guided = self.guidance != 1.0 && unet.time_cond_proj_dim.is_none();
        let need = sampling_peak_bytes(
            &unet,
            &vae,
            self.batch as usize,
            h as usize,
            w as usize,
            guided,
        );
        if let (Some(available), false) = (available_bytes(), cfg!(feature = "cuda")) {
            match need {
                Some(n) if n <= available => {}
                other => bail!(
                    "{}x{} px with --batch {} needs about {} but the machine has {} available: lower --height / --width / --batch",
                    h,
                    w,
                    self.batch,
                    other.map_or("more than 2^64 bytes".into(), human),
                    human(available)
                ),
            }
        }
        Ok((h as usize, w as usize, scheduler))
    }
}

/// Parses the flags and samples (the body of the `sample` example).
pub fn sample_main() -> anyhow::Result<()> {
    sample_with(&SampleArgs::parse())
}

/// Samples with parsed flags: the checks that need no weights first, then the work.
pub fn sample_with(args: &SampleArgs) -> anyhow::Result<()> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(crate::cli::default_teacher);
    let (height, width, scheduler) = args.preflight(&model)?;
    backend::guard_device(|| run(args, &model, height, width, &scheduler))
}

fn run(
    args: &SampleArgs,
    model: &Path,
    height: usize,
    width: usize,
    scheduler: &SchedulerConfig,
) -> anyhow::Result<()> {
    let device = backend::device();
    Backend::seed(&device, args.seed);
    println!("backend: {}", backend::describe());
    let start = Instant::now();
    let mut sd = StableDiffusion::<Backend>::load(model, PipelineLoadOptions::default(), &device)
        .with_context(|| format!("loading the pipeline folder {}", model.display()))?;
    for report in &sd.reports {
        println!("  {report}");
    }
    if let Some(dir) = &args.unet {
        let (unet, config, report) = UNet2DConditionModel::<Backend>::from_folder(
            dir,
            WeightVariant::Auto,
            DType::F32,
            &device,
        )?;
        if config.cross_attention_dim != sd.unet_config.cross_attention_dim
            || config.in_channels != sd.unet_config.in_channels
        {
            bail!(
                "--unet {}: cross_attention_dim / in_channels do not match the pipeline's UNet",
                dir.display()
            );
        }
        println!("  UNet from {}: {report}", dir.display());
        sd.unet = unet;
        sd.unet_config = config;
    }
    if let Some(path) = &args.lora {
        let report = lora_file::load_into(&mut sd.unet, path, "lora")?;
        cm_lora::merge(&mut sd.unet, "lora")?;
        println!(
            "  LoRA {}: {} layers, {} parameters, merged",
            path.display(),
            report.layers,
            report.params
        );
    }
    println!(
        "loaded {} in {:.1} s",
        model.display(),
        start.elapsed().as_secs_f64()
    );
    if let Some(cut) = sd.tokenizer.truncated_part(&args.prompt)? {
        println!(
            "warning: the prompt is longer than {} tokens; this part is ignored: {cut:?}",
            sd.tokenizer.max_length() - 2
        );
    }
    let options = SampleOptions {
        sampler: args.sampler(),
        steps: args.steps as usize,
        guidance_scale: args.guidance,
        height,
        width,
        images_per_prompt: args.batch as usize,
        threads: args
            .threads
            .map_or_else(crate::backend::inference_threads, |n| n as usize),
        boundaries: args.boundary_list.clone(),
        ..Default::default()
    };
    let init = match &args.init_latents {
        None => None,
        Some(path) => {
            let tensors = read_tensors(path)?;
            let data = tensors
                .get("latents")
                .or_else(|| {
                    (tensors.len() == 1)
                        .then(|| tensors.values().next())
                        .flatten()
                })
                .with_context(|| {
                    format!("{}: expected a tensor named `latents`", path.display())
                })?;
            if data.shape.num_dims() != 4 || !data.dtype.is_float() {
                bail!(
                    "{}: `latents` is {:?} {:?}; expected float [batch, 4, h, w]",
                    path.display(),
                    data.dtype,
                    data.shape.to_vec()
                );
            }
            let latents = Tensor::<Backend, 4>::from_data(data.clone().convert::<f32>(), &device);
            if !all_finite(latents.clone()) {
                bail!("{}: `latents` holds NaN or Inf values", path.display());
            }
            Some(latents)
        }
    };
    let start = Instant::now();
    let mut report = |p: StepProgress| {
        let elapsed = start.elapsed().as_secs_f64();
        let eta = elapsed / p.step as f64 * (p.total - p.step) as f64;
        println!(
            "  step {}/{} (t = {}): {:.2} it/s, ETA {:.1} s",
            p.step,
            p.total,
            p.timestep,
            p.step as f64 / elapsed,
            eta
        );
    };
    let negative: Vec<&str> = if args.negative_prompt.is_empty() {
        vec![]
    } else {
        vec![args.negative_prompt.as_str()]
    };
    let out = sample(
        &sd,
        scheduler,
        &[args.prompt.as_str()],
        &negative,
        &options,
        init,
        &mut HostNoise::new(args.seed),
        &mut report,
        &device,
    )?;
    if !all_finite(out.latents.clone()) {
        bail!(
            "the final latents hold NaN or Inf: check the weights ({}{}), the initial latents, the guidance scale ({}) and the scheduler config's betas",
            model.display(),
            args.lora.as_ref().map(|l| format!(", LoRA {}", l.display())).unwrap_or_default(),
            args.guidance
        );
    }
    println!(
        "sampled {} image(s) in {:.1} s",
        args.batch,
        start.elapsed().as_secs_f64()
    );
    save_images(out.images.clone(), &args.out)?;
    println!("wrote {}", args.out.display());
    if let Some(path) = &args.save_tensors {
        let mut tensors = BTreeMap::new();
        tensors.insert("latents".to_string(), out.latents.into_data());
        tensors.insert("images".to_string(), out.images.into_data());
        let mut metadata = BTreeMap::new();
        metadata.insert("prompt".to_string(), args.prompt.clone());
        metadata.insert("scheduler".to_string(), args.scheduler.clone());
        metadata.insert("steps".to_string(), args.steps.to_string());
        metadata.insert("guidance".to_string(), args.guidance.to_string());
        metadata.insert("timesteps".to_string(), format!("{:?}", out.timesteps));
        write_tensors(path, &tensors, &metadata)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
