//! `CLIPTextConfig` as transformers writes it in `text_encoder/config.json`.
//!
//! Defaults are transformers' `CLIPTextConfig` defaults (used only when a key is absent);
//! [`ClipTextConfig::sd15`] is the text encoder of Stable Diffusion 1.5
//! (`assets/sd15/text_encoder/config.json`, i.e. openai/clip-vit-large-patch14).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config_json::{unsupported, JsonConfig};
use crate::error::Result;

/// Configuration of [`super::ClipTextModel`]. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Number of token embeddings (49408 for the CLIP BPE vocabulary).
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// Width of the transformer.
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    /// Width of the MLP inside each layer.
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    /// Width of the text projection (not part of `CLIPTextModel`; kept for round-trips).
    #[serde(default = "defaults::projection_dim")]
    pub projection_dim: usize,
    /// Number of transformer layers.
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    /// Number of positions (77).
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// MLP activation: `quick_gelu` (CLIP) or `gelu` (exact, erf).
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    /// Epsilon of every layer norm.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Attention dropout; only 0 is supported (the encoder is used frozen).
    #[serde(default)]
    pub attention_dropout: f64,
    /// Hidden dropout; only 0 is supported.
    #[serde(default)]
    pub dropout: f64,
    /// Padding token id as recorded by transformers (unused by the forward pass).
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: i64,
    /// Beginning-of-text token id as recorded by transformers.
    #[serde(default = "defaults::bos_token_id")]
    pub bos_token_id: i64,
    /// End-of-text token id. The value 2 is transformers' legacy marker (the SD1.5 config has it):
    /// the pooled output is then taken at the position of the largest token id, which is the
    /// first `<|endoftext|>` (49407). Any other value: the first position holding that id.
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: i64,
}

mod defaults {
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn hidden_size() -> usize {
        512
    }
    pub fn intermediate_size() -> usize {
        2048
    }
    pub fn projection_dim() -> usize {
        512
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        77
    }
    pub fn hidden_act() -> String {
        "quick_gelu".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn pad_token_id() -> i64 {
        1
    }
    pub fn bos_token_id() -> i64 {
        49406
    }
    pub fn eos_token_id() -> i64 {
        49407
    }
}

/// The MLP activation of a CLIP text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)`, the activation of the original CLIP.
    QuickGelu,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
}

impl ClipTextConfig {
    /// The text encoder of Stable Diffusion 1.5 (openai/clip-vit-large-patch14), equal to
    /// `assets/sd15/text_encoder/config.json` (checked by a test).
    pub fn sd15() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
            dropout: 0.0,
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
        }
    }

    /// The activation named by `hidden_act` (call after [`JsonConfig::validate`]).
    pub fn activation(&self) -> ClipActivation {
        match self.hidden_act.as_str() {
            "gelu" => ClipActivation::Gelu,
            _ => ClipActivation::QuickGelu,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

impl JsonConfig for ClipTextConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(unsupported(
                path,
                "hidden_act",
                &self.hidden_act,
                "\"quick_gelu\" or \"gelu\"",
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(unsupported(
                path,
                "num_attention_heads",
                self.num_attention_heads,
                &format!("a positive divisor of hidden_size = {}", self.hidden_size),
            ));
        }
        for (key, value) in [
            ("attention_dropout", self.attention_dropout),
            ("dropout", self.dropout),
        ] {
            if value != 0.0 {
                return Err(unsupported(
                    path,
                    key,
                    value,
                    "0.0 (the text encoder runs frozen, without dropout)",
                ));
            }
        }
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(unsupported(path, key, value, "a positive integer"));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(unsupported(
                path,
                "layer_norm_eps",
                self.layer_norm_eps,
                "a positive number",
            ));
        }
        Ok(())
    }
}
