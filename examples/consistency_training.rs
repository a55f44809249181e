//! Consistency training (CT): no teacher; the neighbour of `x_t` is `x_s` from the same data and
//! the same noise. The pretrained UNet (with a LoRA) is the starting point.
//!
//! ```text
//! cargo run --release --example consistency_training
//! cargo run --release --example consistency_training -- --data my_images/ --steps 2000 --out out/ct
//! ```
//! Defaults: `configs/ct.toml`; outputs as `consistency_distill`. Sample with `sample --lora
//! out/pytorch_lora_weights.safetensors --scheduler lcm --steps 4 --guidance 1`.

fn main() -> anyhow::Result<()> {
    consistency_models::allocator::keep_freed_memory();
    consistency_models::cli::train_main(consistency_models::train::config::Method::Ct)
}
