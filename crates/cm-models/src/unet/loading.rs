//! Loading `UNet2DConditionModel` weights written by diffusers
//! (`unet/diffusion_pytorch_model[.fp16].safetensors`).
//!
//! The Burn module tree mirrors diffusers' attribute names, so the remap table is empty: every key
//! is the identity, e.g. `down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight`
//! (the feed-forward list is an enum list, so its indices survive). Linear weights are transposed
//! and GroupNorm/LayerNorm `weight`/`bias` become `gamma`/`beta` by burn-store's adapter.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::DType;

use super::{UNet2DConditionModel, UNetConfig};
use crate::config_json::JsonConfig;
use crate::error::Result;
use crate::weights::{load_safetensors, LoadOptions, LoadReport};

/// The load options of a diffusers UNet file.
pub fn unet_load_options(dtype: DType) -> LoadOptions {
    LoadOptions::default().with_dtype(dtype)
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// Reads weights from a diffusers safetensors file (fp32, fp16 or bf16; cast to `dtype`).
    pub fn load_safetensors(
        self,
        path: impl AsRef<Path>,
        dtype: DType,
    ) -> Result<(Self, LoadReport)> {
        load_safetensors(self, path, &unet_load_options(dtype))
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
        let config = UNetConfig::from_json_file(dir.join("config.json"))?;
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
