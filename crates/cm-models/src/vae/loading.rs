//! Loading `AutoencoderKL` weights written by diffusers (`vae/diffusion_pytorch_model.safetensors`).
//!
//! Remap table (file key -> Burn path), each line a naming that real files use:
//! - `.query.` -> `.to_q.`, `.key.` -> `.to_k.`, `.value.` -> `.to_v.`, `.proj_attn.` -> `.to_out.0.`:
//!   the mid-block attention as diffusers < 0.14 (`AttentionBlock`) saved it;
//! - 1x1-convolution-shaped q/k/v/out weights `[c, c, 1, 1]` (converted original-LDM checkpoints)
//!   load into the Linear layers (handled by `weights.rs` for every Linear).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::DType;

use super::{AutoencoderKL, VaeConfig};
use crate::config_json::JsonConfig;
use crate::error::Result;
use crate::weights::{load_safetensors, LoadOptions, LoadReport};

/// The load options of a diffusers VAE file (both attention namings accepted).
pub fn vae_load_options(dtype: DType) -> LoadOptions {
    LoadOptions::default()
        .remap(r"(attentions\.\d+)\.query\.", "$1.to_q.")
        .remap(r"(attentions\.\d+)\.key\.", "$1.to_k.")
        .remap(r"(attentions\.\d+)\.value\.", "$1.to_v.")
        .remap(r"(attentions\.\d+)\.proj_attn\.", "$1.to_out.0.")
        .with_dtype(dtype)
}

impl<B: Backend> AutoencoderKL<B> {
    /// Reads weights from a diffusers safetensors file (fp32, fp16 or bf16; cast to `dtype`).
    pub fn load_safetensors(
        self,
        path: impl AsRef<Path>,
        dtype: DType,
    ) -> Result<(Self, LoadReport)> {
        load_safetensors(self, path, &vae_load_options(dtype))
    }

    /// Builds the model of `config.json` in `dir` and loads `diffusion_pytorch_model.safetensors`
    /// (or the `.fp16.` variant).
    pub fn from_folder(
        dir: impl AsRef<Path>,
        fp16_variant: bool,
        dtype: DType,
        device: &B::Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let config = VaeConfig::from_json_file(dir.join("config.json"))?;
        let file = if fp16_variant {
            "diffusion_pytorch_model.fp16.safetensors"
        } else {
            "diffusion_pytorch_model.safetensors"
        };
        config
            .init::<B>(device)
            .load_safetensors(dir.join(file), dtype)
    }
}
