//! Loading `CLIPTextModel` weights written by transformers (`text_encoder/model.safetensors`).
//!
//! Remap table (file key -> Burn path), see also `docs/weights.md`:
//! - `^text_model\.` -> `` : transformers writes keys under `text_model.`; some exporters strip it.
//! - `text_model.embeddings.position_ids` is a constant buffer (0..77), ignored.
//! - everything else is the identity; Linear weights are transposed and LayerNorm
//!   `weight`/`bias` become `gamma`/`beta` by burn-store's `PyTorchToBurnAdapter`.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::DType;

use super::{ClipTextConfig, ClipTextModel};
use crate::config_json::JsonConfig;
use crate::error::Result;
use crate::weights::{load_safetensors, LoadOptions, LoadReport};

/// The load options of a CLIP text encoder file: prefix removal and ignored buffers.
pub fn text_encoder_load_options(dtype: DType) -> LoadOptions {
    LoadOptions::default()
        // `text_model.encoder.layers.0...` -> `encoder.layers.0...` (keys without it pass unchanged).
        .remap(r"^text_model\.", "")
        // The position-id buffer of older transformers checkpoints: not a parameter.
        .ignore(r"(^|\.)embeddings\.position_ids$")
        .with_dtype(dtype)
}

impl<B: Backend> ClipTextModel<B> {
    /// Reads weights from a transformers safetensors file (fp32, fp16 or bf16; cast to `dtype`).
    pub fn load_safetensors(
        self,
        path: impl AsRef<Path>,
        dtype: DType,
    ) -> Result<(Self, LoadReport)> {
        load_safetensors(self, path, &text_encoder_load_options(dtype))
    }

    /// Builds the model of `text_encoder/config.json` in `dir` and loads `model.safetensors`
    /// (or `model.fp16.safetensors` when `fp16_variant`).
    pub fn from_folder(
        dir: impl AsRef<Path>,
        fp16_variant: bool,
        dtype: DType,
        device: &B::Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let config = ClipTextConfig::from_json_file(dir.join("config.json"))?;
        let file = if fp16_variant {
            "model.fp16.safetensors"
        } else {
            "model.safetensors"
        };
        config
            .init::<B>(device)
            .load_safetensors(dir.join(file), dtype)
    }
}
