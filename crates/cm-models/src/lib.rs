//! Stable Diffusion 1.5 components in Burn, numerically equal to diffusers / transformers.
//!
//! - [`clip`]: the CLIP BPE tokenizer and the `CLIPTextModel` text encoder.
//! - [`weights`]: safetensors loading with key remapping, dtype casts and a load report.
//! - [`config_json`]: typed configs read from diffusers / transformers `config.json` files.
//!
//! Every model is generic over the Burn backend `B`; binaries pick the backend.

pub mod clip;
pub mod config_json;
pub mod error;
pub mod safetensors_io;
pub mod weights;

pub use error::{ModelError, Result};
