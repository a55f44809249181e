//! Multi-boundary consistency distillation: the trajectory is split into K segments (default 4);
//! the student maps `x_t` to the start of its own segment, and sampling is deterministic, one step
//! per segment (no fresh noise after the first).
//!
//! ```text
//! cargo run --release --example multiboundary_distill
//! cargo run --release --example multiboundary_distill -- --config my.toml --out out/mb
//! ```
//! Defaults: `configs/multiboundary.toml`; outputs as `consistency_distill`. Sample with
//! `sample --lora out/pytorch_lora_weights.safetensors --scheduler multiboundary --boundaries 4
//! --guidance 1`.

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    consistency_models::cli::train_main(consistency_models::train::config::Method::Multiboundary)
}
