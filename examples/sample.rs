//! Text-to-image sampling from a diffusers Stable Diffusion folder (thin: parses arguments and
//! calls `cm_train::sampling`).
//!
//! ```text
//! cargo run --release --example sample -- [--model DIR] --prompt "..." [--negative-prompt "..."]
//!     [--scheduler ddim|lcm|multiboundary] [--steps N] [--guidance W] [--boundaries K] [--seed S]
//!     [--batch N] [--height H --width W] [--lora FILE] [--out out.png]
//!     [--init-latents FILE] [--save-tensors FILE]
//! ```
//! Without `--model` it uses the tiny fixture pipeline (`tests/fixtures/tiny-sd`) until the
//! embedded demo pipeline lands. `--lora` applies a UNet LoRA file (peft / diffusers or kohya keys,
//! fp16 or fp32), checked against the UNet before anything changes, then merged. `--init-latents`
//! reads the initial noise (key `latents`) from a safetensors file; `--save-tensors` writes the
//! final `latents` and decoded `images` ([0, 1]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::backend::Backend as _;
use burn::tensor::Tensor;
use consistency_models::backend::{self, Backend};
use consistency_models::io::images::save_images;
use consistency_models::io::{read_tensors, write_tensors};
use consistency_models::lora as cm_lora;
use consistency_models::models::lora_file;
use consistency_models::models::pipeline::{PipelineLoadOptions, StableDiffusion};
use consistency_models::schedulers::config::SchedulerConfig;
use consistency_models::train::sampling::{
    sample, SampleOptions, SamplerKind, SeededNoise, StepProgress,
};

#[derive(Debug)]
struct Args {
    model: PathBuf,
    prompt: String,
    negative_prompt: String,
    scheduler: String,
    steps: usize,
    guidance: f32,
    boundaries: usize,
    seed: u64,
    batch: usize,
    height: Option<usize>,
    width: Option<usize>,
    lora: Option<PathBuf>,
    out: PathBuf,
    init_latents: Option<PathBuf>,
    save_tensors: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd"),
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: String::new(),
        scheduler: "ddim".into(),
        steps: 4,
        guidance: 7.5,
        boundaries: 4,
        seed: 0,
        batch: 1,
        height: None,
        width: None,
        lora: None,
        out: PathBuf::from("out.png"),
        init_latents: None,
        save_tensors: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "{}",
                include_str!("sample.rs")
                    .lines()
                    .take(15)
                    .map(|l| l.trim_start_matches("//!"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::process::exit(0);
        }
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        let number = |v: String, what: &str| -> anyhow::Result<usize> {
            v.parse()
                .with_context(|| format!("{flag} expects {what}, got {v:?}"))
        };
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--prompt" => args.prompt = value()?,
            "--negative-prompt" => args.negative_prompt = value()?,
            "--scheduler" => args.scheduler = value()?,
            "--steps" => args.steps = number(value()?, "a positive integer")?,
            "--guidance" => {
                let v = value()?;
                args.guidance = v
                    .parse()
                    .with_context(|| format!("--guidance expects a number, got {v:?}"))?
            }
            "--boundaries" => args.boundaries = number(value()?, "a positive integer")?,
            "--seed" => args.seed = number(value()?, "an integer")? as u64,
            "--batch" => args.batch = number(value()?, "a positive integer")?,
            "--height" => args.height = Some(number(value()?, "pixels")?),
            "--width" => args.width = Some(number(value()?, "pixels")?),
            "--lora" => args.lora = Some(value()?.into()),
            "--out" => args.out = value()?.into(),
            "--init-latents" => args.init_latents = Some(value()?.into()),
            "--save-tensors" => args.save_tensors = Some(value()?.into()),
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut sampler: SamplerKind = args.scheduler.parse()?;
    if let SamplerKind::MultiBoundary { boundaries } = &mut sampler {
        *boundaries = args.boundaries;
    }
    backend::guard_device(|| run(&args, sampler))
}

fn run(args: &Args, sampler: SamplerKind) -> anyhow::Result<()> {
    let device = backend::device();
    Backend::seed(&device, args.seed);
    println!("backend: {}", backend::describe());
    let start = Instant::now();
    let mut sd =
        StableDiffusion::<Backend>::load(&args.model, PipelineLoadOptions::default(), &device)
            .with_context(|| format!("loading the pipeline folder {}", args.model.display()))?;
    for report in &sd.reports {
        println!("  {report}");
    }
    if let Some(path) = &args.lora {
        // Every key and shape is checked before the UNet changes; then the adapter is merged so
        // that sampling costs what the base model costs.
        let report = lora_file::load_into(&mut sd.unet, path, "lora")?;
        cm_lora::merge(&mut sd.unet, "lora")?;
        println!(
            "  LoRA {}: {} layers, {} parameters, merged into the UNet",
            path.display(),
            report.layers,
            report.params
        );
    }
    println!(
        "loaded {} in {:.1} s",
        args.model.display(),
        start.elapsed().as_secs_f64()
    );

    let scheduler_config = SchedulerConfig::from_json_value_as(
        &sd.scheduler_config,
        &sd.scheduler_config_path(),
        Some(sampler.scheduler_class()),
    )?;
    let default_size = sd.unet_config.sample_size.unwrap_or(64) * sd.vae_scale_factor();
    let options = SampleOptions {
        sampler,
        steps: args.steps,
        guidance_scale: args.guidance,
        height: args.height.unwrap_or(default_size),
        width: args.width.unwrap_or(default_size),
        images_per_prompt: args.batch,
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
            if data.shape.num_dims() != 4 {
                bail!(
                    "{}: `latents` has shape {:?}; expected [batch, 4, h, w]",
                    path.display(),
                    data.shape.to_vec()
                );
            }
            Some(Tensor::<Backend, 4>::from_data(
                data.clone().convert::<f32>(),
                &device,
            ))
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
        &scheduler_config,
        &[args.prompt.as_str()],
        &negative,
        &options,
        init,
        &mut SeededNoise,
        &mut report,
        &device,
    )?;
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
