//! Consistency distillation (the main job of this project): a LoRA on the teacher's UNet learns
//! to map any point of the teacher's guided DDIM trajectory to its end, so that 1-4 steps draw what
//! the teacher draws in 50.
//!
//! ```text
//! cargo run --release --example consistency_distill                       # the embedded default
//! cargo run --release --example consistency_distill -- --teacher path/to/stable-diffusion-v1-5 \
//!     --coco captions_train2017.json --images train2017/ --resolution 512 --steps 2000 --out out/cd
//! cargo run --release --example consistency_distill -- --help
//! ```
//! Defaults: `configs/cd.toml`. Outputs in `--out` (default `out/`): the LoRA in diffusers format
//! (`pytorch_lora_weights.safetensors`), `config.toml`, `metrics.jsonl`, `loss.png`,
//! `comparison.png` and `checkpoints/`. Sample with `sample --lora out/pytorch_lora_weights.safetensors
//! --scheduler lcm --steps 4 --guidance 1`. GPU: add `--features cuda`.

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    consistency_models::cli::train_main(consistency_models::train::config::Method::Cd)
}
