//! Inference timings of the model layer, printed as a table: median of N runs after one warm-up,
//! and the peak memory of each row (RSS on the CPU, the GPU's used memory on CUDA).
//!
//! ```text
//! cargo run --release --example bench_models -- [--runs N] [--rows LIST] [--dtype f32|f16|bf16]
//! ```
//!
//! Rows (random weights, SD1.5 configs from `assets/sd15`; `--rows` picks some, by name):
//!
//! | name | what |
//! |---|---|
//! | `tiny` | the tiny fixture UNet, 1x4x16x16 |
//! | `te` | SD1.5 CLIP text encoder, 2 x 77 tokens (a CFG pair) |
//! | `unet32`, `unet32x2` | SD1.5 UNet at 32x32 latents, batch 1 / batch 2 (CFG) |
//! | `unet64`, `unet64x2` | SD1.5 UNet at 64x64 latents (512 px), batch 1 / batch 2 |
//! | `vae512` | SD1.5 VAE decode, 1x4x64x64 latents -> 512 px |
//! | `sample512` | 4-step LCM sampling at 512 px, one image, no CFG (text encoder, 4 UNet evaluations, VAE decode); reported as images/s too |
//!
//! The default is every row but `unet64`/`unet64x2`/`vae512`/`sample512` (`--sd15-64` adds them):
//! at 512 px a 2-core CPU takes tens of seconds per row. `--dtype f16`/`bf16` runs the CUDA
//! backend in half precision (the CPU backend runs f32 only). Compare with
//! `scripts/bench_reference.py` (PyTorch, same rows, same machine, thread count and dtype) run
//! next to it.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use consistency_models::backend;
use consistency_models::models::clip::{ClipTextConfig, ClipTokenizer};
use consistency_models::models::config_json::JsonConfig;
use consistency_models::models::pipeline::StableDiffusion;
use consistency_models::models::unet::{UNet2DConditionModel, UNetConfig};
use consistency_models::models::vae::VaeConfig;
use consistency_models::peak_memory::PeakMemory;
use consistency_models::train::memory::human;
use consistency_models::train::sampling::{sample, SampleOptions, SamplerKind, SeededNoise};

const ALL_ROWS: [&str; 8] = [
    "tiny",
    "te",
    "unet32",
    "unet32x2",
    "unet64",
    "unet64x2",
    "vae512",
    "sample512",
];
const LARGE_ROWS: [&str; 4] = ["unet64", "unet64x2", "vae512", "sample512"];

/// Model inference benchmarks (medians).
#[derive(clap::Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Timed runs per row (after one warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Also run the 512 px rows (unet64, unet64x2, vae512, sample512).
    #[arg(long)]
    sd15_64: bool,
    /// Comma-separated rows to run (overrides the default set): tiny, te, unet32, unet32x2,
    /// unet64, unet64x2, vae512, sample512.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Float type of the weights and activations: f32, or f16/bf16 on CUDA.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Threads a UNet call's batch is split over (`UNet2DConditionModel::forward_split`; the
    /// batch-2 rows and sampling): 2 fills a second CPU core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One warm-up, then the median of `runs` synchronised runs.
fn time<B: Backend>(runs: usize, device: &B::Device, mut f: impl FnMut()) -> f64 {
    f();
    B::sync(device).ok();
    let samples = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            B::sync(device).ok();
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(samples)
}

fn unet_forward<B: Backend>(
    unet: &UNet2DConditionModel<B>,
    threads: usize,
    batch: usize,
    size: usize,
    context_dim: usize,
    device: &B::Device,
) {
    let out = unet
        .forward_split(
            threads,
            Tensor::ones([batch, 4, size, size], device),
            &vec![500.0; batch],
            Tensor::ones([batch, 77, context_dim], device),
            None,
        )
        .expect("valid inputs");
    let _ = out.into_data();
}

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/sd15")
}

/// A random-weight SD1.5 pipeline (configs from `assets/sd15`, the embedded SD1.5 tokenizer).
fn random_sd15<B: Backend>(device: &B::Device) -> anyhow::Result<StableDiffusion<B>> {
    let root = assets();
    let scheduler_path = root.join("scheduler_lcm/scheduler_config.json");
    let scheduler_config = serde_json::from_str(&std::fs::read_to_string(&scheduler_path)?)?;
    Ok(StableDiffusion {
        root: root.clone(),
        tokenizer: ClipTokenizer::sd15()?,
        text_encoder: ClipTextConfig::sd15().init(device),
        text_encoder_config: ClipTextConfig::sd15(),
        unet: UNetConfig::sd15().init(device),
        unet_config: UNetConfig::sd15(),
        vae: VaeConfig::sd15().init(device),
        vae_config: VaeConfig::sd15(),
        scheduler_config,
        reports: vec![],
        skipped_components: vec![],
    })
}

/// Runs one row; returns (label, input, median seconds, extra note).
fn run_row<B: Backend>(
    name: &str,
    runs: usize,
    threads: usize,
    device: &B::Device,
) -> anyhow::Result<(&'static str, String, f64, String)> {
    Ok(match name {
        "tiny" => {
            let config = UNetConfig::from_json_file(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/tiny-sd/unet/config.json"
            ))?;
            let unet = config.init::<B>(device);
            let t = time::<B>(runs, device, || {
                unet_forward(&unet, threads, 1, 16, 32, device)
            });
            ("tiny UNet (fixture)", "1x4x16x16".into(), t, String::new())
        }
        "te" => {
            let encoder = ClipTextConfig::sd15().init::<B>(device);
            let ids = Tensor::<B, 2, Int>::zeros([2, 77], device);
            let t = time::<B>(runs, device, || {
                let _ = encoder
                    .forward(ids.clone())
                    .expect("valid ids")
                    .last_hidden_state
                    .into_data();
            });
            ("SD1.5 text encoder", "2x77 tokens".into(), t, String::new())
        }
        "unet32" | "unet32x2" | "unet64" | "unet64x2" => {
            let size = if name.starts_with("unet32") { 32 } else { 64 };
            let batch = if name.ends_with("x2") { 2 } else { 1 };
            let unet = UNetConfig::sd15().init::<B>(device);
            let t = time::<B>(runs, device, || {
                unet_forward(&unet, threads, batch, size, 768, device)
            });
            (
                "SD1.5 UNet",
                format!("{batch}x4x{size}x{size}"),
                t,
                String::new(),
            )
        }
        "vae512" => {
            let vae = VaeConfig::sd15().init::<B>(device);
            let t = time::<B>(runs, device, || {
                let _ = vae.decode(Tensor::ones([1, 4, 64, 64], device)).into_data();
            });
            (
                "SD1.5 VAE decode",
                "1x4x64x64 -> 512 px".into(),
                t,
                String::new(),
            )
        }
        "sample512" => {
            let sd = random_sd15::<B>(device)?;
            let scheduler =
                consistency_models::schedulers::config::SchedulerConfig::from_json_file_as(
                    assets().join("scheduler_lcm/scheduler_config.json"),
                    SamplerKind::Lcm.scheduler_class(),
                )?;
            let options = SampleOptions {
                sampler: SamplerKind::Lcm,
                steps: 4,
                guidance_scale: 1.0,
                height: 512,
                width: 512,
                images_per_prompt: 1,
                threads,
                ..Default::default()
            };
            let t = time::<B>(runs, device, || {
                let out = sample(
                    &sd,
                    &scheduler,
                    &["a photograph of an astronaut riding a horse"],
                    &[],
                    &options,
                    None,
                    &mut SeededNoise,
                    &mut |_| {},
                    device,
                )
                .expect("valid options");
                let _ = out.images.into_data();
            });
            (
                "4-step LCM sampling, 512 px",
                "1 image, no CFG".into(),
                t,
                format!("{:.2} images/s", 1.0 / t),
            )
        }
        other => unreachable!("`main` checked the row names; got `{other}`"),
    })
}

fn run_all<B: Backend>(args: &Args, rows: &[String]) -> anyhow::Result<()> {
    let device = B::Device::default();
    let runs = args.runs as usize;
    let memory = PeakMemory::start();
    println!(
        "backend: {}, dtype {}, cores: {}, UNet batch split over {} thread(s), runs: {runs} (median); memory: {}",
        backend::describe(),
        args.dtype,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        args.threads,
        memory.describe()
    );
    println!("| model | input | median (s) | peak memory | note |");
    println!("|---|---|---|---|---|");
    for name in rows {
        memory.reset::<B>(&device);
        let (label, input, t, note) = run_row::<B>(name, runs, args.threads as usize, &device)?;
        let peak = memory.peak_bytes().map_or("-".into(), human);
        println!("| {label} | {input} | {t:.4} | {peak} | {note} |");
    }
    Ok(())
}

pub fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = <Args as clap::Parser>::parse();
    let rows: Vec<String> = if args.rows.is_empty() {
        ALL_ROWS
            .iter()
            .filter(|r| args.sd15_64 || !LARGE_ROWS.contains(r))
            .map(|r| r.to_string())
            .collect()
    } else {
        args.rows.clone()
    };
    if let Some(bad) = rows.iter().find(|r| !ALL_ROWS.contains(&r.as_str())) {
        anyhow::bail!(
            "--rows: unknown row `{bad}`; expected one of {}",
            ALL_ROWS.join(", ")
        );
    }
    backend::guard_device(|| match args.dtype.as_str() {
        "f32" => run_all::<backend::Backend>(&args, &rows),
        #[cfg(feature = "cuda")]
        "f16" => run_all::<burn::backend::Cuda<half::f16>>(&args, &rows),
        #[cfg(feature = "cuda")]
        "bf16" => run_all::<burn::backend::Cuda<half::bf16>>(&args, &rows),
        other => anyhow::bail!(
            "--dtype {other}: expected f32{}",
            if cfg!(feature = "cuda") {
                ", f16 or bf16"
            } else {
                " (f16/bf16 need the CUDA build: --features cuda)"
            }
        ),
    })
}
