//! `ResnetBlock2D` (diffusers `models/resnet.py`, `time_embedding_norm="default"`): two
//! GroupNorm-SiLU-conv3x3 stages, an optional time-embedding projection added between them, and a
//! 1x1 `conv_shortcut` when the channel count changes.

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use cm_lora::{LoraConv2d, LoraLinear};

use super::{conv2d, group_norm, silu};

/// Hyper-parameters of one [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResnetBlock2DConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the time embedding, or `None` (VAE) for no `time_emb_proj`.
    pub temb_channels: Option<usize>,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// The output is divided by this (1 in SD1.5).
    pub output_scale_factor: f64,
}

/// `ResnetBlock2D`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// First norm.
    pub norm1: GroupNorm<B>,
    /// First 3x3 conv.
    pub conv1: LoraConv2d<B>,
    /// Time embedding -> channel bias.
    pub time_emb_proj: Option<LoraLinear<B>>,
    /// Second norm.
    pub norm2: GroupNorm<B>,
    /// Second 3x3 conv.
    pub conv2: LoraConv2d<B>,
    /// 1x1 conv on the skip path when `in_channels != out_channels`.
    pub conv_shortcut: Option<LoraConv2d<B>>,
    /// Output divisor.
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    /// Builds the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResnetBlock2D<B> {
        let norm = |c| {
            GroupNormConfig::new(self.groups, c)
                .with_epsilon(self.eps)
                .init(device)
        };
        ResnetBlock2D {
            norm1: norm(self.in_channels),
            conv1: conv2d(self.in_channels, self.out_channels, 3, device),
            time_emb_proj: self
                .temb_channels
                .map(|t| LoraLinear::new(&LinearConfig::new(t, self.out_channels), device)),
            norm2: norm(self.out_channels),
            conv2: conv2d(self.out_channels, self.out_channels, 3, device),
            conv_shortcut: (self.in_channels != self.out_channels)
                .then(|| conv2d(self.in_channels, self.out_channels, 1, device)),
            output_scale_factor: self.output_scale_factor,
        }
    }
}

impl<B: Backend> ResnetBlock2D<B> {
    /// # Shapes
    /// `x`: `[batch, in, h, w]`, `temb`: `[batch, temb_channels]` -> `[batch, out, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        // 1. norm1 -> SiLU -> conv1
        let mut h = self.conv1.forward(silu(group_norm(&self.norm1, x.clone())));
        // 2. + time_emb_proj(SiLU(temb)) broadcast over space
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(silu(temb));
            let [b, c] = t.dims();
            h = h + t.reshape([b, c, 1, 1]);
        }
        // 3. norm2 -> SiLU -> (dropout: identity at inference) -> conv2
        let h = self.conv2.forward(silu(group_norm(&self.norm2, h)));
        // 4. skip path, sum, scale
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = skip + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}
