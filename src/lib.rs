//! # consistency-models
//!
//! Few-step image generation in Rust on [Burn](https://burn.dev): Stable Diffusion 1.5 ported to
//! Burn and distilled into consistency models that draw an image in 1-4 steps.
//!
//! This crate re-exports the workspace crates, picks the backend for the example binaries and tunes
//! glibc `malloc` for them ([`allocator`]):
//!
//! | crate | what it holds |
//! |---|---|
//! | [`io`] (`cm-io`) | safetensors files, atomic writes, image files, tensor comparison |
//! | [`models`] (`cm-models`) | CLIP tokenizer + text encoder, (UNet, VAE), diffusers weight loading |
//! | [`schedulers`] (`cm-schedulers`) | noise schedules, samplers, consistency parameterisations |
//! | [`losses`] (`cm-losses`) | L2 and pseudo-Huber consistency losses |
//! | [`lora`] (`cm-lora`) | LoRA adapters, merge, peft / kohya files |
//! | [`data`] (`cm-data`) | COCO-caption and folder datasets, transforms, latent cache |
//! | [`train`] (`cm-train`) | CT, CD and multi-boundary CD in one engine |

pub use cm_data as data;
pub use cm_io as io;
pub use cm_lora as lora;
pub use cm_losses as losses;
pub use cm_models as models;
pub use cm_schedulers as schedulers;
pub use cm_train as train;

pub mod allocator;
pub mod backend;
pub mod cli;
pub mod peak_memory;
pub mod sample_cli;
