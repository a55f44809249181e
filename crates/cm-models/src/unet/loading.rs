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
use crate::component::{weight_file, Component, WeightVariant};
use crate::config_json::JsonConfig;
use crate::error::{ModelError, Result};
use crate::weights::{load_safetensors, LoadOptions, LoadReport};

/// Key of the guidance-embedding projection a student adds to a teacher.
pub const COND_PROJ_KEY: &str = "time_embedding.cond_proj.weight";

impl<B: Backend> UNet2DConditionModel<B> {
    /// An LCM-style student from a teacher's `unet/` folder: the teacher's config with
    /// `time_cond_proj_dim = cond_proj_dim` and the teacher's weights; the new `cond_proj` is freshly
    /// initialised (PyTorch's default `Linear` init, as diffusers' `load_state_dict(strict=False)`
    /// leaves it) and named in the report's `fresh` list. A teacher that already has the same
    /// `time_cond_proj_dim` loads as it is; a different one is an error naming the key.
    pub fn student_from_teacher(
        dir: impl AsRef<Path>,
        cond_proj_dim: usize,
        variant: WeightVariant,
        dtype: DType,
        device: &B::Device,
    ) -> Result<(Self, UNetConfig, LoadReport)> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let mut config = UNetConfig::from_json_file(&config_path)?;
        match config.time_cond_proj_dim {
            Some(d) if d == cond_proj_dim => return Self::from_folder(dir, variant, dtype, device),
            Some(d) => {
                return Err(ModelError::UnsupportedConfig {
                    path: config_path,
                    key: "time_cond_proj_dim".into(),
                    found: d.to_string(),
                    expected: format!("absent, or the student's {cond_proj_dim}"),
                })
            }
            None => config.time_cond_proj_dim = Some(cond_proj_dim),
        }
        let options =
            Self::load_options(dtype).fresh(&format!("^{}$", regex::escape(COND_PROJ_KEY)));
        let (model, report) = load_safetensors(
            Self::build(&config, device),
            weight_file(dir, Self::WEIGHTS_STEM, variant)?,
            &options,
        )?;
        Ok((model, config, report))
    }
}

impl<B: Backend> Component<B> for UNet2DConditionModel<B> {
    type Config = UNetConfig;
    const WEIGHTS_STEM: &'static str = "diffusion_pytorch_model";

    fn load_options(dtype: DType) -> LoadOptions {
        LoadOptions::default().with_dtype(dtype)
    }

    fn build(config: &UNetConfig, device: &B::Device) -> Self {
        config.init(device)
    }
}
