//! Text-to-image sampling from a diffusers Stable Diffusion folder (thin: the flags and the work
//! are in `consistency_models::sample_cli`).
//!
//! ```text
//! cargo run --release --example sample -- [--model DIR] --prompt "..." [--negative-prompt "..."]
//!     [--scheduler ddim|lcm|multiboundary] [--steps N] [--guidance W] [--boundaries K] [--seed S]
//!     [--batch N] [--height H --width W] [--lora FILE] [--unet DIR] [--out out.png|out.jpg]
//!     [--init-latents FILE] [--save-tensors FILE]
//! ```
//! Which sampler for which student (docs/training.md): teachers `--scheduler ddim --steps 50
//! --guidance 7.5`; CD / CT students (LoRA) `--scheduler lcm --steps 1..4 --guidance 1`;
//! multi-boundary students `--scheduler multiboundary --boundaries K --guidance 1`; students with a
//! guidance embedding (`--unet out/unet`) take the guidance as input (`--guidance 7.5`).

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    consistency_models::sample_cli::sample_main()
}
