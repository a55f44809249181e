//! `UNet2DConditionModel` config as diffusers writes it in `unet/config.json`.
//!
//! Field names are the JSON keys; absent keys take diffusers' defaults. Only the options Stable
//! Diffusion 1.x/2.x-style UNets use are implemented; any other value of a supported key, or a
//! non-default value of an unsupported key, is rejected by [`JsonConfig::validate`] with the key
//! named. [`UNetConfig::sd15`] equals `assets/sd15/unet/config.json` (checked by a test).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config_json::{check_sizes, unsupported, JsonConfig, MAX_WIDTH};
use crate::error::Result;

/// An integer or a per-block list (diffusers accepts both for several keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    One(usize),
    /// One value per down block.
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for block `i` of `n`.
    pub fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i],
        }
    }

    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(v) => v.len() == n,
        }
    }
}

/// Configuration of [`super::UNet2DConditionModel`]. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    #[serde(default = "d::four")]
    pub in_channels: usize,
    /// Latent channels out.
    #[serde(default = "d::four")]
    pub out_channels: usize,
    /// Latent resolution the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Map the input from [0, 1] to [-1, 1] first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// `[cos, sin]` instead of `[sin, cos]` in the timestep embedding.
    #[serde(default = "d::yes")]
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Down block types: `CrossAttnDownBlock2D` or `DownBlock2D`.
    #[serde(default = "d::down_blocks")]
    pub down_block_types: Vec<String>,
    /// Mid block type: `UNetMidBlock2DCrossAttn`.
    #[serde(default = "d::mid_block")]
    pub mid_block_type: Option<String>,
    /// Up block types: `UpBlock2D` or `CrossAttnUpBlock2D`.
    #[serde(default = "d::up_blocks")]
    pub up_block_types: Vec<String>,
    /// Channels of each level.
    #[serde(default = "d::block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "d::two")]
    pub layers_per_block: usize,
    /// Padding of the down-sampling convolutions.
    #[serde(default = "d::one")]
    pub downsample_padding: usize,
    /// Output scale of the mid-block resnets.
    #[serde(default = "d::one_f")]
    pub mid_block_scale_factor: f64,
    /// Activation (`silu`).
    #[serde(default = "d::silu")]
    pub act_fn: String,
    /// GroupNorm groups.
    #[serde(default = "d::thirty_two")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of resnets and the output norm.
    #[serde(default = "d::norm_eps")]
    pub norm_eps: f64,
    /// Width of the text embeddings.
    #[serde(default = "d::cross_attention_dim")]
    pub cross_attention_dim: usize,
    /// In diffusers' SD1.x naming, the number of attention HEADS per block (8 for SD1.5).
    #[serde(default = "d::eight")]
    pub attention_head_dim: PerBlock,
    /// The number of heads when set (SD2-era configs); takes precedence over `attention_head_dim`.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Transformer blocks per attention (1 in SD1.5).
    #[serde(default = "d::one_per_block")]
    pub transformer_layers_per_block: PerBlock,
    /// `proj_in`/`proj_out` as Linear instead of 1x1 conv.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Width of the extra timestep condition (guidance embedding of LCM-style students).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Must be false / absent.
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    /// Must be false (or absent).
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Must be false (or absent): softmax in fp32 is what we do anyway in f32.
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    /// Must be `default` (or absent).
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    /// Must be `positional` (or absent).
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    /// Must be absent / null.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Must be absent / null.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Must be absent / null.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Must be absent / null.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Must be 3 (or absent).
    #[serde(default = "d::three")]
    pub conv_in_kernel: usize,
    /// Must be 3 (or absent).
    #[serde(default = "d::three")]
    pub conv_out_kernel: usize,
}

mod d {
    pub fn four() -> usize {
        4
    }
    pub fn yes() -> bool {
        true
    }
    pub fn down_blocks() -> Vec<String> {
        [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn mid_block() -> Option<String> {
        Some("UNetMidBlock2DCrossAttn".into())
    }
    pub fn up_blocks() -> Vec<String> {
        [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn block_out_channels() -> Vec<usize> {
        vec![320, 640, 1280, 1280]
    }
    pub fn two() -> usize {
        2
    }
    pub fn one() -> usize {
        1
    }
    pub fn three() -> usize {
        3
    }
    pub fn one_f() -> f64 {
        1.0
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn thirty_two() -> usize {
        32
    }
    pub fn norm_eps() -> f64 {
        1e-5
    }
    pub fn cross_attention_dim() -> usize {
        1280
    }
    pub fn eight() -> super::PerBlock {
        super::PerBlock::One(8)
    }
    pub fn one_per_block() -> super::PerBlock {
        super::PerBlock::One(1)
    }
}

impl UNetConfig {
    /// The UNet of Stable Diffusion 1.5 (`assets/sd15/unet/config.json`).
    pub fn sd15() -> Self {
        let mut config: Self = serde_json::from_str("{}").expect("defaults");
        config.sample_size = Some(64);
        config.cross_attention_dim = 768;
        config.attention_head_dim = PerBlock::One(8);
        config
    }

    /// Number of heads of the attention in down block `i` (diffusers: `num_attention_heads or
    /// attention_head_dim`).
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(i)
    }

    /// Width of the time embedding (`4 * block_out_channels[0]`).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }

    /// Spatial down-sampling factor of the latent (`2^(levels - 1)`).
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

impl JsonConfig for UNetConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let mut sizes: Vec<(&str, usize, usize)> = vec![
            ("in_channels", self.in_channels, 1024),
            ("out_channels", self.out_channels, 1024),
            ("layers_per_block", self.layers_per_block, 64),
            ("norm_num_groups", self.norm_num_groups, MAX_WIDTH),
            ("cross_attention_dim", self.cross_attention_dim, MAX_WIDTH),
            ("sample_size", self.sample_size.unwrap_or(1), 1024),
            (
                "time_cond_proj_dim",
                self.time_cond_proj_dim.unwrap_or(1),
                MAX_WIDTH,
            ),
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
        if self.down_block_types.len() != n {
            return Err(unsupported(
                path,
                "down_block_types",
                format!("{:?}", self.down_block_types),
                &format!("{n} entries, one per block_out_channels entry"),
            ));
        }
        if self.up_block_types.len() != n {
            return Err(unsupported(
                path,
                "up_block_types",
                format!("{:?}", self.up_block_types),
                &format!("{n} entries, one per block_out_channels entry"),
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(unsupported(
                    path,
                    "down_block_types",
                    t,
                    "CrossAttnDownBlock2D, DownBlock2D",
                ));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(unsupported(
                    path,
                    "up_block_types",
                    t,
                    "CrossAttnUpBlock2D, UpBlock2D",
                ));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => {
                return Err(unsupported(
                    path,
                    "mid_block_type",
                    format!("{other:?}"),
                    "UNetMidBlock2DCrossAttn",
                ));
            }
        }
        if self.act_fn != "silu" {
            return Err(unsupported(path, "act_fn", &self.act_fn, "silu"));
        }
        for (key, ok) in [
            ("attention_head_dim", self.attention_head_dim.len_ok(n)),
            (
                "num_attention_heads",
                self.num_attention_heads
                    .as_ref()
                    .is_none_or(|h| h.len_ok(n)),
            ),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.len_ok(n),
            ),
        ] {
            if !ok {
                return Err(unsupported(
                    path,
                    key,
                    "a list of the wrong length",
                    &format!("one integer, or {n} integers"),
                ));
            }
        }
        for (i, &channels) in self.block_out_channels.iter().enumerate() {
            if channels % self.norm_num_groups != 0 {
                return Err(unsupported(
                    path,
                    "norm_num_groups",
                    self.norm_num_groups,
                    &format!("a divisor of every block_out_channels entry ({channels})"),
                ));
            }
            let heads = self.heads(i);
            if heads == 0 || channels % heads != 0 {
                return Err(unsupported(
                    path,
                    "attention_head_dim",
                    heads,
                    &format!("a head count dividing block_out_channels[{i}] = {channels}"),
                ));
            }
        }
        if !matches!(
            self.only_cross_attention,
            serde_json::Value::Null | serde_json::Value::Bool(false)
        ) {
            return Err(unsupported(
                path,
                "only_cross_attention",
                &self.only_cross_attention,
                "false",
            ));
        }
        if self.dual_cross_attention {
            return Err(unsupported(path, "dual_cross_attention", true, "false"));
        }
        if self.upcast_attention == Some(true) {
            return Err(unsupported(path, "upcast_attention", true, "false"));
        }
        if let Some(s) = self
            .resnet_time_scale_shift
            .as_deref()
            .filter(|s| *s != "default")
        {
            return Err(unsupported(path, "resnet_time_scale_shift", s, "default"));
        }
        if let Some(s) = self
            .time_embedding_type
            .as_deref()
            .filter(|s| *s != "positional")
        {
            return Err(unsupported(path, "time_embedding_type", s, "positional"));
        }
        for (key, value) in [
            ("class_embed_type", self.class_embed_type.clone()),
            ("addition_embed_type", self.addition_embed_type.clone()),
            (
                "num_class_embeds",
                self.num_class_embeds.map(|v| v.to_string()),
            ),
            (
                "encoder_hid_dim",
                self.encoder_hid_dim.map(|v| v.to_string()),
            ),
        ] {
            if let Some(v) = value {
                return Err(unsupported(
                    path,
                    key,
                    v,
                    "null (class / addition embeddings are not implemented)",
                ));
            }
        }
        for (key, value) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if value != 3 {
                return Err(unsupported(path, key, value, "3"));
            }
        }
        Ok(())
    }
}
