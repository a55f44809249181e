//! `AutoencoderKL` config as diffusers writes it in `vae/config.json`.
//!
//! [`VaeConfig::sd15`] equals `assets/sd15/vae/config.json` (checked by a test).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config_json::{check_sizes, unsupported, JsonConfig, MAX_WIDTH};
use crate::error::Result;

/// Configuration of [`super::AutoencoderKL`]. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "d::three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "d::three")]
    pub out_channels: usize,
    /// Encoder block types: `DownEncoderBlock2D`.
    #[serde(default = "d::down")]
    pub down_block_types: Vec<String>,
    /// Decoder block types: `UpDecoderBlock2D`.
    #[serde(default = "d::up")]
    pub up_block_types: Vec<String>,
    /// Channels per level.
    #[serde(default = "d::channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    #[serde(default = "d::one")]
    pub layers_per_block: usize,
    /// Activation (`silu`).
    #[serde(default = "d::silu")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "d::four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "d::thirty_two")]
    pub norm_num_groups: usize,
    /// Image resolution the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Latents are multiplied by this after encoding (divided before decoding).
    #[serde(default = "d::scaling_factor")]
    pub scaling_factor: f64,
    /// Must be null (SD3/Flux-style shifted latents are not implemented).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Whether the `quant_conv` exists.
    #[serde(default = "d::yes")]
    pub use_quant_conv: bool,
    /// Whether the `post_quant_conv` exists.
    #[serde(default = "d::yes")]
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have an attention.
    #[serde(default = "d::yes")]
    pub mid_block_add_attention: bool,
    /// Informational: diffusers runs this VAE in fp32 under fp16 pipelines.
    #[serde(default)]
    pub force_upcast: Option<bool>,
}

mod d {
    pub fn three() -> usize {
        3
    }
    pub fn four() -> usize {
        4
    }
    pub fn one() -> usize {
        1
    }
    pub fn thirty_two() -> usize {
        32
    }
    pub fn yes() -> bool {
        true
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn down() -> Vec<String> {
        vec!["DownEncoderBlock2D".into()]
    }
    pub fn up() -> Vec<String> {
        vec!["UpDecoderBlock2D".into()]
    }
    pub fn channels() -> Vec<usize> {
        vec![64]
    }
    pub fn scaling_factor() -> f64 {
        0.18215
    }
}

impl VaeConfig {
    /// The VAE of Stable Diffusion 1.5 (`assets/sd15/vae/config.json`).
    pub fn sd15() -> Self {
        let mut config: Self = serde_json::from_str("{}").expect("defaults");
        config.down_block_types = vec!["DownEncoderBlock2D".into(); 4];
        config.up_block_types = vec!["UpDecoderBlock2D".into(); 4];
        config.block_out_channels = vec![128, 256, 512, 512];
        config.layers_per_block = 2;
        config.sample_size = Some(512);
        config
    }

    /// Spatial down-sampling factor between images and latents (8 for SD1.5).
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

impl JsonConfig for VaeConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let mut sizes: Vec<(&str, usize, usize)> = vec![
            ("in_channels", self.in_channels, 1024),
            ("out_channels", self.out_channels, 1024),
            ("latent_channels", self.latent_channels, 1024),
            ("layers_per_block", self.layers_per_block, 64),
            ("norm_num_groups", self.norm_num_groups, MAX_WIDTH),
            ("sample_size", self.sample_size.unwrap_or(1), 8192),
        ];
        sizes.extend(
            self.block_out_channels
                .iter()
                .map(|&c| ("block_out_channels", c, MAX_WIDTH)),
        );
        check_sizes(path, &sizes)?;
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(unsupported(
                path,
                "block_out_channels",
                "[]",
                "at least one level",
            ));
        }
        for (key, types, wanted) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if types.len() != n {
                return Err(unsupported(
                    path,
                    key,
                    format!("{types:?}"),
                    &format!("{n} entries"),
                ));
            }
            if let Some(t) = types.iter().find(|t| *t != wanted) {
                return Err(unsupported(path, key, t, wanted));
            }
        }
        if self.act_fn != "silu" {
            return Err(unsupported(path, "act_fn", &self.act_fn, "silu"));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c % self.norm_num_groups != 0)
        {
            return Err(unsupported(
                path,
                "norm_num_groups",
                self.norm_num_groups,
                &format!("a divisor of every block_out_channels entry ({c})"),
            ));
        }
        if let Some(shift) = self.shift_factor {
            return Err(unsupported(path, "shift_factor", shift, "null"));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor <= 0.0 {
            return Err(unsupported(
                path,
                "scaling_factor",
                self.scaling_factor,
                "a positive number",
            ));
        }
        Ok(())
    }
}
