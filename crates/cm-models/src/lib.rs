//! Stable Diffusion 1.5 components in Burn, numerically equal to diffusers / transformers.
//!
//! - [`clip`]: the CLIP BPE tokenizer and the `CLIPTextModel` text encoder.
//! - [`unet`]: `UNet2DConditionModel`; [`vae`]: `AutoencoderKL`; [`nn`]: their shared blocks.
//! - [`pipeline`]: a whole diffusers Stable Diffusion folder.
//! - [`weights`]: safetensors loading with key remapping, dtype casts and a load report.
//! - [`lora_file`]: LoRA files (peft / diffusers, kohya) into and out of any model.
//! - [`config_json`]: typed configs read from diffusers / transformers `config.json` files.
//! - [`core_share`]: thread pools that share the cores between threads running model work.
//!
//! File I/O (safetensors, atomic writes, images, tensor comparison) lives in the leaf crate
//! `cm-io`, re-exported here as [`io`].
//!
//! Every model is generic over the Burn backend `B`; binaries pick the backend.

pub mod clip;
pub mod component;
pub mod config_json;
pub mod core_share;
pub mod error;
pub mod lora_file;
pub mod nn;
pub mod pipeline;
pub mod unet;
pub mod vae;
pub mod weights;

pub use cm_io as io;
pub use component::{Component, WeightVariant};
pub use error::{ModelError, Result};
