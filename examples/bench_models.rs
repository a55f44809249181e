//! Forward-pass timings of the model layer, printed as a table (median of N runs after a warm-up).
//!
//! `cargo run --release --example bench_models -- [--runs N] [--sd15-64]`
//!
//! Rows: the tiny fixture UNet (16x16 latents), the SD1.5-config UNet at 32x32 latents (and 64x64
//! with `--sd15-64`), and the SD1.5 text encoder (77 tokens), all batch 1, fp32, random weights.
//! Compare with `scripts/bench_reference.py` (PyTorch, same machine and thread count) run next to it.

use std::time::Instant;

use burn::tensor::backend::Backend as _;
use burn::tensor::{Int, Tensor};
use consistency_models::backend::{self, Backend, Device};
use consistency_models::models::clip::ClipTextConfig;
use consistency_models::models::config_json::JsonConfig;
use consistency_models::models::unet::{UNet2DConditionModel, UNetConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time(runs: usize, device: &Device, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    Backend::sync(device).ok();
    let samples = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            Backend::sync(device).ok();
            start.elapsed().as_secs_f64()
        })
        .collect();
    median(samples)
}

fn unet_forward(
    unet: &UNet2DConditionModel<Backend>,
    size: usize,
    context_dim: usize,
    device: &Device,
) {
    let out = unet
        .forward(
            Tensor::ones([1, 4, size, size], device),
            &[500.0],
            Tensor::ones([1, 77, context_dim], device),
            None,
        )
        .expect("valid inputs");
    let _ = out.into_data();
}

/// Model forward benchmarks (medians).
#[derive(clap::Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Timed runs per row (after one warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Also time the SD1.5 UNet at 64x64 latents.
    #[arg(long)]
    sd15_64: bool,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let (runs, with_64) = (args.runs as usize, args.sd15_64);
    backend::guard_device(|| {
        let device = backend::device();
        println!(
            "backend: {}, threads: {}, runs: {runs} (median)",
            backend::describe(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        println!("| model | input | median (s) |");
        println!("|---|---|---|");

        let tiny_config = UNetConfig::from_json_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-sd/unet/config.json"
        ))?;
        let tiny = tiny_config.init::<Backend>(&device);
        let t = time(runs, &device, || unet_forward(&tiny, 16, 32, &device));
        println!("| tiny UNet (fixture) | 1x4x16x16 | {t:.4} |");

        let sd15 = UNetConfig::sd15().init::<Backend>(&device);
        let t = time(runs, &device, || unet_forward(&sd15, 32, 768, &device));
        println!("| SD1.5 UNet | 1x4x32x32 | {t:.3} |");
        if with_64 {
            let t = time(runs, &device, || unet_forward(&sd15, 64, 768, &device));
            println!("| SD1.5 UNet | 1x4x64x64 | {t:.3} |");
        }
        drop(sd15);

        let encoder = ClipTextConfig::sd15().init::<Backend>(&device);
        let ids = Tensor::<Backend, 2, Int>::zeros([1, 77], &device);
        let t = time(runs, &device, || {
            let _ = encoder
                .forward(ids.clone())
                .expect("valid ids")
                .last_hidden_state
                .into_data();
        });
        println!("| SD1.5 text encoder | 1x77 tokens | {t:.4} |");
        Ok(())
    })
}
