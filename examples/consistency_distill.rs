//! Consistency distillation of a Stable-Diffusion-shaped teacher (the main job of this project).
//!
//! The training engine lands with the [train] issue and the embedded demo teacher with [demo].
//! Until then this binary says so, and exercises what exists: it tokenizes a prompt with the
//! SD1.5 CLIP tokenizer and encodes it with the tiny fixture text encoder on the chosen backend.
//!
//! Run: `cargo run --release --example consistency_distill [-- "a prompt"]`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::DType;
use consistency_models::backend::{self, Backend};
use consistency_models::models::clip::{ClipTextModel, ClipTokenizer};
use consistency_models::models::{Component, WeightVariant};

fn main() -> anyhow::Result<()> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "a photograph of an astronaut riding a horse".to_string());
    println!("consistency_distill: the distillation engine is not built yet (issues [train] and [demo]).");
    println!("What runs today, on {}:", backend::describe());

    backend::guard_device(|| {
        let device = backend::device();
        let tokenizer = ClipTokenizer::sd15()?;
        let ids = tokenizer.encode(&prompt)?;
        let used = ids
            .iter()
            .position(|&id| id == tokenizer.eos_id())
            .map_or(ids.len(), |p| p + 1);
        println!(
            "  tokenizer: {prompt:?} -> {:?} (+ padding to {})",
            &ids[..used],
            ids.len()
        );

        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd/text_encoder");
        let start = Instant::now();
        let (encoder, _, report) =
            ClipTextModel::<Backend>::from_folder(&dir, WeightVariant::Full, DType::F32, &device)
                .with_context(|| format!("loading the tiny text encoder from {}", dir.display()))?;
        println!("  weights: {report}");
        let batch = tokenizer.encode_batch::<Backend>(&[prompt.as_str(), ""], &device)?;
        let out = encoder.forward(batch)?;
        let norm: f32 = out
            .last_hidden_state
            .clone()
            .powi_scalar(2)
            .sum()
            .sqrt()
            .into_scalar();
        println!(
            "  text encoder (tiny fixture): cond + uncond embeddings {:?}, norm {norm:.3}, {:.1} ms",
            out.last_hidden_state.dims(),
            start.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    })
}
