//! Trains the demo teacher from scratch on the captioned-shapes set: a small SD-shaped pipeline
//! (AutoencoderKL, CLIP text encoder with the SD1.5 tokenizer, UNet2DConditionModel with
//! cross-attention) written in the diffusers folder layout (`assets/demo-teacher/` by default).
//!
//! ```text
//! cargo run --release --example train_teacher -- [--out assets/demo-teacher] [--vae-steps N]
//!     [--unet-steps N] [--decoder-steps N] [--batch N] [--peers N] [--side PX] [--vae-channels 16,32,64] [--unet-channels 64,128]
//!     [--seed S] [--f32] [--snapshot-every N]
//!     [--resume-from DIR]
//! ```
//!
//! `--resume-from` continues a pipeline this example wrote (a longer budget in several sittings):
//! its VAE is kept and its text encoder and UNet train `--unet-steps` more steps.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use consistency_models::backend::{self, AutodiffBackend};
use consistency_models::train::config::PeersPerDevice;
use consistency_models::train::metrics::format_duration;
use consistency_models::train::teacher::{
    demo_teacher_dir, save_pipeline, train_teacher, TeacherRecipe,
};

/// Train the demo teacher.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Output pipeline folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// VAE steps.
    #[arg(long, default_value_t = TeacherRecipe::default().vae_steps)]
    vae_steps: u64,
    /// Text encoder + UNet steps (0 only with --resume-from: sharpen its decoder alone).
    #[arg(long, default_value_t = TeacherRecipe::default().unet_steps)]
    unet_steps: u64,
    /// Decoder steps after the VAE (its reconstruction MSE with the encoder frozen: the latents,
    /// and a UNet trained on them, stay valid; with --resume-from and --unet-steps 0 this
    /// sharpens a finished teacher's decoder).
    #[arg(long, default_value_t = TeacherRecipe::default().decoder_steps)]
    decoder_steps: u64,
    /// Batch size.
    #[arg(long, default_value_t = TeacherRecipe::default().batch)]
    batch: usize,
    /// Peers (threads) sharing each step's batch (default: 2 on a multi-core CPU, 1 on a GPU);
    /// the same training, faster where one peer leaves cores idle.
    #[arg(long, value_name = "N")]
    peers: Option<usize>,
    /// Image side in pixels.
    #[arg(long, default_value_t = TeacherRecipe::default().side)]
    side: u32,
    /// VAE block_out_channels (one halving per extra entry; multiples of 16), e.g. 16,32 for
    /// 16 x 16 latents at 32 px.
    #[arg(long, value_delimiter = ',', default_values_t = TeacherRecipe::default().vae_channels)]
    vae_channels: Vec<usize>,
    /// UNet block_out_channels (multiples of 32).
    #[arg(long, value_delimiter = ',', default_values_t = TeacherRecipe::default().unet_channels)]
    unet_channels: Vec<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write fp32 weights (default fp16).
    #[arg(long)]
    f32: bool,
    /// Write the pipeline as it stands every N UNet steps (0: only at the end).
    #[arg(long, default_value_t = TeacherRecipe::default().snapshot_every)]
    snapshot_every: u64,
    /// Continue from a pipeline folder written by this example (its VAE kept; text encoder and
    /// UNet train --unet-steps more steps).
    #[arg(long, value_name = "DIR")]
    resume_from: Option<PathBuf>,
    /// Take the VAE from this pipeline folder (no VAE phase) and train a new text encoder and
    /// UNet (--unet-channels, --unet-steps) on its latents.
    #[arg(long, value_name = "DIR", conflicts_with = "resume_from")]
    vae_from: Option<PathBuf>,
    /// Progress line every N steps.
    #[arg(long, default_value_t = 50)]
    log_every: u64,
}

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    let args = Args::parse();
    let recipe = TeacherRecipe {
        vae_steps: args.vae_steps,
        unet_steps: args.unet_steps,
        decoder_steps: args.decoder_steps,
        batch: args.batch,
        peers: backend::peers_per_device(
            args.peers
                .map_or(PeersPerDevice::AUTO, PeersPerDevice::Count),
            args.batch,
        )
        .count(),
        side: args.side,
        vae_channels: args.vae_channels.clone(),
        unet_channels: args.unet_channels.clone(),
        seed: args.seed,
        snapshot_every: args.snapshot_every,
        resume_from: args.resume_from.clone(),
        vae_from: args.vae_from.clone(),
        ..Default::default()
    };
    let out = args.out.clone().unwrap_or_else(demo_teacher_dir);
    backend::guard_device(|| {
        println!(
            "training the demo teacher on {}: {recipe:?}",
            backend::describe()
        );
        let start = Instant::now();
        let mut phase_start = (String::new(), Instant::now());
        let mut progress = |phase: &str, step: u64, total: u64, loss: f64| {
            if phase != phase_start.0 {
                phase_start = (phase.to_string(), Instant::now());
            }
            if step.is_multiple_of(args.log_every.max(1)) || step == total {
                let rate = step as f64 / phase_start.1.elapsed().as_secs_f64();
                println!(
                    "{phase} step {step}/{total}  loss {loss:.5}  {rate:.2} it/s  ETA {}",
                    format_duration((total - step) as f64 / rate)
                );
            }
        };
        let dtype = if args.f32 {
            burn::tensor::DType::F32
        } else {
            burn::tensor::DType::F16
        };
        let tokenizer =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd/tokenizer");
        let mut snapshot = |teacher: &_| {
            save_pipeline(teacher, &out, dtype, &tokenizer)?;
            println!("snapshot written to {}", out.display());
            Ok(())
        };
        let teacher = train_teacher::<AutodiffBackend>(
            &recipe,
            &backend::device(),
            &mut progress,
            &mut snapshot,
        )?;
        save_pipeline(&teacher, &out, dtype, &tokenizer)?;
        // The VAE phase only runs for a new VAE (not with --resume-from / --vae-from).
        let losses = teacher.final_losses;
        let mut phases = vec![match (&args.resume_from, &args.vae_from) {
            (Some(dir), _) | (_, Some(dir)) => format!("VAE from {}", dir.display()),
            _ => format!("VAE {:.5}", losses.vae),
        }];
        if args.decoder_steps > 0 {
            phases.push(format!("decoder {:.5}", losses.decoder));
        }
        phases.push(if args.unet_steps > 0 {
            format!("UNet {:.5}", losses.unet)
        } else {
            "UNet kept".into()
        });
        println!(
            "wrote {} in {} (final losses: {})",
            out.display(),
            format_duration(start.elapsed().as_secs_f64()),
            phases.join(", ")
        );
        Ok(())
    })
}
