//! Backend-free adapter weights in PyTorch layout, the common ground of every file format.

use std::collections::BTreeMap;

use burn::tensor::TensorData;

/// The shape of an adaptable layer, which fixes the shapes of its factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// `Linear(d_in -> d_out)`.
    Linear {
        /// Input features.
        d_in: usize,
        /// Output features.
        d_out: usize,
    },
    /// `Conv2d(c_in -> c_out, kernel)`.
    Conv {
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Channel groups (adapters need 1).
        groups: usize,
    },
}

impl Geometry {
    /// Shape of the `down` factor (peft `lora_A`, kohya `lora_down`) in PyTorch layout:
    /// `[r, in]` or `[r, in, kh, kw]`.
    pub fn down_shape(&self, rank: usize) -> Vec<usize> {
        match *self {
            Geometry::Linear { d_in, .. } => vec![rank, d_in],
            Geometry::Conv { c_in, kernel, .. } => vec![rank, c_in, kernel[0], kernel[1]],
        }
    }

    /// Shape of the `up` factor (peft `lora_B`, kohya `lora_up`): `[out, r]` or `[out, r, 1, 1]`.
    pub fn up_shape(&self, rank: usize) -> Vec<usize> {
        match *self {
            Geometry::Linear { d_out, .. } => vec![d_out, rank],
            Geometry::Conv { c_out, .. } => vec![c_out, rank, 1, 1],
        }
    }

    /// Output features / channels.
    pub fn out_features(&self) -> usize {
        match *self {
            Geometry::Linear { d_out, .. } => d_out,
            Geometry::Conv { c_out, .. } => c_out,
        }
    }

    /// Parameters of a rank-`rank` adapter on this layer.
    pub fn adapter_params(&self, rank: usize, bias: bool) -> usize {
        let count = |shape: Vec<usize>| shape.iter().product::<usize>();
        count(self.down_shape(rank))
            + count(self.up_shape(rank))
            + if bias { self.out_features() } else { 0 }
    }
}

/// One layer's adapter in PyTorch layout.
#[derive(Debug, Clone)]
pub struct LayerFactors {
    /// `[r, in]` or `[r, in, kh, kw]`.
    pub down: TensorData,
    /// `[out, r]` or `[out, r, 1, 1]`.
    pub up: TensorData,
    /// `[out]` when the adapter has a bias.
    pub up_bias: Option<TensorData>,
    /// `alpha` (the update is scaled by `alpha / r`).
    pub alpha: f64,
    /// The file key this layer was read from (`unet.<path>` or `lora_unet_<path_with_underscores>`),
    /// used to name the key in error messages; `None` for factors taken from a model.
    pub source: Option<String>,
}

impl LayerFactors {
    /// The rank `r` (first dimension of `down`).
    pub fn rank(&self) -> usize {
        self.down.shape.first().copied().unwrap_or(0)
    }

    /// The name to use for this layer in messages: its file key prefix, else its module path.
    pub fn key_or<'a>(&'a self, path: &'a str) -> &'a str {
        self.source.as_deref().unwrap_or(path)
    }

    /// The full file key of one factor (`<prefix>.lora_A.weight`, `<prefix>.lora_down.weight`,
    /// ...), or `<path> (down)` for factors that did not come from a file.
    pub fn factor_key(&self, path: &str, factor: Factor) -> String {
        let kohya = self
            .source
            .as_deref()
            .is_some_and(|s| s.starts_with(crate::formats::KOHYA_UNET_PREFIX));
        let suffix = match (factor, kohya) {
            (Factor::Down, false) => "lora_A.weight",
            (Factor::Up, false) => "lora_B.weight",
            (Factor::UpBias, _) => "lora_B.bias",
            (Factor::Down, true) => "lora_down.weight",
            (Factor::Up, true) => "lora_up.weight",
            (Factor::Alpha, true) => "alpha",
            (Factor::Alpha, false) => "alpha (lora_adapter_metadata)",
        };
        match &self.source {
            Some(source) => format!("{source}.{suffix}"),
            None => format!("{path} ({suffix})"),
        }
    }
}

/// One tensor of an adapter, for naming it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// `down` (peft `lora_A`, kohya `lora_down`).
    Down,
    /// `up` (peft `lora_B`, kohya `lora_up`).
    Up,
    /// The optional bias of `up`.
    UpBias,
    /// The scale numerator.
    Alpha,
}

/// An adapter's factors for every layer it touches, keyed by dotted module path.
#[derive(Debug, Clone, Default)]
pub struct LoraWeights {
    /// Factors by module path (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`).
    pub layers: BTreeMap<String, LayerFactors>,
}

impl LoraWeights {
    /// Whether every tensor of `self` equals the one of `other` bit for bit (same keys, shapes,
    /// dtypes, values and alphas).
    pub fn bit_equal(&self, other: &LoraWeights) -> bool {
        self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|((ka, a), (kb, b))| {
                    ka == kb
                        && a.down == b.down
                        && a.up == b.up
                        && a.up_bias == b.up_bias
                        && a.alpha.to_bits() == b.alpha.to_bits()
                })
    }
}
