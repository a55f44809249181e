//! One LoRA consistency-distillation step (student fwd + bwd, teacher with CFG, stop-grad target,
//! AdamW) on a UNet of a given config, with and without gradient checkpointing: median time and
//! peak memory (RSS on the CPU), printed as a table. `scripts/bench_train_reference.py` runs the
//! same step with diffusers + peft in the same session.
//!
//! ```text
//! cargo run --release --example bench_train -- [--unet assets/sd15/unet] [--latent 32] [--batch 1]
//!     [--rank 64] [--runs 3]
//! ```
//! Random weights (no file is read), fp32, the 14 LCM-LoRA targets, w = 7.5, pseudo-Huber.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleMapper};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use consistency_models::backend::{self, Backend};
use consistency_models::lora::{inject, LoraConfig, TargetSelector, LCM_LORA_TARGETS};
use consistency_models::models::config_json::JsonConfig;
use consistency_models::models::unet::{UNet2DConditionModel, UNetConfig};
use consistency_models::peak_memory::PeakMemory;
use consistency_models::schedulers::config::{PredictionType, SchedulerConfig};
use consistency_models::train::config::{Method, RunConfig};
use consistency_models::train::draws::{generator, normals};
use consistency_models::train::memory::human;
use consistency_models::train::run::{consistency_step, loop_settings};
use consistency_models::train::sd::SdUnet;
use consistency_models::train::step::StepBatch;
use consistency_models::train::trainer::{BatchSource, Trainer};

/// LoRA CD step benchmark.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// A UNet config.json folder (default: the SD1.5 config).
    #[arg(long, value_name = "DIR")]
    unet: Option<PathBuf>,
    /// Latent side (32 = 256 px images for SD1.5).
    #[arg(long, default_value_t = 32)]
    latent: usize,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// LoRA rank (alpha = rank).
    #[arg(long, default_value_t = 64)]
    rank: usize,
    /// Timed steps per row (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rows to run: `checkpointing`, `plain` or both (default both).
    #[arg(long, value_delimiter = ',', default_values_t = ["checkpointing".to_string(), "plain".to_string()])]
    rows: Vec<String>,
}

/// Random latents and text embeddings.
struct Random {
    latent: [usize; 3],
    width: usize,
}

impl<B: burn::tensor::backend::Backend> BatchSource<B, 3> for Random {
    fn batch(
        &mut self,
        step: u64,
        examples: std::ops::Range<usize>,
        device: &B::Device,
    ) -> consistency_models::train::Result<StepBatch<B, 3>> {
        let n = examples.len();
        let mut rng = generator(step, &[examples.start as u64]);
        let [c, h, w] = self.latent;
        let x0 = normals(&mut rng, n * c * h * w);
        let cond = normals(&mut rng, n * 77 * self.width);
        let uncond = normals(&mut rng, n * 77 * self.width);
        Ok(StepBatch {
            x0: Tensor::from_data(TensorData::new(x0, [n, c, h, w]), device),
            condition: Tensor::from_data(TensorData::new(cond, [n, 77, self.width]), device),
            uncondition: Tensor::from_data(TensorData::new(uncond, [n, 77, self.width]), device),
        })
    }
}

/// Runs every lazy parameter initialiser once (the mapper's defaults read each parameter's value).
struct Materialise;

impl ModuleMapper<Backend> for Materialise {}

fn row<A: AutodiffBackend<InnerBackend = Backend>>(
    args: &Args,
    config: &UNetConfig,
    label: &str,
    memory: &PeakMemory,
) -> anyhow::Result<()> {
    // The autodiff backend's device is its inner backend's (the default device of `backend`).
    let device: A::Device = Default::default();
    A::seed(&device, 0);
    memory.reset::<Backend>(&backend::device());
    // Materialised before the clone: Burn 0.21 initialises parameters lazily, and each clone of a
    // lazy parameter runs the initialiser again on first use, so the student and the teacher
    // would hold two different random copies of every weight (3.4 GiB more for SD1.5; until
    // 2026-12-04 this benchmark's memory column counted that copy). As in a real run, the
    // student's frozen base and the teacher now share one set of weights.
    let base = config
        .init::<Backend>(&backend::device())
        .map(&mut Materialise);
    let mut student = UNet2DConditionModel::<A>::from_inner(base.clone());
    inject(
        &mut student,
        "train",
        &LoraConfig::new(args.rank, args.rank as f64),
        &TargetSelector::names(LCM_LORA_TARGETS),
    )?;
    let student = SdUnet {
        unet: student,
        prediction_type: PredictionType::Epsilon,
    };
    let teacher = SdUnet {
        unet: base,
        prediction_type: PredictionType::Epsilon,
    };
    let mut run = RunConfig::preset(Method::Cd);
    run.train.batch_size = args.batch;
    run.train.steps = args.runs as u64 + 1;
    let schedule = cm_schedulers_schedule(&SchedulerConfig::sd15());
    let mut trainer = Trainer::new(
        student,
        loop_settings(&run),
        consistency_step(&run, &schedule)?,
    )?;
    let mut source = Random {
        latent: [config.in_channels, args.latent, args.latent],
        width: config.cross_attention_dim,
    };
    let mut times = Vec::new();
    for i in 0..=args.runs {
        let start = Instant::now();
        trainer.train_step(&mut source, Some(&teacher), &device)?;
        A::sync(&device).ok();
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "| LoRA CD step, {label} | {}x{} x{} | {median:.3} | {} |",
        args.latent,
        args.latent,
        args.batch,
        memory.peak_bytes().map_or("-".into(), human)
    );
    let _ = trainer.student.valid();
    Ok(())
}

fn cm_schedulers_schedule(
    config: &SchedulerConfig,
) -> consistency_models::schedulers::schedule::NoiseSchedule {
    consistency_models::schedulers::schedule::NoiseSchedule::new(config)
}

pub fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = Args::parse();
    let dir = args
        .unet
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sd15/unet"));
    let config = UNetConfig::from_json_file(dir.join("config.json"))?;
    backend::guard_device(|| {
        println!(
            "backend: {}, UNet {}, rank {}, {} runs (median)\n",
            backend::describe(),
            dir.display(),
            args.rank,
            args.runs
        );
        let memory = PeakMemory::start();
        println!("peak memory: {}", memory.describe());
        println!("| row | latents x batch | median (s) | peak memory |\n|---|---|---|---|");
        for name in &args.rows {
            match name.as_str() {
                "checkpointing" => row::<Autodiff<Backend, BalancedCheckpointing>>(
                    &args,
                    &config,
                    "checkpointing",
                    &memory,
                )?,
                "plain" => row::<Autodiff<Backend>>(&args, &config, "no checkpointing", &memory)?,
                other => {
                    anyhow::bail!("--rows: unknown row `{other}`; expected checkpointing or plain")
                }
            }
        }
        Ok(())
    })
}
